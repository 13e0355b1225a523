"""docs/contract.md, the order saga under load, on every real broker."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from tests.support.system import System, eventually, uid

pytestmark = pytest.mark.contract
FINAL = {"CONFIRMED", "REJECTED", "CANCELLED"}


async def test_burst_of_mixed_orders_all_end_final_and_stock_adds_up(system: System) -> None:
    rng = random.Random(7)
    products = {uid("A"): 150, uid("B"): 40, uid("C"): 5}
    for product, stock in products.items():
        await system.set_stock(product, stock)
    unknown = uid("NOPE")
    bodies = []
    for i in range(200):
        items = [
            {"productId": p, "quantity": rng.randint(1, 3)} for p in rng.sample(sorted(products), rng.randint(1, 2))
        ]
        if i % 25 == 0:
            items.append({"productId": unknown, "quantity": 1})
        user = "declined-user" if i % 10 == 3 else f"user-{i}"
        bodies.append({"orderId": uid("saga"), "userId": user, "items": items})

    limit = asyncio.Semaphore(50)

    async def post(body: dict) -> int:
        async with limit:
            return (await system.post_order(body)).status_code

    assert set(await asyncio.gather(*(post(b) for b in bodies))) == {202}
    orders = await asyncio.gather(*(system.wait_status(b["orderId"], FINAL, timeout=120) for b in bodies))

    statuses = Counter(o["status"] for o in orders)
    assert statuses["CONFIRMED"] > 0
    assert statuses["REJECTED"] > 0
    assert statuses["CANCELLED"] > 0
    kept: Counter[str] = Counter()
    for order in orders:
        if order["status"] == "CONFIRMED":
            for item in order["items"]:
                kept[item["productId"]] += item["quantity"]
    for product, initial in products.items():  # releases of CANCELLED orders may still be on their way
        await eventually(
            lambda p=product: system.stock(p),
            lambda s, p=product, i=initial: s + kept[p] == i,
            what=f"{product} adds up",
        )
    declined = {b["orderId"] for b in bodies if b["userId"] == "declined-user"}
    assert all(o["status"] in {"CANCELLED", "REJECTED"} for o in orders if o["orderId"] in declined)

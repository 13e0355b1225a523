"""Two order-service replicas on one PostgreSQL database: an order's inventory and payment
outcomes, applied at the same moment by different replicas, end at the later saga status
whichever commits first (two `Database` objects: two connections, as two replicas have)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from services import order
from services.store import Database, Tx
from tests.support.system import uid

pytestmark = pytest.mark.contract

ORDERS = 200
DECLINED = "payment declined for user declined-7"


@pytest.fixture
async def replicas(postgres_server: str) -> AsyncIterator[tuple[Database, Database]]:
    database = uid("sb_saga_")
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    first, second = Database(f"{postgres_server}/{database}"), Database(f"{postgres_server}/{database}")
    try:
        await first.connect(order.SCHEMA)  # not SQLite's outbox
        await second.connect()
        yield first, second
    finally:
        await first.close()
        await second.close()
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.mark.parametrize(
    ("payment", "final"),
    [
        (("PaymentProcessed", "CONFIRMED", None), "CONFIRMED"),
        (("PaymentFailed", "CANCELLED", DECLINED), "CANCELLED"),
    ],
)
async def test_concurrent_moves_on_two_replicas_end_at_the_later_status(
    replicas: tuple[Database, Database], payment: tuple[str, str, str | None], final: str
) -> None:
    first, second = replicas
    order_ids = [uid("saga-") for _ in range(ORDERS)]

    def place_all(tx: Tx) -> None:
        for order_id in order_ids:
            tx.execute(
                f"INSERT INTO {order.ORDERS} (order_id, items, status, fingerprint) VALUES (?, '[]', 'PENDING', '')",
                (order_id,),
            )

    await first.transaction(place_all)

    for i, order_id in enumerate(order_ids):
        reserve, pay = first, second
        if i % 2:  # each replica applies either event
            reserve, pay = pay, reserve
        await asyncio.gather(
            reserve.transaction(lambda tx, order_id=order_id: order._reserve(tx, order_id)),
            pay.transaction(lambda tx, order_id=order_id: order._pay(tx, order_id, *payment)),
        )

    ended = await first.transaction(
        lambda tx: tx.fetchall(f"SELECT status, reason, COUNT(*) FROM {order.ORDERS} GROUP BY status, reason")
    )
    assert ended == [(final, payment[2], ORDERS)]

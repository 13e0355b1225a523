"""HTTP inputs through each service's whole ASGI stack (BodyLimit, tracing, FastAPI), no broker:
chunked bodies over the limit, strict JSON types, the id character rule, the admin token, and
what the dead-letter listener logs."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

os.environ.update({"BROKER": "kafka", "DATA_DIR": tempfile.mkdtemp(prefix="sb-unit-"), "CHANNEL_NAMESPACE": ""})

from brokers import DeadLetter
from services import inventory, notification, order
from services.events import OrderCreated
from services.runtime import MAX_BODY_BYTES, Service

notifications = notification.Notifications.create()  # its handlers too: `report_dead_letter`

TOKEN = "unit-admin-token-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def client(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://svc")


@pytest.fixture
async def connected(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The admin token set, and the inventory and notification stores open."""
    monkeypatch.setattr(inventory.service.settings, "admin_token", TOKEN)
    for service in (inventory.service, notifications.service):
        await service.db.connect(service.schema)
    try:
        yield
    finally:
        for service in (inventory.service, notifications.service):
            await service.db.close()


async def chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    """`total` bytes as a streamed (chunked) body: no Content-Length."""
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


# --- item 2: a chunked body over the limit is 413, like a declared one ------------------------
@pytest.mark.parametrize("total", [70_000, 2_000_000])
async def test_a_chunked_body_over_64_kib_gets_413(total: int) -> None:
    async with client(order.service) as http:
        r = await http.post("/orders", content=chunks(total), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert r.json() == {"detail": f"request body exceeds {MAX_BODY_BYTES} bytes"}


@pytest.mark.usefixtures("connected")
async def test_a_chunked_body_over_64_kib_to_an_admin_route_gets_413() -> None:
    async with client(inventory.service) as http:
        r = await http.put(
            "/inventory/P1", content=chunks(70_000), headers={**BEARER, "content-type": "application/json"}
        )
    assert r.status_code == 413


# --- item 3: JSON types as declared ----------------------------------------------------------
@pytest.mark.parametrize("quantity", [True, 1.5, "2", -0.5])
@pytest.mark.parametrize("shape", ["flat", "items"])
async def test_a_quantity_that_is_not_a_json_integer_gets_422(quantity: Any, shape: str) -> None:
    item = {"productId": "P123", "quantity": quantity}
    body = item if shape == "flat" else {"items": [item]}
    async with client(order.service) as http:
        r = await http.post("/orders", json=body)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["items.0.quantity"]


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize("available", [True, 1.5, "2"])
async def test_stock_that_is_not_a_json_integer_gets_422(available: Any) -> None:
    async with client(inventory.service) as http:
        r = await http.put("/inventory/P1", json={"available": available}, headers=BEARER)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["available"]


@pytest.fixture
async def order_store() -> AsyncIterator[None]:
    await order.service.db.connect(order.service.schema)
    try:
        yield
    finally:
        await order.service.db.close()


@pytest.mark.usefixtures("order_store")
@pytest.mark.parametrize("shape", ["flat", "items"])
async def test_a_json_number_without_a_fraction_is_an_integer_quantity(shape: str) -> None:
    """`2.0` is an integer in JSON Schema, whose `integer` the OpenAPI document declares: accepted as 2."""

    def body(quantity: Any) -> dict[str, Any]:
        item = {"productId": "P123", "quantity": quantity}
        return {"orderId": f"integral-{shape}", **(item if shape == "flat" else {"items": [item]})}

    async with client(order.service) as http:
        r = await http.post("/orders", json=body(2.0))
        again = await http.post("/orders", json=body(2))
    assert r.status_code == 202, r.text
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (202, "true")  # the same order


@pytest.mark.usefixtures("connected")
async def test_stock_without_a_fraction_is_an_integer() -> None:
    async with client(inventory.service) as http:
        r = await http.put("/inventory/P-INTEGRAL", json={"available": 8.0}, headers=BEARER)
    assert (r.status_code, r.json()) == (200, {"productId": "P-INTEGRAL", "available": 8})


async def test_a_user_id_that_is_not_a_string_gets_422() -> None:
    async with client(order.service) as http:
        r = await http.post("/orders", json={"userId": 7, "productId": "P123", "quantity": 1})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["userId"]


@pytest.mark.parametrize("quantity", ["true", "1.5", "2.5", '"2"'])
def test_an_event_whose_quantity_is_not_a_json_integer_is_poison(quantity: str) -> None:
    """The broker side validates bodies as JSON with the same OrderItem (docs/contract.md: integer)."""
    adapter = TypeAdapter(OrderCreated)
    body = '{"orderId": "o1", "items": [{"productId": "P1", "quantity": %s}]}'
    assert adapter.validate_json(body % "2").items[0].quantity == 2
    assert adapter.validate_json(body % "2.0").items[0].quantity == 2
    with pytest.raises(ValidationError):
        adapter.validate_json(body % quantity)


# --- OpenAPI honesty: a 405's Allow lists what the document lists for the path ------------------
@pytest.mark.parametrize(
    ("service", "path", "allowed"),
    [
        (inventory.service, "/inventory/P1", "GET, PUT"),
        (order.service, "/orders", "POST"),
        (order.service, "/orders/o1", "GET"),
    ],
)
@pytest.mark.parametrize("method", ["OPTIONS", "DELETE"])
async def test_a_405_allows_every_method_of_the_path(service: Service, path: str, allowed: str, method: str) -> None:
    async with client(service) as http:
        r = await http.request(method, path)
    assert (r.status_code, r.headers["allow"], r.json()) == (405, allowed, {"detail": "Method Not Allowed"})


# --- item 4: productId has orderId's character rule -----------------------------------------
@pytest.mark.parametrize("product", ["P1\n2026-01-01 00:00:00,000 INFO forged", "P 1", "P1\r"])
async def test_a_product_id_outside_the_id_characters_gets_422(product: str) -> None:
    async with client(order.service) as http:
        r = await http.post("/orders", json={"productId": product, "quantity": 1})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["items.0.productId"]


@pytest.mark.usefixtures("connected")
async def test_a_product_path_outside_the_id_characters_gets_422() -> None:
    async with client(inventory.service) as http:
        r = await http.put("/inventory/P1%0Aforged", json={"available": 1}, headers=BEARER)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["path.product_id"]


# --- item 6: the admin token ---------------------------------------------------------------
ADMIN_ROUTES = [
    (inventory.service, "PUT", "/inventory/ADMIN-P1", {"available": 3}),
    (notifications.service, "GET", "/dead-letters", None),
]


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize(("service", "method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_401_without_a_token_403_with_a_wrong_one_200_with_the_right_one(
    service: Service, method: str, path: str, body: Any
) -> None:
    async with client(service) as http:
        missing = await http.request(method, path, json=body)
        basic = await http.request(method, path, json=body, headers={"Authorization": f"Basic {TOKEN}"})
        wrong = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}x"})
        right = await http.request(method, path, json=body, headers=BEARER)
    assert (missing.status_code, missing.headers.get("www-authenticate")) == (401, "Bearer")
    assert basic.status_code == 401
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "wrong admin token"})
    assert right.status_code == 200, right.text


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize("token", [None, "", "   ", "short-token", "fifteen-chars!!"])
@pytest.mark.parametrize(("service", "method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_answer_403_while_the_token_is_unset_blank_or_short(
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    service: Service,
    method: str,
    path: str,
    body: Any,
) -> None:
    monkeypatch.setattr(service.settings, "admin_token", token)
    async with client(service) as http:
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            r = await http.request(method, path, json=body, headers=headers)
            assert (r.status_code, r.json()) == (403, {"detail": "admin routes are disabled"})


@pytest.mark.parametrize(("token", "logged"), [("   ", "blank"), ("short-token", "only 11 characters"), (None, None)])
def test_a_set_but_unusable_token_is_reported_once_at_startup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, token: str | None, logged: str | None
) -> None:
    monkeypatch.setattr(inventory.service.settings, "admin_token", token)
    with caplog.at_level(logging.WARNING, logger="switchboard"):
        inventory.service._warn_if_admin_disabled()
    lines = [r.getMessage() for r in caplog.records]
    if logged is None:
        assert lines == []
    else:
        [line] = lines
        assert "ADMIN_TOKEN" in line
        assert logged in line
        assert "disabled" in line
        assert token is not None
        assert not token.strip() or token not in line  # never the token itself


def test_a_usable_token_is_not_reported(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inventory.service.settings, "admin_token", TOKEN)
    with caplog.at_level(logging.WARNING, logger="switchboard"):
        inventory.service._warn_if_admin_disabled()
    assert caplog.records == []


# --- item 6: what the dead-letter listener logs ------------------------------------------------
@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize("size", [100, 512, 513, 100_000])
async def test_the_dead_letter_log_line_shows_at_most_512_bytes_of_the_body(
    caplog: pytest.LogCaptureFixture, size: int
) -> None:
    body = (b'{"orderId":"dl-%d","pad":"' % size).ljust(size - 2, b"x") + b'"}'
    letter = DeadLetter(channel="order-events.DLT", body=body, headers={"x-consumer": "inventory-service"})
    with caplog.at_level(logging.WARNING, logger="switchboard.notification"):
        await notifications.report_dead_letter(letter)
    [line] = [r.getMessage() for r in caplog.records if "DLT received failed message" in r.getMessage()]
    shown = line.removeprefix("DLT received failed message: ")
    if size <= 512:
        assert shown == body.decode()
    else:
        assert shown.startswith(body[:512].decode())
        assert body[:513].decode() not in shown
        assert shown.endswith(f" [cut: {size} bytes, first 512 shown]")
    kept = await notifications.service.db.transaction(
        lambda tx: tx.fetchone(f"SELECT body FROM {notification.DEAD_LETTERS} ORDER BY id DESC LIMIT 1")
    )
    assert kept[0] == body.decode()  # the store (GET /dead-letters) keeps it whole

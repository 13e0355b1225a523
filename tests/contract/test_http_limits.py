"""docs/contract.md, "Limits": what the HTTP server does with oversized heads, slow clients,
chunked bodies over the limit and values of the wrong JSON type, on a real `faststream run`
(uvicorn). HTTP only, so one order service on SQLite and one broker (the first of
TEST_BROKERS) is enough: the module runs once, not once per broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.http_limits import REQUEST_TIMEOUT_S
from tests.support.system import ServiceProcess, brokers_script, eventually, free_port, uid

pytestmark = pytest.mark.contract
BROKER = next(b for b in os.environ.get("TEST_BROKERS", "kafka,rabbit,nats").split(",") if b)
PORTS = range(18700, 18800)
ANSWER_BOUND_S = 5.0  # generous: the server answers a header bomb in well under a second


class OrderService:
    def __init__(self, process: ServiceProcess) -> None:
        self.process = process
        self.port = process.port
        self.base = f"http://127.0.0.1:{process.port}"

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_BOUND_S)
        return sock


@pytest.fixture(scope="module", params=[BROKER])
def order_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrderService]:
    broker = str(request.param)
    if os.environ.get("SKIP_BROKER_START") != "1":
        brokers_script("start", broker)
    workdir: Path = tmp_path_factory.mktemp(f"http-limits-{broker}")
    env = {
        "BROKER": broker,
        "CHANNEL_NAMESPACE": uid("th"),
        "DATA_DIR": str(workdir / "data"),
        "LOG_LEVEL": "INFO",
    }
    process = ServiceProcess("order", free_port(PORTS), env, workdir)
    process.start()
    try:
        service = OrderService(process)
        asyncio.run(_wait_ready(service))
        yield service
    finally:
        process.stop()


async def _wait_ready(service: OrderService) -> None:
    async with httpx.AsyncClient(timeout=5.0) as http:

        async def probe() -> int:
            proc = service.process.proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"order service exited: {service.process.log_path.read_text()[-3000:]}")
            return (await http.get(f"{service.base}/ready")).status_code

        await eventually(probe, lambda s: s == 200, timeout=60, what="order /ready")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


def answer_or_close(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload` (as far as the server takes it) and read until the server closes."""
    with contextlib.suppress(OSError):  # the server closed while we were still writing: an accepted answer
        sock.sendall(payload)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    return received


async def assert_healthy(service: OrderService, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await http.get(f"{service.base}/health")
    assert r.status_code == 200
    assert time.monotonic() - started < 1.0  # the event loop was not blocked


async def test_a_1_mb_header_gets_431_or_a_close_at_once(order_service: OrderService, http: httpx.AsyncClient) -> None:
    bomb = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bomb: " + b"a" * 1_000_000 + b"\r\n\r\n"
    started = time.monotonic()
    with order_service.raw() as sock:
        answer = await asyncio.to_thread(answer_or_close, sock, bomb)
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_BOUND_S
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    await assert_healthy(order_service, http)


async def test_a_header_line_over_16_kib_gets_431(order_service: OrderService, http: httpx.AsyncClient) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * (17 * 1024) + b"\r\n\r\n"
    with order_service.raw() as sock:
        answer = await asyncio.to_thread(answer_or_close, sock, request)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    await assert_healthy(order_service, http)


async def test_headers_under_the_caps_are_served(order_service: OrderService, http: httpx.AsyncClient) -> None:
    headers = {f"x-part-{i}": "c" * (12 * 1024) for i in range(4)}  # 48 KiB in lines of 12 KiB
    r = await http.get(f"{order_service.base}/health", headers=headers)
    assert r.status_code == 200


async def test_slow_and_idle_connections_are_closed_within_the_request_timeout(order_service: OrderService) -> None:
    deadline_s = REQUEST_TIMEOUT_S + 5

    async def closed_after(send: bytes) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", order_service.port)
        started = time.monotonic()
        writer.write(send)
        await writer.drain()
        received = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), deadline_s - (time.monotonic() - started)):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
        return time.monotonic() - started, received

    (slow_s, slow), (idle_s, idle) = await asyncio.gather(closed_after(b"GET /hea"), closed_after(b""))
    assert slow_s < deadline_s, "half a request line kept its connection open"
    assert slow.startswith(b"HTTP/1.1 408 "), slow[:100]
    assert idle_s < deadline_s, "an idle connection was kept open"
    assert idle == b""


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


@pytest.mark.parametrize("total", [70_000, 5_000_000])
async def test_a_chunked_body_over_64_kib_gets_413(
    order_service: OrderService, http: httpx.AsyncClient, total: int
) -> None:
    r = await http.post(
        f"{order_service.base}/orders", content=chunks(total), headers={"content-type": "application/json"}
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert r.json() == {"detail": "request body exceeds 65536 bytes"}


@pytest.mark.parametrize("quantity", [True, 1.5, "2"])
async def test_a_quantity_that_is_not_a_json_integer_gets_422(
    order_service: OrderService, http: httpx.AsyncClient, quantity: Any
) -> None:
    r = await http.post(f"{order_service.base}/orders", json={"productId": "P123", "quantity": quantity})
    assert r.status_code == 422
    assert "items.0.quantity" in {e["field"] for e in r.json()["errors"]}


async def test_a_product_id_with_a_line_break_gets_422(order_service: OrderService, http: httpx.AsyncClient) -> None:
    forged = "P1\n2026-01-01 00:00:00,000 INFO order forged accepted"  # within productId's 64 characters
    r = await http.post(f"{order_service.base}/orders", json={"productId": forged, "quantity": 1})
    assert r.status_code == 422
    assert "items.0.productId" in {e["field"] for e in r.json()["errors"]}

"""docs/contract.md, consumer names and the flat-fields compatibility option, on every broker.

A system of its own runs with CONSUMER_NAMES naming the inventory's consumer
`<ns>-inventory-group` and ORDER_EVENTS_FLAT_FIELDS=true: the broker shows that group / queue /
durable consuming (and no `inventory-service` one), publishers report its lag under that name,
and a raw client reading order-events finds top-level productId/quantity on single-item orders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import nats
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiormq.exceptions import ChannelNotFoundEntity
from nats.js.errors import NotFoundError

from tests.support.raw import RawClient
from tests.support.system import BASE_PORT, System, eventually, uid

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
async def named(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    sys_ = System(broker, tmp_path_factory.mktemp(f"named-{broker}"), port_base=BASE_PORT[broker] + 60)
    try:
        await sys_.start(CONSUMER_NAMES=f"inventory={sys_.namespace}-inventory-group", ORDER_EVENTS_FLAT_FIELDS="true")
        yield sys_
    finally:
        await sys_.aclose()


async def kafka_consumed(system: System, channel: str, consumer: str) -> int:
    """Offsets committed by the consumer's group (`<ns>.<consumer>`) on the channel's topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers="localhost:9092")
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{system.namespace}.{consumer}")
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == channel and meta.offset > 0)
    finally:
        await admin.close()


async def rabbit_consumed(_system: System, channel: str, consumer: str) -> int:
    """Consumers attached to the consumer's queue `<channel>.<consumer>` (0: the queue does not exist)."""
    connection = await aio_pika.connect("amqp://guest:guest@localhost:5672/")
    try:
        chan = await connection.channel()
        try:
            queue = await chan.declare_queue(f"{channel}.{consumer}", passive=True)
        except ChannelNotFoundEntity:
            return 0
        return int(queue.declaration_result.consumer_count or 0)
    finally:
        await connection.close()


async def nats_consumed(_system: System, channel: str, consumer: str) -> int:
    """Stream messages the durable `consumer` has acknowledged (0: no such durable)."""
    nc = await nats.connect("nats://localhost:4222")
    try:
        js = nc.jetstream()
        try:
            info = await js.consumer_info(await js.find_stream_name_by_subject(channel), consumer)
        except NotFoundError:
            return 0
        return int(info.ack_floor.stream_seq if info.ack_floor else 0)
    finally:
        await nc.close()


CONSUMED: dict[str, Callable[[System, str, str], Awaitable[int]]] = {
    "kafka": kafka_consumed,
    "rabbit": rabbit_consumed,
    "nats": nats_consumed,
}
"""How far a consumer name consumes a channel, as the broker shows it (0: not at all)."""


async def test_inventory_consumes_under_its_configured_name(named: System) -> None:
    product = uid("P")
    await named.set_stock(product, 5)
    order_id = (await named.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    await named.wait_status(order_id, {"CONFIRMED"})

    if named.broker not in CONSUMED:
        pytest.skip(f"{named.broker}: no reader of a consumer name's progress here")
    channel, consumed = named.channel("order-events"), CONSUMED[named.broker]
    name = f"{named.namespace}-inventory-group"
    await eventually(lambda: consumed(named, channel, name), lambda n: n > 0, what=f"{name} consuming {channel}")
    assert await consumed(named, channel, "inventory-service") == 0
    payments = named.channel("payment-events")
    await eventually(lambda: consumed(named, payments, name), lambda n: n > 0, what=f"{name} consuming {payments}")

    # the order service, which publishes order-events, reports that consumer's lag under its name
    def lag_series(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("consumer_lag_messages{")]

    metrics = await eventually(
        lambda: named.metrics("order"),
        lambda text: any(f'consumer="{name}"' in line and channel in line for line in lag_series(text)),
        what=f"order service reporting the lag of {name}",
    )
    assert not [line for line in lag_series(metrics) if 'consumer="inventory-service"' in line]


async def test_flat_fields_on_single_item_orders_only(named: System, raw: RawClient) -> None:
    product, other = uid("P"), uid("P")
    await named.set_stock(product, 10)
    await named.set_stock(other, 10)
    tap = await raw.tap(named.channel("order-events"))
    single, double = uid("flat"), uid("two")

    await named.post_order({"orderId": single, "items": [{"productId": product, "quantity": 2}]})
    await named.post_order(
        {"orderId": double, "items": [{"productId": product, "quantity": 1}, {"productId": other, "quantity": 3}]}
    )

    await named.wait_status(single, {"CONFIRMED"})
    await named.wait_status(double, {"CONFIRMED"})
    seen = await eventually(
        lambda: raw.tapped(tap),
        lambda messages: {m.order_id() for m in messages} >= {single, double},
        what="both OrderCreated on order-events",
    )
    bodies = {m.order_id(): m.json() for m in seen if m.order_id() in (single, double)}
    assert (bodies[single]["productId"], bodies[single]["quantity"]) == (product, 2)
    assert bodies[single]["items"] == [{"productId": product, "quantity": 2}]
    assert "productId" not in bodies[double]
    assert "quantity" not in bodies[double]
    assert await named.stock(product) == 7
    assert await named.stock(other) == 7

"""Glue between the engine and FastStream brokers, for transports built on FastStream."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from faststream import BaseMiddleware, Context

from brokers.model import DeadLetter, dead_letter_channel

if TYPE_CHECKING:
    from faststream.message import StreamMessage

    from brokers.interface import DeadLetterHandler, Pipeline
    from brokers.model import Delivery, Observability, Subscription

log = logging.getLogger("switchboard.delivery")
ToDeliveries = Callable[["StreamMessage[Any]"], Awaitable["list[Delivery]"]]


def broker_options(
    observability: Observability, prometheus_middleware: type, telemetry_middleware: type
) -> dict[str, Any]:
    """What every FastStream broker gets: FastStream's Prometheus middleware (and its OpenTelemetry
    one when spans are recorded), a graceful stop, and per-message Received/Processed lines at
    DEBUG (ours is `switchboard.events`)."""
    middlewares = [prometheus_middleware(registry=observability.registry, app_name=observability.app_name)]
    if observability.tracer_provider is not None:
        middlewares.append(telemetry_middleware(tracer_provider=observability.tracer_provider))
    return {"middlewares": middlewares, "graceful_timeout": 10.0, "log_level": logging.DEBUG}


def policy_middleware(
    pipeline: Pipeline, deliveries: ToDeliveries, give_back: Callable[[StreamMessage[Any]], Awaitable[None]]
) -> type[BaseMiddleware]:
    """A FastStream middleware that takes over a subscriber's messages: each FastStream message (one
    or a batch) becomes deliveries for `pipeline`; FastStream's handler call is never reached (the
    endpoint only documents the payload). While draining, `give_back` gets the message instead."""

    class DeliveryPolicy(BaseMiddleware):
        async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:  # noqa: ARG002
            if pipeline.draining:
                await give_back(msg)
                return
            batch = await deliveries(msg)
            if batch:
                await pipeline.submit(batch)

    return DeliveryPolicy


async def keep_unacknowledged(msg: StreamMessage[Any]) -> None:
    """`give_back` for brokers that deliver an unacknowledged message again once its consumer is
    gone (Kafka: uncommitted; RabbitMQ: requeued when the channel closes)."""


def stop_subscribers(broker: Any) -> None:
    """Stop every FastStream subscriber of `broker` from reading (its `running` flag); anything
    still delivered stays unacknowledged and comes again."""
    for subscriber in broker.subscribers:
        subscriber.running = False


async def ping(broker: Any, within_s: float) -> bool:
    try:
        return bool(await broker.ping(timeout=within_s))
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False


async def decode_untouched(msg: StreamMessage[Any]) -> Any:
    """FastStream decoder for policy subscribers: the engine validates each body itself."""
    return msg.body


async def decode_raw(msg: StreamMessage[Any]) -> bytes:
    """FastStream decoder that hands the body over untouched (dead letters are any bytes)."""
    return bytes(msg.body)


def dead_letter_endpoint(channel: str, handler: DeadLetterHandler) -> Callable[..., Awaitable[None]]:
    """A FastStream-facing function that turns a DLT message into a `DeadLetter` for `handler`."""
    dlt = dead_letter_channel(channel)

    async def on_dead_letter(body: bytes, message: Annotated[Any, Context("message")]) -> None:
        headers = {str(k): v if isinstance(v, str) else str(v) for k, v in (message.headers or {}).items()}
        try:
            await handler(DeadLetter(dlt, body, headers))
        except Exception:
            log.exception("dead-letter listener failed on a message of %s", dlt)

    on_dead_letter.__name__ = getattr(handler, "__name__", "on_dead_letter")
    on_dead_letter.__doc__ = handler.__doc__
    return on_dead_letter


def handler_endpoint(sub: Subscription) -> Callable[..., Awaitable[None]]:
    """A FastStream-facing function whose signature documents and validates `sub.model`."""

    async def endpoint(event: Any) -> None:
        await sub.handler(event)

    endpoint.__annotations__ = {"event": sub.model, "return": None}
    endpoint.__name__ = getattr(sub.handler, "__name__", "handle")
    endpoint.__doc__ = sub.description or sub.handler.__doc__
    return endpoint

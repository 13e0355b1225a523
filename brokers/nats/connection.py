"""What every NATS role shares: the FastStream broker (its connection), the streams used and the
subscriptions made; naming of streams; the exit when the server closed the connection."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from faststream.exceptions import IncorrectState
from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.security import SASLPlaintext

from brokers.credentials import url_credentials, without_credentials
from brokers.engine.faststream import broker_options
from brokers.nodes import nats_servers

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from brokers.interface import Engine, TransportContext
    from brokers.model import Subscription

log = logging.getLogger("switchboard.nats")

CONNECTION_LOST_EXIT = 75
"""Exit status when the server closed the connection for good (nats-py does not reconnect after a
protocol error): a supervisor restarts the service."""
BODIES_BUCKET = "dead-letter-bodies"
"""Object Store bucket (`<namespace>-dead-letter-bodies`) keeping the bodies of dead letters that would
not fit `max_payload` with their envelope (`brokers.fitting`, step 2)."""


def stream_name(subject: str) -> str:
    return subject.replace(".", "_").replace("*", "_").replace(">", "_")


def stream_of(channel: str) -> JStream:
    """The channel's stream. Its replicas are set, and FastStream's declaration switched off, by
    `Lifecycle.start` (`brokers.nats.provision`), once the cluster size is known."""
    return JStream(stream_name(channel), subjects=[channel], declare=True)


def dlt_stream_of(channel: str) -> JStream:
    """The stream of `<channel>.DLT`, provisioned as `stream_of`'s."""
    return JStream(stream_name(channel) + "-DLT", subjects=[channel + ".DLT"], declare=True)


def user_password(url: str) -> SASLPlaintext | None:
    """BROKER_URL's credentials for every server, the ones the cluster announces too (nats-py takes
    a server URL's own only for that server)."""
    creds = url_credentials(url)
    return SASLPlaintext(creds.username, creds.password) if creds else None


class NatsConnection:
    """The state the role classes share (each gets it in its constructor)."""

    def __init__(self, context: TransportContext, engine: Engine) -> None:
        self.context = context
        self.engine = engine
        self.streams: dict[str, JStream] = {}
        self.subscriptions: list[Subscription] = []
        self.draining = False
        """Set by `Consumer.drain`: a connection closing from then on is ours."""
        self.replicas = 1
        """Replicas of the streams created (the dead-letter bodies bucket gets as many)."""
        self.broker = NatsBroker(
            nats_servers(without_credentials(context.url)),  # they go in `security`, for every server
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            closed_cb=self.on_connection_closed,
            security=user_password(context.url),
            **broker_options(context.observability, NatsPrometheusMiddleware, NatsTelemetryMiddleware),
        )

    @property
    def nc(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream

    def stream(self, subject: str) -> JStream:
        """The stream keeping `subject` (a channel or its `.DLT`), one `JStream` per subject."""
        if subject not in self.streams:
            factory = dlt_stream_of if subject.endswith(".DLT") else stream_of
            self.streams[subject] = factory(subject.removesuffix(".DLT"))
        return self.streams[subject]

    @property
    def bodies_bucket(self) -> str:
        """`<namespace>-dead-letter-bodies` (Object Store bucket names allow no dots)."""
        namespace = self.context.namespace
        return f"{stream_name(namespace)}-{BODIES_BUCKET}" if namespace else BODIES_BUCKET

    async def on_connection_closed(self) -> None:
        """The connection closed without our asking (a server `-ERR`, after which nats-py never
        reconnects): exit non-zero so a supervisor starts the service again, rather than live on
        without a broker. A stop we started (`broker.running` already false, or draining) is left alone."""
        if not self.broker.running or self.draining:
            return
        error = None
        with contextlib.suppress(IncorrectState):
            error = self.broker.connection.last_error
        log.critical("NATS connection closed by the server (%s); exiting with status %d", error, CONNECTION_LOST_EXIT)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(CONNECTION_LOST_EXIT)

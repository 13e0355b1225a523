"""JetStream streams, created with num_replicas = min(3, cluster size).

How the cluster size is found: no JetStream API tells an ordinary account how many servers
its cluster has, so the connected server's INFO is read (`brokers.nats.internals.server_info`:
nats-py has no public accessor): a server without a `cluster` name is
standalone (size 1); a clustered one announces the client URLs of every server of its cluster,
itself included, in `connect_urls` (size = their count). When that is unknown (INFO not kept,
or a cluster configured with `no_advertise`) 3 replicas are asked for. Creation then falls
back: if JetStream cannot place the replicas ("replicas > 1 not supported in non-clustered
mode", "insufficient resources", "no suitable peers for placement": a smaller cluster, or a
server down) it is asked again with one replica fewer, down to 1, with a warning, unless
NATS_STREAM_REPLICAS was set (then it is created as configured, or not at all).

The streams are created with FastStream's own `JStream` config (the one its `declare=True`
would send) plus the replicas, and FastStream's declaration is then switched off: its
`add_stream` of a different config ends in `update_stream`, which would silently change an
existing stream. An existing stream is compared (replicas), never altered. Durable consumers
are created by FastStream without `num_replicas` (0: they follow their stream).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nats.js.errors import APIError, NotFoundError

from brokers.nats.internals import server_info
from brokers.provisioning import (
    CREATED,
    FAILED,
    WOULD_CREATE,
    Provisioned,
    Provisioning,
    compared,
    nats_replicas,
)

if TYPE_CHECKING:
    from faststream.nats import JStream
    from nats.js import JetStreamContext

log = logging.getLogger("switchboard.nats")

KIND = "stream"
REPLICAS = "replicas"
NOT_CLUSTERED = 10074
"""replicas > 1 not supported in non-clustered mode"""
CANNOT_PLACE = frozenset({10005, 10023})
"""no suitable peers for placement; insufficient resources"""
NAME_IN_USE = 10058
"""stream name already in use with a different configuration (created meanwhile by another service)"""


def cluster_size(client: Any) -> int | None:
    """Servers in the connected server's cluster (see the module docstring); None if unknown."""
    info = server_info(client)
    if not info:
        return None
    if not info.get("cluster"):
        return 1
    urls = info.get("connect_urls") or ()
    return len(set(urls)) or None


class StreamProvisioner:
    """Creates or compares the streams of one transport; learns from a refused placement."""

    def __init__(self, js: JetStreamContext, provisioning: Provisioning, servers: int | None) -> None:
        self._js = js
        self._strict = provisioning.nats_stream_replicas is not None
        self.wanted = nats_replicas(servers, provisioning.nats_stream_replicas)
        """Replicas a stream should have (what existing streams are compared with)."""
        self.replicas = self.wanted
        """Replicas asked of the next stream created: lower once JetStream could not place `wanted`."""
        self._shortfall = ""
        """Why `replicas` < `wanted` (JetStream's refusal), if it is."""

    async def ensure(self, stream: JStream, *, dry_run: bool = False) -> Provisioned:
        """Create `stream` if missing (dry run: report it), else compare its replicas. When it is
        there, FastStream's `JStream` gets the stream's replicas and no longer declares it."""
        try:
            info = await self._js.stream_info(stream.name)
        except NotFoundError:
            if dry_run:
                return Provisioned(KIND, stream.name, WOULD_CREATE, f"{REPLICAS} {self.replicas}")
            outcome = await self._create(stream)
        else:
            outcome = self._compare(stream, info)
        if outcome.outcome != FAILED and not dry_run:
            stream.declare = False
        return outcome

    def _compare(self, stream: JStream, info: Any) -> Provisioned:
        replicas = info.config.num_replicas or 1
        stream.config.num_replicas = replicas
        return compared(KIND, stream.name, {REPLICAS: self.wanted}, {REPLICAS: replicas})

    async def _create(self, stream: JStream) -> Provisioned:
        while True:
            config = stream.config.evolve(subjects=list(stream.subjects), num_replicas=self.replicas)
            try:
                await self._js.add_stream(config=config)
            except APIError as exc:
                if exc.err_code == NAME_IN_USE:  # another service created it meanwhile
                    return self._compare(stream, await self._js.stream_info(stream.name))
                placement = exc.err_code == NOT_CLUSTERED or exc.err_code in CANNOT_PLACE
                if self._strict or not placement or self.replicas <= 1:
                    return Provisioned(KIND, stream.name, FAILED, f"{REPLICAS} {self.replicas}: {exc.description}")
                if exc.err_code == NOT_CLUSTERED:  # a standalone server: the cluster size is 1
                    self.wanted = self.replicas = 1
                else:
                    self.replicas -= 1
                    self._shortfall = str(exc.description)
                    log.warning(
                        "JetStream cannot place %d replicas (%s); asking for %d",
                        self.replicas + 1,
                        exc.description,
                        self.replicas,
                    )
                continue
            stream.config.num_replicas = self.replicas
            degraded = self.replicas < self.wanted
            detail = f"{REPLICAS} {self.replicas}" + (f"; wanted {self.wanted}: {self._shortfall}" if degraded else "")
            return Provisioned(KIND, stream.name, CREATED, detail, degraded=degraded)

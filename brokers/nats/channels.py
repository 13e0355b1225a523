"""Streams and the dead-letter bodies bucket: what the service publishes, and their provisioning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nats.js.api import ObjectStoreConfig
from nats.js.errors import APIError, NotFoundError

from brokers.nats.provision import StreamProvisioner, cluster_size
from brokers.provisioning import CREATED, FAILED, WOULD_CREATE, Provisioned, compared

if TYPE_CHECKING:
    from brokers.nats.connection import NatsConnection

BUCKET_KIND = "object store"


class NatsChannels:
    """`brokers.interface.Channels` for JetStream."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._declared_publishers: set[str] = set()

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        self.declare(channel, schema, description)

    def declare(self, subject: str, schema: Any, description: str) -> None:
        """A FastStream publisher of `subject` (AsyncAPI), its stream registered for provisioning."""
        if subject not in self._declared_publishers:
            self._declared_publishers.add(subject)
            self._conn.broker.publisher(
                subject, stream=self._conn.stream(subject), title=subject, description=description, schema=schema
            )

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Every stream this service subscribes, publishes or dead-letters to (channels and `-DLT` streams),
        and, for a consuming service, the Object Store bucket of dead-letter bodies kept apart."""
        conn = self._conn
        provisioner = StreamProvisioner(conn.js, conn.context.provisioning, cluster_size(conn.nc))
        outcomes = [await provisioner.ensure(stream, dry_run=dry_run) for stream in conn.streams.values()]
        conn.replicas = provisioner.replicas
        if conn.subscriptions:  # a service that dead-letters: the bucket for bodies too large to go with them
            outcomes.append(await self._provision_bodies_bucket(provisioner, dry_run=dry_run))
        return outcomes

    async def _provision_bodies_bucket(self, provisioner: StreamProvisioner, *, dry_run: bool) -> Provisioned:
        """The Object Store bucket of spilled dead-letter bodies, with the streams' replicas."""
        js, bucket, wanted = self._conn.js, self._conn.bodies_bucket, {"replicas": provisioner.wanted}
        try:
            info = await js.stream_info(f"OBJ_{bucket}")
        except NotFoundError:
            if dry_run:
                return Provisioned(BUCKET_KIND, bucket, WOULD_CREATE, f"replicas {provisioner.replicas}")
            try:
                await js.create_object_store(bucket, ObjectStoreConfig(replicas=provisioner.replicas))
            except APIError as exc:
                return Provisioned(BUCKET_KIND, bucket, FAILED, f"replicas {provisioner.replicas}: {exc.description}")
            return Provisioned(BUCKET_KIND, bucket, CREATED, f"replicas {provisioner.replicas}")
        return compared(BUCKET_KIND, bucket, wanted, {"replicas": info.config.num_replicas or 1})

"""Local 3-node broker clusters (`scripts/brokers.sh start <broker> --nodes 3`) seen from a test:
the node list, each node's pid, and which node leads a channel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nats
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.system import ROOT

NODES = 3
URLS = {
    "kafka": "localhost:19092,localhost:19094,localhost:19096",
    "rabbit": "amqp://guest:guest@localhost:5681,localhost:5682,localhost:5683/",
    "nats": "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224",
}
RABBIT_NODE_NAME = "sb{}@localhost"


def brokers_script(*args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "brokers.sh"), *args], check=True, cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout


@dataclass
class Cluster:
    broker: str

    @property
    def url(self) -> str:
        return URLS[self.broker]

    def start(self) -> None:
        """Start every node that is not running (idempotent) and wait until the cluster serves."""
        brokers_script("start", self.broker, "--nodes", str(NODES))

    def stop(self) -> None:
        brokers_script("stop", self.broker, "--nodes", str(NODES))

    def pid_of(self, node: int) -> int:
        path = ROOT / ".local" / f"{self.broker}-cluster" / f"node{node}" / f"{self.broker}.pid"
        return int(Path(path).read_text().strip())

    def kill(self, node: int) -> None:
        """SIGKILL one node (nothing flushed, no goodbye to its peers)."""
        os.kill(self.pid_of(node), signal.SIGKILL)

    async def leader_of(self, channel: str) -> int:
        """The node (1-based) that leads `channel`: the leader of partition 0 of its topic (Kafka),
        of its stream (NATS), of the inventory's quorum queue bound to it (RabbitMQ)."""
        if self.broker == "kafka":
            return await _kafka_leader(self.url, channel)
        if self.broker == "nats":
            return await _nats_leader(self.url, channel)
        return _rabbit_leader(f"{channel}.inventory-service")


async def _kafka_leader(url: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=url.split(","))
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        leader = consumer._client.cluster.leader_for_partition(TopicPartition(topic, 0))
        if leader is None or leader < 0:
            raise AssertionError(f"{topic} partition 0 has no leader")
        return int(leader)  # node.id 1..3 is node 1..3
    finally:
        await consumer.stop()


async def _nats_leader(url: str, channel: str) -> int:
    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream().stream_info(channel.replace(".", "_"))
        leader = info.cluster.leader if info.cluster else None
        if not leader:
            raise AssertionError(f"stream of {channel} has no leader: {info.cluster}")
        return int(leader.removeprefix("n"))
    finally:
        await nc.close()


def _rabbit_leader(queue: str) -> int:
    env = {**os.environ, "HOME": str(ROOT / ".local" / "rabbit-cluster" / "home")}
    out = subprocess.run(
        [
            "/usr/lib/rabbitmq/bin/rabbitmqctl",
            "-q",
            "-n",
            RABBIT_NODE_NAME.format(1),
            "list_queues",
            "name",
            "leader",
            "--formatter",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    for row in json.loads(out):
        if row["name"] == queue:
            return int(str(row["leader"]).split("@")[0].removeprefix("sb"))
    raise AssertionError(f"queue {queue} not found")

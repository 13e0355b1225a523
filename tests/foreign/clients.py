"""Foreign clients of other stacks, as processes: the Spring Kafka / RabbitMQ Java jar and the `nats` CLI.

`scripts/foreign-clients.sh` builds them under `.local/`. Long-running Java clients write their
stdout (JSON lines) and stderr (Spring's and Kafka's log) to files that tests poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.system import ROOT, eventually, terminate

JAR = ROOT / ".local" / "foreign" / "foreign-clients.jar"
NATS_CLI = ROOT / ".local" / "go" / "bin" / "nats"
JAVA_OPTS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
KAFKA = "localhost:9092"


def build() -> None:
    """Build or find the clients (idempotent; cached under .local/)."""
    subprocess.run([str(ROOT / "scripts" / "foreign-clients.sh")], check=True, cwd=ROOT)


def java_command(mode: str, *args: str) -> list[str]:
    return ["java", *JAVA_OPTS, "-jar", str(JAR), mode, *args]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.stdout)


async def run(command: list[str], *, timeout: float = 120.0, env: dict[str, str] | None = None) -> Finished:
    """Run a short-lived client to completion (killed after `timeout` seconds)."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{command[:6]} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@dataclass
class JavaApp:
    """A long-running Spring Kafka client (kafka-consume, kafka-fail), stopped by its pid."""

    mode: str
    args: tuple[str, ...]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def out_path(self) -> Path:
        return self.workdir / f"{self.mode}.out"

    @property
    def err_path(self) -> Path:
        return self.workdir / f"{self.mode}.err"

    def start(self) -> JavaApp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(java_command(self.mode, *self.args), stdout=out, stderr=err, cwd=ROOT)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def lines(self, event: str) -> list[dict[str, Any]]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.mode} exited ({self.proc.returncode}): {self.stderr()[-3000:]}")
        return [line for line in json_lines(self.stdout()) if line.get("event") == event]

    def assignment(self, listener: str) -> list[str]:
        """The listener's partitions (`topic:partition`) as last printed; [] before the first assignment."""
        printed = [line["partitions"] for line in self.lines("assignment") if line["listener"] == listener]
        return printed[-1] if printed else []

    async def wait_assigned(self, listener: str, until: Any, what: str, timeout: float = 90.0) -> list[str]:
        async def probe() -> list[str]:
            return self.assignment(listener)

        return await eventually(probe, until, timeout=timeout, what=what, interval=0.2)


@dataclass
class KafkaRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


async def kafka_records(topic: str, since: dict[int, int] | None = None) -> list[KafkaRecord]:
    """Every record of `topic` (from the offsets `since`, per partition), headers as raw bytes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, (since or {}).get(tp.partition, 0))
        out: list[KafkaRecord] = []
        deadline = time.monotonic() + 30
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} up to {ends} within 30s")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                out.extend(
                    KafkaRecord(tp.partition, r.offset, r.key, r.value or b"", [(k, bytes(v)) for k, v in r.headers])
                    for r in records
                    if r.offset < ends[tp]
                )
        return out
    finally:
        await consumer.stop()


async def kafka_end_offsets(topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def with_key(records: Iterable[KafkaRecord], key: str) -> list[KafkaRecord]:
    return [r for r in records if r.key == key.encode()]

"""Provisioning without a broker: the replica arithmetic, and what each broker's provisioner
creates, compares and reports, against fakes of the admin / JetStream / AMQP calls it makes."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from aiokafka.admin.config_resource import ConfigResourceType
from faststream.nats import JStream
from nats.js.errors import BadRequestError, NotFoundError, ServerError

from brokers import Provisioning, provisioning
from brokers.kafka.provision import COPY_HEADROOM_BYTES, provision_topics
from brokers.nats.provision import StreamProvisioner, cluster_size
from brokers.provisioning import (
    CREATED,
    EXISTS,
    FAILED,
    MISMATCH,
    WOULD_CREATE,
    Provisioned,
    compared,
    differences,
    kafka_min_insync_replicas,
    kafka_replication_factor,
    log_outcomes,
    nats_replicas,
)
from brokers.rabbit.provision import Declarer, declare_nothing, use_as_it_is
from config import Settings

BROKER_MESSAGE_MAX = 1048588

# --- arithmetic -----------------------------------------------------------------------


@pytest.mark.parametrize(("brokers", "rf"), [(0, 1), (1, 1), (2, 2), (3, 3), (5, 3)])
def test_replication_factor_is_min_of_3_and_the_brokers(brokers: int, rf: int) -> None:
    assert kafka_replication_factor(brokers, None) == rf


def test_configured_replication_factor_wins() -> None:
    assert kafka_replication_factor(5, 2) == 2
    assert kafka_replication_factor(1, 3) == 3  # the broker refuses it: reported as FAILED


@pytest.mark.parametrize(("rf", "min_isr"), [(1, None), (2, 1), (3, 2)])
def test_min_insync_replicas_is_rf_minus_1_from_rf_2(rf: int, min_isr: int | None) -> None:
    assert kafka_min_insync_replicas(rf, None) == min_isr


def test_configured_min_insync_replicas_wins() -> None:
    assert kafka_min_insync_replicas(3, 1) == 1
    assert kafka_min_insync_replicas(1, 1) == 1


@pytest.mark.parametrize(("servers", "replicas"), [(None, 3), (1, 1), (2, 2), (3, 3), (5, 3)])
def test_stream_replicas_are_min_of_3_and_the_cluster(servers: int | None, replicas: int) -> None:
    assert nats_replicas(servers, None) == replicas
    assert nats_replicas(servers, 5) == 5


def test_settings_reach_the_transport_as_one_provisioning() -> None:
    settings = Settings(
        provision=False, kafka_partitions=12, kafka_replication_factor=2, nats_stream_replicas=1, _env_file=None
    )
    assert provisioning(settings) == Provisioning(
        enabled=False,
        kafka_partitions=12,
        kafka_replication_factor=2,
        kafka_min_insync_replicas=None,
        nats_stream_replicas=1,
    )
    assert provisioning(Settings(_env_file=None)) == Provisioning()


# --- reporting ------------------------------------------------------------------------


def test_differences_name_actual_and_wanted_and_skip_what_was_not_asked_for() -> None:
    wanted = {"partitions": 6, "replication factor": 3, "min.insync.replicas": None}
    assert differences(wanted, {"partitions": 1, "replication factor": 3, "min.insync.replicas": 1}) == [
        "partitions 1 (wanted 6)"
    ]
    assert differences({"min.insync.replicas": 2}, {}) == ["min.insync.replicas unset (wanted 2)"]
    assert compared("topic", "t", wanted, {"partitions": 6, "replication factor": 3}) == Provisioned(
        "topic", "t", EXISTS
    )
    mismatch = compared("topic", "t", wanted, {"partitions": 1, "replication factor": 1})
    assert mismatch.line() == "topic t: MISMATCH (partitions 1 (wanted 6); replication factor 1 (wanted 3))"


def test_outcomes_are_logged_by_severity(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = [
        Provisioned("topic", "a", CREATED, "partitions 6"),
        Provisioned("topic", "b", EXISTS),
        Provisioned("topic", "c", MISMATCH, "partitions 1 (wanted 6)"),
        Provisioned("topic", "d", FAILED, "error 38"),
        Provisioned("stream", "e", CREATED, "replicas 2; wanted 3", degraded=True),
    ]
    with caplog.at_level(logging.DEBUG, logger="test.provisioning"):
        log_outcomes(outcomes, logging.getLogger("test.provisioning"))
    levels = {r.getMessage().split()[2].rstrip(":"): r.levelno for r in caplog.records}
    assert levels == {
        "a": logging.INFO,
        "b": logging.DEBUG,
        "c": logging.WARNING,
        "d": logging.ERROR,
        "e": logging.WARNING,
    }
    assert "left as it is" in next(r.getMessage() for r in caplog.records if " c: " in r.getMessage())


# --- Kafka ------------------------------------------------------------------------------


class _Response:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj

    def to_object(self) -> dict[str, Any]:
        return self._obj


class FakeAdmin:
    """AIOKafkaAdminClient's calls as `provision_topics` makes them; `topics`: name → (partitions, rf, min ISR)."""

    def __init__(self, brokers: int, topics: dict[str, tuple[int, int, int]] | None = None) -> None:
        self.brokers = brokers
        self.topics = dict(topics or {})
        self.created: list[Any] = []
        self.described: list[str] = []
        self.race: set[str] = set()
        self.refuse: dict[str, int] = {}
        self.max_message: dict[str, int] = {}

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i} for i in range(self.brokers)]}

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def create_topics(self, new_topics: list[Any]) -> _Response:
        errors = []
        for topic in new_topics:
            self.created.append(topic)
            if topic.name in self.race:  # another service created it between list and create
                self.topics[topic.name] = (3, min(3, self.brokers), 2)
                errors.append({"topic": topic.name, "error_code": 36, "error_message": "exists"})
            elif topic.name in self.refuse:
                errors.append({"topic": topic.name, "error_code": self.refuse[topic.name], "error_message": "no"})
            else:
                isr = int(topic.topic_configs.get("min.insync.replicas", 1))
                self.topics[topic.name] = (topic.num_partitions, topic.replication_factor, isr)
                if "max.message.bytes" in topic.topic_configs:
                    self.max_message[topic.name] = int(topic.topic_configs["max.message.bytes"])
                errors.append({"topic": topic.name, "error_code": 0, "error_message": None})
        return _Response({"topic_errors": errors})

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.described.extend(names)
        assert set(names) <= set(self.topics), "a missing topic was described (the broker would auto-create it)"
        return [
            {
                "topic": n,
                "error_code": 0,
                "partitions": [
                    {"partition": p, "leader": 0, "replicas": list(range(self.topics[n][1]))}
                    for p in range(self.topics[n][0])
                ],
            }
            for n in names
        ]

    async def describe_configs(self, resources: list[Any]) -> list[_Response]:
        entries = [
            {
                "resource_name": r.name,
                "config_entries": [
                    {"config_names": "message.max.bytes", "config_value": str(BROKER_MESSAGE_MAX)}
                    if r.resource_type == ConfigResourceType.BROKER
                    else {"config_names": "min.insync.replicas", "config_value": str(self.topics[r.name][2])},
                    *(
                        [{"config_names": "max.message.bytes", "config_value": str(self.max_message[r.name])}]
                        if r.name in self.max_message
                        else []
                    ),
                ],
            }
            for r in resources
        ]
        return [_Response({"resources": entries})]


async def test_kafka_creates_missing_topics_with_partitions_rf_and_min_isr() -> None:
    admin = FakeAdmin(brokers=5)
    outcomes = await provision_topics(admin, ["b", "a", "a"], Provisioning())  # type: ignore[arg-type]
    assert [(o.name, o.outcome) for o in outcomes] == [("a", CREATED), ("b", CREATED)]
    assert outcomes[0].detail == "partitions 3, replication factor 3, min.insync.replicas 2"
    assert [(t.name, t.num_partitions, t.replication_factor, t.topic_configs) for t in admin.created] == [
        ("a", 3, 3, {"min.insync.replicas": "2"}),
        ("b", 3, 3, {"min.insync.replicas": "2"}),
    ]
    assert admin.described == ["a", "b"]  # created, then awaited in the metadata: never described before


async def test_kafka_retry_and_dlt_topics_take_a_record_plus_its_envelope() -> None:
    admin = FakeAdmin(brokers=1, topics={"old.DLT": (3, 1, 1)})
    outcomes = await provision_topics(
        admin,  # type: ignore[arg-type]
        ["ch", "ch.DLT", "ch.inventory-service.retry-400ms", "old.DLT"],
        Provisioning(),
    )
    copy_limit = BROKER_MESSAGE_MAX + COPY_HEADROOM_BYTES
    assert {t.name: t.topic_configs for t in admin.created} == {
        "ch": {},
        "ch.DLT": {"max.message.bytes": str(copy_limit)},
        "ch.inventory-service.retry-400ms": {"max.message.bytes": str(copy_limit)},
    }
    old = next(o for o in outcomes if o.name == "old.DLT")
    assert old.outcome == MISMATCH
    assert old.detail == f"max.message.bytes unset (wanted {copy_limit})"


async def test_kafka_single_broker_gets_rf_1_and_no_min_isr() -> None:
    admin = FakeAdmin(brokers=1)
    [outcome] = await provision_topics(admin, ["t"], Provisioning())  # type: ignore[arg-type]
    assert outcome.detail == "partitions 3, replication factor 1"
    assert admin.created[0].replication_factor == 1
    assert admin.created[0].topic_configs == {}


async def test_kafka_existing_topic_is_compared_and_a_mismatch_reported_not_altered() -> None:
    admin = FakeAdmin(brokers=3, topics={"same": (3, 3, 2), "other": (1, 1, 1)})
    outcomes = await provision_topics(admin, ["same", "other", "new"], Provisioning())  # type: ignore[arg-type]
    by_name = {o.name: o for o in outcomes}
    assert by_name["same"].outcome == EXISTS
    assert by_name["other"].outcome == MISMATCH
    assert by_name["other"].detail == (
        "partitions 1 (wanted 3); replication factor 1 (wanted 3); min.insync.replicas 1 (wanted 2)"
    )
    assert by_name["new"].outcome == CREATED
    assert [t.name for t in admin.created] == ["new"]
    assert admin.topics["other"] == (1, 1, 1)


async def test_kafka_topic_created_meanwhile_by_another_service_is_harmless() -> None:
    admin = FakeAdmin(brokers=3)
    admin.race = {"t"}
    [outcome] = await provision_topics(admin, ["t"], Provisioning())  # type: ignore[arg-type]
    assert outcome == Provisioned("topic", "t", EXISTS)
    assert admin.described == ["t"]  # compared, once it exists


async def test_kafka_dry_run_creates_nothing_and_refusals_are_reported() -> None:
    admin = FakeAdmin(brokers=1, topics={"old": (3, 1, 1)})
    outcomes = await provision_topics(admin, ["old", "new"], Provisioning(), dry_run=True)  # type: ignore[arg-type]
    assert [(o.name, o.outcome) for o in outcomes] == [("new", WOULD_CREATE), ("old", EXISTS)]
    assert admin.created == []
    admin.refuse = {"new": 38}
    outcomes = await provision_topics(admin, ["new"], Provisioning(kafka_replication_factor=3))  # type: ignore[arg-type]
    assert outcomes[0].outcome == FAILED
    assert outcomes[0].detail.startswith("error 38")


# --- NATS -------------------------------------------------------------------------------


class FakeJetStream:
    """`stream_info` / `add_stream` of a JetStream that places at most `placeable` replicas
    (`clustered=False`: a standalone server)."""

    def __init__(self, placeable: int = 1, *, clustered: bool = False, streams: dict[str, int] | None = None) -> None:
        self.placeable = placeable
        self.clustered = clustered
        self.streams = dict(streams or {})
        self.asked: list[tuple[str, int, list[str]]] = []
        self.race: set[str] = set()

    async def stream_info(self, name: str) -> Any:
        if name not in self.streams:
            raise NotFoundError(code=404, err_code=10059, description="stream not found")
        return SimpleNamespace(config=SimpleNamespace(num_replicas=self.streams[name]))

    async def add_stream(self, config: Any) -> Any:
        self.asked.append((config.name, config.num_replicas, list(config.subjects)))
        if config.name in self.race:
            self.streams[config.name] = 3
            raise BadRequestError(code=400, err_code=10058, description="stream name already in use")
        if config.num_replicas > 1 and not self.clustered:
            raise ServerError(code=500, err_code=10074, description="replicas > 1 not supported in non-clustered mode")
        if config.num_replicas > self.placeable:
            raise ServerError(code=500, err_code=10023, description="insufficient resources")
        self.streams[config.name] = config.num_replicas
        return SimpleNamespace(config=config)


async def test_nats_standalone_server_gets_one_replica_without_a_warning() -> None:
    js = FakeJetStream(clustered=False)
    provisioner = StreamProvisioner(js, Provisioning(), servers=None)  # type: ignore[arg-type]
    stream = JStream("s", subjects=["s"])
    first = await provisioner.ensure(stream)
    second = await provisioner.ensure(JStream("t", subjects=["t"]))
    assert (first.outcome, first.detail, first.degraded) == (CREATED, "replicas 1", False)
    assert second.detail == "replicas 1"
    assert js.asked == [("s", 3, ["s"]), ("s", 1, ["s"]), ("t", 1, ["t"])]  # learned: the next asks for 1 at once
    assert stream.declare is False  # FastStream does not declare it again (its update would alter it)
    assert stream.config.num_replicas == 1


async def test_nats_cluster_size_from_info_means_no_failed_attempt() -> None:
    js = FakeJetStream(placeable=3, clustered=True)
    provisioner = StreamProvisioner(js, Provisioning(), servers=3)  # type: ignore[arg-type]
    outcome = await provisioner.ensure(JStream("s", subjects=["s"]))
    assert outcome.detail == "replicas 3"
    assert js.asked == [("s", 3, ["s"])]


async def test_nats_unplaceable_replicas_fall_back_with_a_warning() -> None:
    js = FakeJetStream(placeable=2, clustered=True)
    provisioner = StreamProvisioner(js, Provisioning(), servers=3)  # type: ignore[arg-type]
    outcome = await provisioner.ensure(JStream("s", subjects=["s"]))
    assert outcome.outcome == CREATED
    assert outcome.degraded
    assert outcome.detail == "replicas 2; wanted 3: insufficient resources"
    assert js.streams == {"s": 2}


async def test_nats_configured_replicas_do_not_fall_back() -> None:
    js = FakeJetStream(placeable=1, clustered=True)
    provisioner = StreamProvisioner(js, Provisioning(nats_stream_replicas=3), servers=1)  # type: ignore[arg-type]
    stream = JStream("s", subjects=["s"])
    outcome = await provisioner.ensure(stream)
    assert outcome.outcome == FAILED
    assert js.asked == [("s", 3, ["s"])]
    assert stream.declare is True  # left to FastStream (as before provisioning existed)


async def test_nats_existing_stream_with_other_replicas_is_reported_not_altered() -> None:
    js = FakeJetStream(placeable=3, clustered=True, streams={"s": 1})
    provisioner = StreamProvisioner(js, Provisioning(), servers=3)  # type: ignore[arg-type]
    stream = JStream("s", subjects=["s"])
    outcome = await provisioner.ensure(stream)
    assert outcome.line() == "stream s: MISMATCH (replicas 1 (wanted 3))"
    assert js.asked == []
    assert (stream.declare, stream.config.num_replicas) == (False, 1)


async def test_nats_stream_created_meanwhile_is_compared_and_dry_run_creates_nothing() -> None:
    js = FakeJetStream(placeable=3, clustered=True)
    js.race = {"s"}
    provisioner = StreamProvisioner(js, Provisioning(), servers=3)  # type: ignore[arg-type]
    assert (await provisioner.ensure(JStream("s", subjects=["s"]))).outcome == EXISTS
    dry = await provisioner.ensure(JStream("d", subjects=["d"]), dry_run=True)
    assert (dry.outcome, dry.detail) == (WOULD_CREATE, "replicas 3")
    assert "d" not in js.streams


@pytest.mark.parametrize(
    ("info", "size"),
    [
        ({"server_id": "x", "jetstream": True}, 1),
        ({"cluster": "c1", "connect_urls": ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]}, 3),
        ({"cluster": "c1", "connect_urls": ["10.0.0.1:4222", "10.0.0.1:4222"]}, 1),
        ({"cluster": "c1"}, None),  # no_advertise: unknown
        ({}, None),
    ],
)
def test_nats_cluster_size_from_the_server_info(info: dict[str, Any], size: int | None) -> None:
    assert cluster_size(SimpleNamespace(_server_info=info)) == size
    assert cluster_size(object()) is None


# --- RabbitMQ ---------------------------------------------------------------------------


class _OpenChannel:
    is_closed = False

    async def close(self) -> None:
        self.is_closed = True


def _declarer(*, dry_run: bool = False) -> Declarer:
    declarer = Declarer(None, dry_run=dry_run)  # type: ignore[arg-type]

    async def _open() -> Any:
        return _OpenChannel()

    declarer._open = _open  # type: ignore[method-assign]
    return declarer


def _server(existing: dict[str, dict[str, Any]], wanted: dict[str, Any], name: str, created: list[str]) -> Any:
    """A declare callable answering as RabbitMQ does for queue `name` declared with `wanted`."""

    async def declare(_: Any, passive: bool) -> None:
        if name not in existing:
            if passive:
                raise ChannelNotFoundEntity(f"NOT_FOUND - no queue '{name}' in vhost '/'")
            existing[name] = wanted
            created.append(name)
            return
        if not passive and existing[name] != wanted:
            raise ChannelPreconditionFailed(
                f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{name}' in vhost '/': "
                f"received 'quorum' but current is '{existing[name].get('x-queue-type', 'classic')}'"
            )

    return declare


async def test_rabbit_queue_created_exists_or_mismatch_reported() -> None:
    quorum = {"x-queue-type": "quorum"}
    existing: dict[str, dict[str, Any]] = {"same": quorum, "legacy": {"x-queue-type": "classic"}}
    created: list[str] = []
    declarer = _declarer()
    new = await declarer._ensure("queue", "new", _server(existing, quorum, "new", created), "quorum")
    same = await declarer._ensure("queue", "same", _server(existing, quorum, "same", created), "quorum")
    legacy = await declarer._ensure("queue", "legacy", _server(existing, quorum, "legacy", created), "quorum")
    assert (new.outcome, new.detail) == (CREATED, "quorum")
    assert same == Provisioned("queue", "same", EXISTS)
    assert legacy.outcome == MISMATCH
    assert "inequivalent arg 'x-queue-type'" in legacy.detail
    assert "current is 'classic'" in legacy.detail
    assert created == ["new"]
    assert existing["legacy"] == {"x-queue-type": "classic"}


async def test_rabbit_dry_run_declares_only_passively() -> None:
    existing: dict[str, dict[str, Any]] = {}
    created: list[str] = []
    declarer = _declarer(dry_run=True)
    outcome = await declarer._ensure("queue", "q", _server(existing, {}, "q", created), "quorum")
    assert outcome.outcome == WOULD_CREATE
    assert created == []


def _fake_broker() -> Any:
    def queue(name: str) -> Any:
        return SimpleNamespace(name=name, declare=True)

    subscribers = [
        SimpleNamespace(queue=queue("c.DLT.listener"), exchange=queue("c.DLT")),
        SimpleNamespace(queue=queue("c.consumer"), exchange=queue("c")),
    ]
    return SimpleNamespace(subscribers=subscribers, publishers=[SimpleNamespace(exchange=queue("c"))])


def test_rabbit_mismatched_queue_is_used_as_it_is_by_faststream() -> None:
    broker = _fake_broker()
    use_as_it_is(broker, queue="c.DLT.listener")
    assert [s.queue.declare for s in broker.subscribers] == [False, True]
    use_as_it_is(broker, exchange="c")
    assert [s.exchange.declare for s in broker.subscribers] == [True, False]
    assert broker.publishers[0].exchange.declare is False


def test_rabbit_without_provisioning_faststream_declares_passively() -> None:
    broker = _fake_broker()
    declare_nothing(broker)
    assert not any(s.queue.declare or s.exchange.declare for s in broker.subscribers)
    assert broker.publishers[0].exchange.declare is False

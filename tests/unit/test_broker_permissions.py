"""Broker credentials in BROKER_URL / BROKER_USERNAME / BROKER_PASSWORD, and the per-service grants
of the secured profile as rendered for each broker (brokers.credentials, brokers.permissions)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from brokers import broker_url
from brokers.credentials import (
    Credentials,
    kafka_sasl_options,
    redacted,
    url_credentials,
    with_credentials,
    without_credentials,
)
from brokers.kafka.connection import faststream_security
from brokers.kafka.permissions import KafkaAcl, kafka_acls
from brokers.nats.permissions import nats_authorization, nats_permissions
from brokers.nodes import kafka_bootstrap_servers, nats_servers, rabbit_node_urls
from brokers.permissions import ServiceChannels, discover, read_passwords
from brokers.rabbit.permissions import rabbit_definitions, rabbit_password_hash, rabbit_permissions
from config import Settings

ORDER = ServiceChannels(
    "order",
    "order-service",
    publishes=("order-events",),
    consumes=("inventory-events", "payment-events"),
    watched=(("order-events", "inventory-service"),),
)
NOTIFICATION = ServiceChannels(
    "notification", "notification-service", publishes=(), consumes=("order-events",), dead_letters=("order-events",)
)
PASSWORDS = {"admin": "adm1n", "order": "0rder", "notification": "n0te"}


# --------------------------------------------------------------------------- credentials
def test_credentials_are_read_from_each_url_form() -> None:
    assert url_credentials("order:p%40ss@localhost:29092,localhost:29094") == Credentials("order", "p@ss")
    assert url_credentials("amqp://order:pw@localhost:5690/switchboard") == Credentials("order", "pw")
    assert url_credentials("nats://127.0.0.1:4222") is None
    assert without_credentials("order:pw@h1:29092,h2:29094") == "h1:29092,h2:29094"
    assert kafka_bootstrap_servers("order:pw@h1:29092,h2:29094") == ["h1:29092", "h2:29094"]


def test_the_variables_replace_the_urls_credentials_and_are_encoded() -> None:
    assert with_credentials("amqp://guest:guest@h:5690/v", "order", "a/b@c") == "amqp://order:a%2Fb%40c@h:5690/v"
    assert with_credentials("localhost:29092", "order", "pw") == "order:pw@localhost:29092"
    # nats: every node carries them (nats-py takes each server's own)
    assert nats_servers(with_credentials("nats://a:1,nats://b:2", "u", "p")) == ["nats://u:p@a:1", "nats://u:p@b:2"]
    assert rabbit_node_urls(with_credentials("amqp://g:g@h1:1,h2:2/v", "u", "p")) == [
        "amqp://u:p@h1:1/v",
        "amqp://u:p@h2:2/v",
    ]
    assert with_credentials("nats://x:y@h:1", None, None) == "nats://x:y@h:1"
    assert with_credentials("amqp://guest:guest@h/v", None, "new") == "amqp://guest:new@h/v"
    settings = Settings(broker="rabbit", broker_url="amqp://h:5690/v", broker_username="order", broker_password="pw")
    assert broker_url(settings) == "amqp://order:pw@h:5690/v"
    assert "pw" not in repr(settings)


def test_a_logged_url_shows_no_password() -> None:
    assert redacted("order:secret@h1:1,h2:2") == "order:***@h1:1,h2:2"
    assert redacted("amqp://u:secret@h/v") == "amqp://u:***@h/v"
    assert redacted("nats://u:s@a:1,nats://u:s@b:2") == "nats://u:***@a:1,nats://u:***@b:2"
    assert redacted("localhost:9092") == "localhost:9092"


def test_kafka_uses_sasl_only_with_credentials() -> None:
    assert kafka_sasl_options("localhost:9092", "SCRAM-SHA-512") == {}
    options = kafka_sasl_options("order:pw@localhost:29092", "scram-sha-512")
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "order",
        "sasl_plain_password": "pw",
    }
    security = faststream_security(options)
    assert (type(security).__name__, security.username, security.password) == ("SASLScram512", "order", "pw")  # type: ignore[union-attr]
    assert faststream_security({}) is None
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM='GSSAPI' is not supported"):
        kafka_sasl_options("u:p@h:1", "GSSAPI")


# --------------------------------------------------------------------------- what the code uses
def test_the_services_channels_are_read_from_the_code() -> None:
    found = {s.user: s for s in discover()}
    assert found["order"].publishes == ("order-events",)
    assert set(found["order"].consumes) == {"inventory-events", "payment-events"}
    assert found["payment"].publishes == ("payment-events",)
    assert found["payment"].consumes == ("inventory-events",)
    assert set(found["inventory"].consumes) == {"order-events", "payment-events"}
    assert set(found["notification"].dead_letters) == {"order-events", "inventory-events", "payment-events"}
    assert found["notification"].publishes == ()
    assert ("order-events", "inventory-service") in found["order"].watched


def test_a_services_consumer_name_and_namespace_come_from_its_settings() -> None:
    settings = Settings(channel_namespace="ns", consumer_names="inventory=inv-group")
    service = SimpleNamespace(
        name="inventory",
        consumer=settings.consumer_name("inventory"),
        settings=settings,
        published=["inventory-events"],
        dead_letters_heard=[],
        transport=SimpleNamespace(
            subscriptions=[SimpleNamespace(channel="ns.order-events")],
            lag_watch={("ns.order-events", "inv-group"): None, ("ns.inventory-events", "order-service"): None},
        ),
    )
    assert ServiceChannels.of(service) == ServiceChannels(
        "inventory",
        "inv-group",
        publishes=("inventory-events",),
        consumes=("order-events",),
        watched=(("inventory-events", "order-service"),),
    )


# --------------------------------------------------------------------------- Kafka
def test_kafka_acls_let_a_service_write_only_what_it_owns() -> None:
    acls = kafka_acls([ORDER], ["ns"])
    writes = {(a.pattern, a.name) for a in acls if a.operation == "WRITE" and a.resource == "TOPIC"}
    assert writes == {
        (pattern, f"{p}{name}")
        for p in ("", "ns.")
        for pattern, name in [
            ("LITERAL", "order-events"),
            ("LITERAL", "inventory-events.DLT"),
            ("LITERAL", "payment-events.DLT"),
            ("PREFIXED", "inventory-events.order-service.retry-"),
            ("PREFIXED", "payment-events.order-service.retry-"),
        ]
    }
    reads = {a.name for a in acls if a.operation == "READ" and a.resource == "TOPIC" and a.pattern == "LITERAL"}
    assert reads == {f"{p}{c}" for p in ("", "ns.") for c in ("inventory-events", "payment-events")}
    assert KafkaAcl("User:order", "GROUP", "LITERAL", "ns.order-service", "READ") in acls
    assert KafkaAcl("User:order", "GROUP", "PREFIXED", "ns.payment-events.order-service.retry-", "READ") in acls
    assert KafkaAcl("User:order", "GROUP", "LITERAL", "ns.inventory-service", "DESCRIBE") in acls  # lag
    assert not any(a.resource == "GROUP" and a.operation == "READ" and "inventory-service" in a.name for a in acls)
    assert {a.principal for a in acls} == {"User:order"}
    cluster = [a for a in acls if a.resource == "CLUSTER"]
    assert cluster == [KafkaAcl("User:order", "CLUSTER", "LITERAL", "kafka-cluster", "DESCRIBE_CONFIGS")]


def test_a_dead_letter_listener_reads_the_dlt() -> None:
    acls = kafka_acls([NOTIFICATION])
    assert KafkaAcl("User:notification", "TOPIC", "LITERAL", "order-events.DLT", "READ") in acls
    assert not any(a.operation == "WRITE" and a.name == "order-events" for a in acls)


# --------------------------------------------------------------------------- RabbitMQ
def test_rabbit_regexes_cover_the_services_own_names_only() -> None:
    [perm] = rabbit_permissions([ORDER], ["ns"])
    write, read, configure = (re.compile(r) for r in (perm.write, perm.read, perm.configure))
    for name in ("order-events", "ns.order-events", "payment-events.DLT", "ns.inventory-events.order-service"):
        assert write.match(name), name
    assert write.match("amq.default")  # retry copies go to the delay queue through the default exchange
    for name in ("payment-events", "ns.payment-events", "other.order-events", "x.amq.default", "order-events.x"):
        assert not write.match(name), name
    assert read.match("ns.payment-events.order-service.retry-400ms")
    assert read.match("payment-events")  # bound to it
    assert not read.match("order-events.DLT")
    assert configure.match("inventory-events.order-service.retry-2000ms")
    assert not configure.match("inventory-events.payment-service")


def test_rabbit_definitions_and_password_hashes() -> None:
    # the example of RabbitMQ's documentation (salt 908DC60A, password test12)
    assert (
        rabbit_password_hash("test12", bytes.fromhex("908DC60A")) == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    )
    defs = rabbit_definitions([ORDER, NOTIFICATION], PASSWORDS, vhost="sb")
    assert [u["name"] for u in defs["users"]] == ["admin", "order", "notification"]
    assert defs["users"][0]["tags"] == "administrator"
    assert defs["vhosts"] == [{"name": "sb"}]
    assert {p["user"] for p in defs["permissions"]} == {"admin", "order", "notification"}
    assert "0rder" not in str(defs)
    [notification] = rabbit_permissions([NOTIFICATION])
    assert re.match(notification.read, "order-events.DLT.notification-service")


# --------------------------------------------------------------------------- NATS
def test_nats_allow_lists_name_the_services_subjects_and_streams() -> None:
    [order] = nats_permissions([ORDER], ["ns"])
    assert {"order-events", "ns.order-events", "payment-events.DLT", "ns.inventory-events.DLT"} <= set(order.publish)
    assert "payment-events" not in order.publish
    assert "ns.payment-events" not in order.publish
    assert "$JS.API.CONSUMER.MSG.NEXT.ns_payment-events.order-service" in order.publish
    assert "$JS.ACK.inventory-events.order-service.>" in order.publish
    assert "$JS.API.CONSUMER.INFO.ns_order-events.inventory-service" in order.publish  # lag
    assert "$JS.API.CONSUMER.MSG.NEXT.ns_order-events.inventory-service" not in order.publish
    assert not any(s.startswith("$JS.API.STREAM.DELETE") or s in (">", "$JS.API.>") for s in order.publish)
    assert order.subscribe[0] == "_INBOX.>"
    [notification] = nats_permissions([NOTIFICATION])
    assert "$JS.API.CONSUMER.MSG.NEXT.order-events-DLT.notification-service" in notification.publish


def test_nats_authorization_block() -> None:
    text = nats_authorization([ORDER], PASSWORDS)
    assert text.startswith("authorization {")
    assert '{ user: "admin", password: "adm1n" }' in text  # unrestricted
    assert '{ user: "order", password: "0rder", permissions: {' in text
    assert '"$JS.API.INFO"' in text
    assert text.count("{") == text.count("}")


def test_the_credentials_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "credentials.env"
    path.write_text("# comment\nBROKER_PASSWORD_ADMIN=a1\nBROKER_PASSWORD_ORDER='o2'\nOTHER=x\n")
    assert read_passwords(path) == {"admin": "a1", "order": "o2"}


def test_nats_gives_the_urls_credentials_to_every_server() -> None:
    from brokers.nats import user_password

    security = user_password("nats://order:pw@a:1,nats://b:2")
    assert security is not None
    assert (security.username, security.password) == ("order", "pw")
    assert user_password("nats://a:1") is None

"""The secured broker profile (`scripts/brokers.sh start <broker> --auth`), on every broker.

A module fixture starts the secured broker (stopped at the end only if it started it), grants
the run's channel namespace and provisions as `admin`. Then: clients without credentials or with
a wrong password are refused; the `order` user cannot publish a forged PaymentProcessed on
payment-events (a clear authorization error) but can publish on order-events; and the four
services, each with its own user, take an order to CONFIRMED (the grants are sufficient).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from nats.errors import Error as NatsError

from brokers.credentials import url_credentials, without_credentials
from tests.support.system import ADMIN_TOKEN, BASE_PORT, ROOT, SERVICES, System, eventually, uid

pytestmark = pytest.mark.contract

SCRIPT = str(ROOT / "scripts" / "brokers.sh")
PLAIN_URL = {
    "kafka": "localhost:29092",
    "rabbit": "amqp://localhost:5690/switchboard",
    "nats": "nats://127.0.0.1:24222",
}


def script(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, check=check, timeout=600)


async def python_as(secured: Secured, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` connecting as `user` on the run's namespace."""
    env = {
        **os.environ,
        **secured.env_of(user),
        "BROKER": secured.broker,
        "CHANNEL_NAMESPACE": secured.system.namespace,
    }
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def env_of(broker: str, url: str) -> dict[str, str]:
    """A process environment connecting with `url`'s user: the address in BROKER_URL, the secret in variables."""
    creds = url_credentials(url)
    assert creds is not None
    return {"BROKER_URL": PLAIN_URL[broker], "BROKER_USERNAME": creds.username, "BROKER_PASSWORD": creds.password}


@dataclass
class Secured:
    broker: str
    urls: dict[str, str]
    """BROKER_URL with each user's credentials (admin and the four services)"""
    system: System
    """the four services, each connecting as its own user"""

    def env_of(self, user: str) -> dict[str, str]:
        return env_of(self.broker, self.urls[user])


@pytest.fixture(scope="module")
async def secured(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    if broker not in PLAIN_URL:
        pytest.skip(f"{broker}: no secured profile")
    running = script("status", broker, "--auth", check=False).returncode == 0
    workdir = tmp_path_factory.mktemp(f"auth-{broker}")
    urls = {u: script("url", broker, "--auth", "--user", u).stdout.strip() for u in ("admin", *SERVICES)}
    service_env = {name: env_of(broker, urls[name]) for name in SERVICES}
    env = Secured(broker, urls, System(broker, workdir, port_base=BASE_PORT[broker] + 80, service_env=service_env))
    try:
        await asyncio.to_thread(script, "start", broker, "--auth", "--namespace", env.system.namespace)  # + grants
        provision = await python_as(env, "admin", "brokers.provision", "--dlt-listener", "notification-service")
        assert provision.returncode == 0, provision.stdout + provision.stderr
        assert env.env_of("admin")["BROKER_PASSWORD"] not in provision.stdout + provision.stderr
        yield env
    finally:
        await env.system.aclose()
        await asyncio.to_thread(script, "revoke", broker, "--auth", "--namespace", env.system.namespace, check=False)
        if not running:
            await asyncio.to_thread(script, "stop", broker, "--auth", check=False)


def forged_payment(order_id: str) -> bytes:
    return json.dumps(
        {
            "eventType": "PaymentProcessed",
            "eventId": str(uuid.uuid4()),
            "schemaVersion": 1,
            "occurredAt": "2026-12-02T10:00:00Z",
            "orderId": order_id,
            "amount": 20.0,
        }
    ).encode()


# --------------------------------------------------------------------------- raw clients per broker
async def kafka_publish(url: str, topic: str, body: bytes) -> None:
    creds = url_credentials(url)
    sasl = (
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512"}
        | {"sasl_plain_username": creds.username, "sasl_plain_password": creds.password}
        if creds
        else {}
    )
    producer = AIOKafkaProducer(bootstrap_servers=without_credentials(url), request_timeout_ms=10000, **sasl)
    try:
        await producer.start()
        await producer.send_and_wait(topic, body, key=b"k")
    finally:
        await producer.stop()


async def rabbit_publish(url: str, exchange: str, body: bytes) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body), routing_key="PaymentProcessed", timeout=10)
    finally:
        await connection.close()


async def nats_publish(url: str, subject: str, body: bytes) -> None:
    """A JetStream publish; a server-side permission violation (reported asynchronously) is raised."""
    violations: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        violations.append(exc)

    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, error_cb=on_error)
    try:
        try:
            await nc.jetstream(timeout=3).publish(subject, body)
        except NatsError:
            await nc.flush(timeout=3)
            if violations:
                raise violations[0] from None
            raise
    finally:
        await nc.close()


async def publish_as(secured: Secured, url: str, channel: str, body: bytes) -> None:
    publish = {"kafka": kafka_publish, "rabbit": rabbit_publish, "nats": nats_publish}[secured.broker]
    await asyncio.wait_for(publish(url, secured.system.channel(channel), body), 30)


def wrong_password(url: str) -> str:
    creds = url_credentials(url)
    assert creds is not None
    return url.replace(f":{creds.password}@", ":not-the-password@")


# --------------------------------------------------------------------------- tests
async def test_clients_without_valid_credentials_are_refused(secured: Secured) -> None:
    anonymous = {
        "kafka": "localhost:29092",
        "rabbit": "amqp://guest:guest@localhost:5690/switchboard",
        "nats": "nats://127.0.0.1:24222",
    }[secured.broker]
    for url in (anonymous, wrong_password(secured.urls["order"])):
        with pytest.raises(Exception) as refused:  # noqa: PT011 - each client library raises its own class
            await publish_as(secured, url, "order-events", b"{}")
        text = f"{type(refused.value).__name__}: {refused.value}".lower()
        assert any(word in text for word in ("auth", "access_refused", "refused", "bootstrap")), text


async def test_a_service_cannot_publish_on_a_channel_it_does_not_own(secured: Secured) -> None:
    order_url = secured.urls["order"]
    with pytest.raises(Exception) as refused:  # noqa: PT011 - each client library raises its own class
        await publish_as(secured, order_url, "payment-events", forged_payment(uid("forged-")))
    error = refused.value
    text = f"{type(error).__name__}: {error}"
    if secured.broker == "kafka":
        assert isinstance(error, TopicAuthorizationFailedError), text
    elif secured.broker == "rabbit":
        assert "ACCESS_REFUSED" in text, text
    else:
        assert "permissions violation for publish" in text.lower(), text
    assert secured.system.channel("payment-events") in text, text
    # the same user publishes on the channel it owns
    await publish_as(secured, order_url, "order-events", b'{"eventType": "probe"}')


async def test_the_system_with_per_service_users_confirms_an_order(secured: Secured) -> None:
    system = secured.system
    await system.start()
    product, order_id = uid("P"), uid("auth-")
    await system.set_stock(product, 5)
    r = await system.post_order({"orderId": order_id, "productId": product, "quantity": 2})
    assert r.status_code == 202, r.text
    final = await system.wait_status(order_id, {"CONFIRMED", "CANCELLED", "REJECTED"}, timeout=60)
    assert final["status"] == "CONFIRMED", final
    assert await system.stock(product) == 3

    # a publisher reads the lag of its channel's consumers (their groups / queues / durables)
    async def lag_lines() -> list[str]:
        text = await system.metrics("order")
        wanted = (f'destination="{system.channel("order-events")}"', 'consumer="inventory-service"')
        return [
            line
            for line in text.splitlines()
            if line.startswith("consumer_lag_messages{") and all(w in line for w in wanted)
        ]

    await eventually(lag_lines, bool, timeout=30, what="order-service reporting inventory-service's lag")

    # retries and dead-lettering: retry plumbing, the DLT and its listener are granted too
    failing = uid("auth-fail-")
    r = await system.post_order({"orderId": failing, "productId": "FAIL", "quantity": 1})
    assert r.status_code == 202, r.text

    async def heard() -> list[dict[str, Any]]:
        r = await system.http.get(
            system.url("notification", "/dead-letters?channel=order-events.DLT&limit=1000"),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        return [d for d in r.json() if failing in d["body"]]

    [letter] = await eventually(heard, lambda found: len(found) == 1, timeout=60, what="the dead letter, heard")
    assert letter["headers"]["x-attempts"] == "3", letter  # two retries, then the dead letter
    for name in SERVICES:
        log = await asyncio.to_thread(Path(system.services[name].log_path).read_text, errors="replace")
        for user in ("admin", *SERVICES):
            assert secured.env_of(user)["BROKER_PASSWORD"] not in log, f"{name}'s log shows {user}'s password"
    # the dead-letter tool works with admin credentials the same way (polled: on NATS a `list`
    # whose pull ends in nats-py's plain asyncio.TimeoutError fails now and then, with or without auth)
    listed = await eventually(
        lambda: python_as(secured, "admin", "brokers.dlt", "list", "order-events"),
        lambda done: done.returncode == 0 and failing in done.stdout,
        timeout=60,
        what="brokers.dlt list, as admin, showing the dead letter",
    )
    assert secured.env_of("admin")["BROKER_PASSWORD"] not in listed.stdout + listed.stderr

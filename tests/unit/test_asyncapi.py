"""The system's AsyncAPI documents and the offline docs pages, without any broker.

For each broker a subprocess (the service modules read settings at import) runs
`scripts/asyncapi_combined.py` under `BROKER=<broker>`; the combined document must be
AsyncAPI 3.x and list every channel and event of docs/contract.md, with payload schemas,
examples and that transport's bindings. Where `scripts/setup.sh` installed the docs
assets, the documents also go through the official AsyncAPI parser (`@asyncapi/parser`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from scripts.asyncapi_combined import merge
from services.docs import ASSETS, NO_FAVICON, DocsAssets, add_docs_routes, asyncapi_route, without_remote_icons

ROOT = Path(__file__).resolve().parents[2]
BROKERS = ("kafka", "rabbit", "nats")
BINDING = {"kafka": "kafka", "rabbit": "amqp", "nats": "nats"}
CONTRACT_EVENTS: dict[str, set[str]] = {
    "order-events": {"OrderCreated"},
    "inventory-events": {"InventoryReserved", "InventoryRejected", "InventoryReleased"},
    "payment-events": {"PaymentProcessed", "PaymentFailed"},
}
CONSUMERS = ("order-service", "inventory-service", "payment-service", "notification-service")
PARSER = ROOT / ".local" / "docs-assets" / "node_modules" / "@asyncapi" / "parser"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """broker → combined document written by the script (three subprocesses in parallel)."""
    out = tmp_path_factory.mktemp("asyncapi")
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "CHANNEL_NAMESPACE")}
    procs = {}
    for broker in BROKERS:
        procs[broker] = subprocess.Popen(
            [sys.executable, "scripts/asyncapi_combined.py", "--out", str(out / f"asyncapi-{broker}.json")],
            cwd=ROOT,
            env={**env, "BROKER": broker, "DATA_DIR": str(out / "data")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    for broker, proc in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{broker}: {output.decode(errors='replace')}"
    return {broker: out / f"asyncapi-{broker}.json" for broker in BROKERS}


@pytest.fixture(params=BROKERS)
def doc(request: pytest.FixtureRequest, documents: dict[str, Path]) -> tuple[str, Doc]:
    return request.param, json.loads(documents[request.param].read_text())


def resolve(doc: Doc, node: Any) -> Any:
    """Follow local `$ref`s (JSON pointers into `doc`) until a non-reference node."""
    while isinstance(node, dict) and "$ref" in node:
        ref = str(node["$ref"])
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def event_names(doc: Doc, payload: Any) -> set[str]:
    """Titles of the event schemas a payload can be (one model or a oneOf/anyOf union)."""
    schema = resolve(doc, payload)
    members = schema.get("oneOf") or schema.get("anyOf")
    if members:
        return set().union(*(event_names(doc, m) for m in members))
    return {schema["title"]}


def contract_channel(broker: str, channel: Doc) -> str:
    """The docs/contract.md channel (or `<channel>.DLT`) an AsyncAPI channel stands for on `broker`."""
    bindings = channel["bindings"]
    if broker == "kafka":
        return str(bindings["kafka"]["topic"])
    if broker == "nats":
        return str(bindings["nats"]["subject"])
    amqp = bindings["amqp"]
    if amqp["is"] == "queue":  # the consumer's own queue `<channel>.<consumer>`, bound to the exchange
        name = str(amqp["queue"]["name"])
        consumer = next(c for c in CONSUMERS if name.endswith("." + c))
        return name.removesuffix("." + consumer)
    exchange = amqp["exchange"]
    return str(exchange.get("name") or channel["address"])  # default exchange: routing key = DLT queue


def test_document_is_asyncapi_3_with_info_and_all_sections(doc: tuple[str, Doc]) -> None:
    broker, d = doc
    assert d["asyncapi"].startswith("3."), d["asyncapi"]
    assert d["info"]["title"]
    assert d["info"]["version"]
    assert broker in d["info"]["description"]
    assert d["servers"], "no server"
    for name in ("channels", "operations"):
        assert isinstance(d[name], dict), name
        assert d[name], name
    assert d["components"]["messages"]
    assert d["components"]["schemas"]
    for key, op in d["operations"].items():
        assert op["action"] in ("send", "receive"), key
        assert resolve(d, op["channel"]) is d["channels"][op["channel"]["$ref"].split("/")[-1]]
        assert op["messages"], key
        assert {t["name"] for t in op["tags"]} <= set(CONSUMERS), key


def test_every_contract_channel_and_dead_letter_channel_is_listed(doc: tuple[str, Doc]) -> None:
    broker, d = doc
    names = {contract_channel(broker, ch) for ch in d["channels"].values()}
    expected = {*CONTRACT_EVENTS, *(f"{c}.DLT" for c in CONTRACT_EVENTS)}
    assert expected <= names, f"missing {expected - names}"
    for key, channel in d["channels"].items():
        assert BINDING[broker] in channel["bindings"], f"{key}: no {BINDING[broker]} binding"
        assert channel.get("description"), f"{key}: no description"


def test_every_contract_event_is_a_message_payload_schema_with_an_example(doc: tuple[str, Doc]) -> None:
    broker, d = doc
    sent: dict[str, set[str]] = {}
    received: dict[str, set[str]] = {}
    for op in d["operations"].values():
        channel = contract_channel(broker, resolve(d, op["channel"]))
        events = set().union(*(event_names(d, resolve(d, m)["payload"]) for m in op["messages"]))
        (sent if op["action"] == "send" else received).setdefault(channel, set()).update(events)
    for channel, events in CONTRACT_EVENTS.items():
        assert sent.get(channel) == events, f"{channel} published as {sent.get(channel)}"
        assert received.get(channel), f"nobody documents consuming {channel}"
        assert received[channel] <= events, f"{channel} consumed as {received[channel]}"
        assert sent.get(f"{channel}.DLT", set()) <= events, f"{channel}.DLT documents foreign payloads"
        for event in events:
            schema = d["components"]["schemas"][event]
            assert {"eventType", "eventId", "schemaVersion", "occurredAt", "orderId"} <= set(schema["properties"])
            assert [ex["eventType"] for ex in schema.get("examples", [])][:1] == [event], f"{event}: no example"
    for key, message in d["components"]["messages"].items():
        assert resolve(d, message["payload"]), key


def test_every_consumer_receives_and_publishes_its_dead_letters(doc: tuple[str, Doc]) -> None:
    broker, d = doc
    receives: set[tuple[str, str]] = set()
    listens: set[tuple[str, str]] = set()
    dead_letters: set[tuple[str, str]] = set()
    for op in d["operations"].values():
        channel = contract_channel(broker, resolve(d, op["channel"]))
        for tag in op["tags"]:
            if op["action"] == "receive" and channel.endswith(".DLT"):
                listens.add((channel, tag["name"]))  # the DLT listener: dead letters are not re-dead-lettered
            elif op["action"] == "receive":
                receives.add((channel, tag["name"]))
            elif channel.endswith(".DLT"):
                dead_letters.add((channel.removesuffix(".DLT"), tag["name"]))
    assert {consumer for _, consumer in receives} == set(CONSUMERS)
    assert receives <= dead_letters, f"consumers without a dead-letter publisher: {receives - dead_letters}"
    assert listens == {(f"{c}.DLT", "notification-service") for c in CONTRACT_EVENTS}, listens


def test_documents_pass_the_official_asyncapi_parser(documents: dict[str, Path]) -> None:
    node = shutil.which("node")
    if node is None or not (PARSER / "package.json").is_file():
        pytest.skip("node or @asyncapi/parser missing (scripts/setup.sh installs it with the docs assets)")
    script = """
const { Parser } = require(process.argv[1]);
const fs = require("fs");
(async () => {
  const problems = [];
  for (const file of process.argv.slice(2)) {
    const { document, diagnostics } = await new Parser().parse(fs.readFileSync(file, "utf8"));
    for (const d of diagnostics) if (d.severity === 0) problems.push(`${file}: ${d.code} ${d.message} at ${d.path.join("/")}`);
    if (!document) problems.push(`${file}: not parsed`);
  }
  console.log(problems.join("\\n"));
  process.exit(problems.length ? 1 : 0);
})();
"""
    files = [str(documents[b]) for b in BROKERS]
    run = subprocess.run([node, "-e", script, str(PARSER), *files], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_merge_dedupes_identical_entries_and_renames_conflicting_ones() -> None:
    def spec(description: str) -> Doc:
        return {
            "asyncapi": "3.0.0",
            "info": {"title": "t", "version": "1"},
            "channels": {
                "x": {
                    "address": "x",
                    "description": description,
                    "messages": {"M": {"$ref": "#/components/messages/M"}},
                },
                "x.DLT": {"address": "x.DLT"},
            },
            "operations": {
                "x": {
                    "action": "send",
                    "channel": {"$ref": "#/channels/x"},
                    "messages": [{"$ref": "#/channels/x/messages/M"}],
                },
                "x.DLT": {"action": "send", "channel": {"$ref": "#/channels/x.DLT"}, "messages": []},
            },
            "components": {"messages": {"M": {"payload": {"$ref": "#/components/schemas/S"}}}, "schemas": {"S": {}}},
        }

    merged = merge({"a": spec("from a"), "b": spec("from b")}, title="T", description="D")
    assert set(merged["channels"]) == {"x", "x@b", "x.DLT"}
    assert merged["channels"]["x@b"]["description"] == "from b"
    assert merged["operations"]["x@b"]["channel"] == {"$ref": "#/channels/x@b"}
    assert merged["operations"]["x@b"]["messages"] == [{"$ref": "#/channels/x@b/messages/M"}]
    assert [t["name"] for t in merged["operations"]["x.DLT"]["tags"]] == ["a-service", "b-service"]
    assert set(merged["components"]["schemas"]) == {"S"}
    assert set(merged["components"]["messages"]) == {"M"}


# --- the offline docs pages (services.docs), on a fake asset tree -------------------------
@pytest.fixture
def installed(tmp_path: Path) -> DocsAssets:
    for name, (rel, _) in ASSETS.items():
        file = tmp_path / rel
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"/* {name} */")
    return DocsAssets(tmp_path)


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs.test")


async def test_pages_use_local_assets_when_installed(installed: DocsAssets) -> None:
    api = FastAPI(title="T", docs_url=None, openapi_url="/docs/openapi.json")
    add_docs_routes(api, "/docs/openapi", installed)
    async with asgi_client(api) as client:
        html = (await client.get("/docs/openapi")).text
        asset = await client.get("/docs/assets/asyncapi.js")
        head = await client.head("/docs/assets/asyncapi.css")
        unknown = await client.get("/docs/assets/nope.js")
        escape = await client.get("/docs/assets/..%2F..%2Fetc%2Fpasswd")
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "/docs/assets/swagger-ui.css" in html
    assert "://" not in html, html
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert head.status_code == 200
    assert unknown.status_code == 404
    assert escape.status_code == 404

    app = AsgiFastStream(NatsBroker(), asyncapi_path=asyncapi_route("/docs/asyncapi", installed))
    async with asgi_client(app) as client:
        page = (await client.get("/docs/asyncapi")).text
        try_it_out = await client.post("/docs/asyncapi/try", json={})
    assert '<script src="/docs/assets/asyncapi.js">' in page
    assert 'href="/docs/assets/asyncapi.css"' in page
    assert "://" not in page, page
    assert NO_FAVICON in page
    assert try_it_out.status_code != 200  # publishing from the docs page stays off


async def test_pages_fall_back_to_cdn_without_local_assets(tmp_path: Path) -> None:
    missing = DocsAssets(tmp_path)
    api = FastAPI(title="T", docs_url=None)
    add_docs_routes(api, "/docs/openapi", missing)
    async with asgi_client(api) as client:
        html = (await client.get("/docs/openapi")).text
        asset = await client.get("/docs/assets/asyncapi.js")
    assert "https://" in html
    assert asset.status_code == 404
    route = asyncapi_route("/docs/asyncapi", missing)
    assert route.asyncapi_js_url.startswith("https://")
    assert route.try_it_out_path is None


def test_remote_favicons_are_replaced_once() -> None:
    html = '<head>\n  <link rel="icon" href="https://x/a.ico">\n  <link rel="icon" type="image/png" href="https://x/b.png">\n</head>'
    out = without_remote_icons(html)
    assert "https://" not in out
    assert out.count(NO_FAVICON) == 1
    assert without_remote_icons("<head></head>") == "<head></head>"

"""The docs pages in a real browser, offline.

Starts the inventory service for real (`faststream run services.inventory:app` on NATS,
own port in 28100-28199, own channel namespace and data dir) and loads `/docs/asyncapi`
and `/docs/openapi` in headless Chromium whose resolver maps every host except
127.0.0.1/localhost to NOTFOUND. Each page must render its content (from the rendered
DOM, scripts excluded), reference only same-origin or `data:` URLs, and every request
the page made (Chromium's net log) must have gone to the local service. Screenshots go
to `artifacts/asyncapi-page.png` and `artifacts/openapi-page.png`.

Needs /usr/bin/chromium (`scripts/setup.sh` installs it) and the docs assets
(`scripts/setup.sh`); installs nothing itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.system import free_port, spawn_service, terminate

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
PORTS = range(28100, 28200)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium missing: scripts/setup.sh installs it (apt-get install chromium)"
)


@dataclass(frozen=True)
class Service:
    base: str
    namespace: str


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The inventory service on NATS, ready; stopped (SIGTERM) afterwards."""
    subprocess.run([str(ROOT / "scripts" / "brokers.sh"), "start", "nats"], check=True, cwd=ROOT, timeout=300)
    workdir = tmp_path_factory.mktemp("docs-page")
    port = free_port(PORTS)
    namespace = f"docs{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BROKER": "nats",
        "HTTP_PORT": str(port),
        "CHANNEL_NAMESPACE": namespace,
        "DATA_DIR": str(workdir / "data"),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("BROKER_URL", None)
    env.pop("DATABASE_URL", None)
    log_path = workdir / "inventory.log"
    proc = spawn_service("inventory", port, env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"inventory exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"inventory not healthy after 60 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Service(base, namespace)
    finally:
        terminate(proc)


class PageText(HTMLParser):
    """Visible text (no <script>/<style>) and every src/href of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        self.links += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(data.strip())


def parse(html: str) -> PageText:
    page = PageText()
    page.feed(html)
    return page


@dataclass
class Visit:
    dom: PageText
    page_requests: list[str]
    """URLs the page itself requested (main frame and everything it loaded)."""
    browser_requests: list[str]
    """Chromium's own background requests (updater, sign-in), blocked by the resolver rules."""


def visit(url: str, tmp: Path, screenshot: Path) -> Visit:
    """Load `url` in headless Chromium with no name resolution beyond localhost."""
    netlog = tmp / "netlog.json"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    site = "{0.scheme}://{0.hostname}".format(urlsplit(url))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            f"--user-data-dir={tmp / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            f"--log-net-log={netlog}",
            "--virtual-time-budget=30000",
            "--window-size=1280,2000",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    page: list[str] = []
    browser: list[str] = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        mine = (
            params["url"] == url
            or params.get("initiator") == origin
            or site in str(params.get("network_isolation_key", "")).split()
        )
        (page if mine else browser).append(params["url"])
    return Visit(parse(run.stdout), page, browser)


def assert_offline(visit_: Visit, served_html: str, *assets: str) -> None:
    """Only same-origin/`data:` references; every page request local; the assets were fetched."""
    remote_refs = [link for link in parse(served_html).links if urlsplit(link).scheme not in ("", "data")]
    assert not remote_refs, f"page references remote URLs: {remote_refs}"
    left = [u for u in visit_.page_requests if urlsplit(u).hostname not in LOCAL_HOSTS]
    assert not left, f"requests left localhost: {left}"
    paths = {urlsplit(u).path for u in visit_.page_requests}
    assert set(assets) <= paths, f"assets not loaded from the service: {set(assets) - paths} (requests: {paths})"


def test_asyncapi_page_renders_offline(inventory: Service, tmp_path: Path) -> None:
    url = f"{inventory.base}/docs/asyncapi"
    shot = ARTIFACTS / "asyncapi-page.png"
    result = visit(url, tmp_path, shot)
    text = " ".join(result.dom.text)
    ns = inventory.namespace
    assert f"{ns}.order-events" in text, f"rendered page lacks order-events: {text[:500]!r}"
    assert f"{ns}.order-events.DLT" in text, "rendered page lacks order-events.DLT"
    assert "Switchboard Inventory service 0.1.0" in text
    assert "OrderCreated" in text, "payload schema OrderCreated not rendered"
    assert_offline(result, httpx.get(url).text, "/docs/assets/asyncapi.js", "/docs/assets/asyncapi.css")
    assert shot.stat().st_size > 20_000, "screenshot looks blank"


def test_openapi_page_renders_offline(inventory: Service, tmp_path: Path) -> None:
    url = f"{inventory.base}/docs/openapi"
    shot = ARTIFACTS / "openapi-page.png"
    result = visit(url, tmp_path, shot)
    text = " ".join(result.dom.text).replace(" /", "/")  # Swagger UI breaks paths into spans
    for operation in ("GET/inventory/{product_id} Get Stock", "PUT/inventory/{product_id} Set Stock", "GET/health"):
        assert operation in text, f"Swagger UI did not render {operation}: {text[:500]!r}"
    assets = ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/openapi.json")
    assert_offline(result, httpx.get(url).text, *assets)
    assert shot.stat().st_size > 20_000, "screenshot looks blank"

"""The documentation pages of every service, working offline.

Contract:

* `GET /docs/asyncapi` (FastStream's AsyncAPI page, no try-it-out) and
  `GET /docs/openapi` (FastAPI's Swagger UI) load their JS and CSS from this very
  process, under `/docs/assets/<name>` (`ASSETS`), when the local copy installed by
  `scripts/setup.sh` exists (`npm ci` of `scripts/docs-assets/` into
  `.local/docs-assets/`). Only when it is missing do they fall back to the public
  CDN defaults of FastStream and FastAPI (a warning is logged once per page and process).
* Neither page references a remote favicon, and Swagger UI's online validator is off,
  so with the local copy present rendering a page makes no request that leaves the host.
* `/docs/assets/<name>` answers 404 for names outside `ASSETS` or files not installed.

The choice between local copy and CDN is made when the service is built (`create_service`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from faststream.asgi import AsgiResponse, AsyncAPIRoute, get
from faststream.specification.asyncapi.site import get_asyncapi_html

if TYPE_CHECKING:
    from faststream.asgi import HttpHandler
    from faststream.asgi.types import Scope
    from faststream.specification.base import SpecificationFactory

log = logging.getLogger("switchboard.docs")

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / ".local" / "docs-assets" / "node_modules"
"""Where `scripts/setup.sh` installs the pinned npm packages of `scripts/docs-assets/`."""

ASSETS_PATH = "/docs/assets"
ASSETS: dict[str, tuple[str, str]] = {
    "asyncapi.js": ("@asyncapi/react-component/browser/standalone/index.js", "text/javascript; charset=utf-8"),
    "asyncapi.css": ("@asyncapi/react-component/styles/default.min.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": ("swagger-ui-dist/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui-dist/swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-favicon.png": ("swagger-ui-dist/favicon-32x32.png", "image/png"),
}
"""URL name under `ASSETS_PATH` → (file under `node_modules`, media type)."""

NO_FAVICON = '<link rel="icon" href="data:,">'
"""Stops the browser from asking for /favicon.ico (or a remote icon)."""
_REMOTE_ICONS = re.compile(r"[ \t]*<link rel=\"icon\"[^>]*href=\"https?://[^\"]*\"[^>]*>\n?")


@dataclass(frozen=True)
class DocsAssets:
    """The locally installed docs assets under `node_modules` (see module docstring)."""

    node_modules: Path = NODE_MODULES

    def path(self, name: str) -> Path | None:
        """The file behind `/docs/assets/<name>`, or None if unknown or not installed."""
        entry = ASSETS.get(name)
        if entry is None:
            return None
        file = self.node_modules / entry[0]
        return file if file.is_file() else None

    def local(self, *names: str) -> bool:
        """True if every named asset is installed (the page can be served offline)."""
        return all(self.path(name) is not None for name in names)

    @property
    def asyncapi_offline(self) -> bool:
        return self.local("asyncapi.js", "asyncapi.css")

    @property
    def swagger_offline(self) -> bool:
        return self.local("swagger-ui-bundle.js", "swagger-ui.css", "swagger-favicon.png")


class OfflineAsyncAPIRoute(AsyncAPIRoute):
    """FastStream's `AsyncAPIRoute` whose page carries no remote favicon links.

    FastStream's page template hard-codes favicons on asyncapi.com; everything else
    (JS/CSS URLs, sections, try-it-out) is FastStream's own rendering."""

    def __call__(self, schema: SpecificationFactory) -> HttpHandler:  # type: ignore[override]  # FastStream's GetHandler is an HttpHandler that answers GET only
        cached: bytes | None = None

        @get(
            include_in_schema=self.include_in_schema,
            description=self.description,
            tags=self.tags,
            unique_id=self.unique_id,
        )
        async def docs(scope: Scope) -> AsgiResponse:  # noqa: ARG001 - FastStream's handler signature
            nonlocal cached
            if cached is None:
                html = get_asyncapi_html(
                    schema.to_specification(),
                    sidebar=self.sidebar,
                    info=self.info,
                    servers=self.servers,
                    operations=self.operations,
                    messages=self.messages,
                    schemas=self.schemas,
                    errors=self.errors,
                    expand_message_examples=self.expand_message_examples,
                    asyncapi_js_url=self.asyncapi_js_url,
                    asyncapi_css_url=self.asyncapi_css_url,
                    try_it_out_plugin_url=self.try_it_out_plugin_url,
                    try_it_out_path=self.try_it_out_path,
                )
                cached = without_remote_icons(html).encode()
            return AsgiResponse(cached, 200, {"Content-Type": "text/html; charset=utf-8"})

        return docs


def without_remote_icons(html: str) -> str:
    """`html` with every `<link rel="icon" href="http(s)://…">` replaced by one `NO_FAVICON`."""
    stripped, count = _REMOTE_ICONS.subn("", html)
    if count == 0:
        return html
    return stripped.replace("<head>", f"<head>\n        {NO_FAVICON}", 1)


_warned: set[str] = set()


def _warn_cdn(page: str) -> None:
    """Log once per process and page that `page` falls back to a CDN."""
    if page not in _warned:
        _warned.add(page)
        log.warning(
            "docs assets not installed under %s (run scripts/setup.sh): %s loads its JS/CSS from a CDN",
            NODE_MODULES,
            page,
        )


def asyncapi_route(path: str, assets: DocsAssets | None = None) -> AsyncAPIRoute:
    """The AsyncAPI page at `path` (+ `path.json`), without try-it-out, on local assets if installed."""
    assets = assets or DocsAssets()
    urls: dict[str, Any] = {}
    if assets.asyncapi_offline:
        urls = {"asyncapi_js_url": f"{ASSETS_PATH}/asyncapi.js", "asyncapi_css_url": f"{ASSETS_PATH}/asyncapi.css"}
    else:
        _warn_cdn(path)
    return OfflineAsyncAPIRoute(path, try_it_out_path=None, **urls)


def add_docs_routes(api: FastAPI, docs_path: str, assets: DocsAssets | None = None) -> None:
    """Serve `/docs/assets/<name>` and Swagger UI at `docs_path` for `api.openapi_url`.

    `api` must be built with `docs_url=None` (this replaces FastAPI's CDN-based page)."""
    assets = assets or DocsAssets()
    offline = assets.swagger_offline
    if not offline:
        _warn_cdn(docs_path)
    swagger_urls: dict[str, Any] = (
        {
            "swagger_js_url": f"{ASSETS_PATH}/swagger-ui-bundle.js",
            "swagger_css_url": f"{ASSETS_PATH}/swagger-ui.css",
            "swagger_favicon_url": f"{ASSETS_PATH}/swagger-favicon.png",
        }
        if offline
        else {}
    )

    @api.api_route(f"{ASSETS_PATH}/{{name}}", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        file = assets.path(name)
        if file is None:
            raise HTTPException(status_code=404, detail=f"no docs asset {name!r}")
        return FileResponse(file, media_type=ASSETS[name][1], headers={"Cache-Control": "public, max-age=3600"})

    @api.get(docs_path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root_path = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root_path + str(api.openapi_url),
            title=f"{api.title} - Swagger UI",
            swagger_ui_parameters={"validatorUrl": None},
            **swagger_urls,
        )

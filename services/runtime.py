"""What every service process shares: transport, store, outbox, HTTP endpoints.

A service module's `create_service(settings)` builds a new `Service`, registers its handlers
with `subscribe` and the channels it writes with `publishes`, and adds its own HTTP routes to
`service.api`; its `create_app(settings)` is that service's `app`. The module's `service` and
`app` (for `faststream run services.<name>:app`) are built at first use, from `get_settings()`
(`default_attribute`): importing a service module builds nothing.

HTTP contract of every service: `/health` (200 while the process runs), `/ready`
(200 when broker and store answer, the consumed channels can be read and the outbox publishes,
else 503), `/metrics` (Prometheus text),
`/docs/asyncapi` + `/docs/asyncapi.json` (AsyncAPI, no try-it-out), and
`/docs/openapi` + `/docs/openapi.json` for the HTTP API; both pages load their JS/CSS
from `/docs/assets/` when installed locally (`services.docs`). Request bodies over
64 KiB get 413, declared or streamed; request heads are capped and slow requests timed out
by the HTTP server (`services.http_limits`). Admin routes depend on `Service.require_admin`.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream.asgi import AsgiFastStream
from faststream.asgi.types import Receive, Scope, Send
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from brokers import DeadLetter, Subscription, create_transport, redacted
from config import Settings, get_settings
from services.docs import add_docs_routes, asyncapi_route
from services.events import CHANNEL_EVENTS, CONSUMERS
from services.http_limits import SERVER_OPTIONS
from services.outbox import Outbox
from services.store import Database
from services.tracing import configure_logging, new_trace_context, trace_headers, tracer_provider

MAX_BODY_BYTES = 64 * 1024
UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})
TRACE_KEYS = frozenset({b"traceparent", b"tracestate"})
READY_TIMEOUT_S = 2.0
LAG_TIMEOUT_S = 3.0
DRAIN_TIMEOUT_S = 10.0
ADMIN_TOKEN_MIN_CHARS = 16
ADMIN_SCHEME = "adminToken"

log = logging.getLogger("switchboard")

admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=ADMIN_SCHEME,
    description=f"`Authorization: Bearer <ADMIN_TOKEN>` (admin routes; ADMIN_TOKEN of at least {ADMIN_TOKEN_MIN_CHARS} characters)",
)


STARTUP_FAILURE_EXIT_S = 5.0
"""A service whose startup failed (e.g. a consumer group it cannot join) exits with status 3 at the
latest this long after: a thread left behind by the aborted startup must not keep it alive, idle
and answering nothing, where a supervisor would never restart it."""


def _exit_if_startup_fails(send: Send) -> Send:
    async def watched(message: Any) -> None:
        if message.get("type") == "lifespan.startup.failed":
            _exit_soon(message.get("message", ""))
        await send(message)

    return watched


def _exit_soon(reason: str) -> None:
    """The lifespan failed: exit with status 3 within STARTUP_FAILURE_EXIT_S, whatever is left running."""
    log.critical("lifespan failed, exiting with status 3: %s", reason)
    timer = threading.Timer(STARTUP_FAILURE_EXIT_S, os._exit, (3,))
    timer.daemon = True
    timer.start()


class ServiceApp(AsgiFastStream):
    """FastStream's ASGI app (lifespan, AsyncAPI) with every other path served by FastAPI."""

    def __init__(
        self,
        *args: Any,
        http: Callable[[Scope, Receive, Send], Awaitable[None]],
        defaults: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._http = http
        self._defaults = defaults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, _exit_if_startup_fails(send))
        except Exception as exc:
            _exit_soon(f"{type(exc).__name__}: {exc}")
            raise

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
            return
        await super().not_found(scope, receive, send)

    async def run(self, log_level: int = logging.INFO, run_extra_options: dict[str, Any] | None = None) -> None:
        options = {**self._defaults, **(run_extra_options or {})}
        await super().run(log_level, options)


class BodyLimit:
    """ASGI middleware: 413 for request bodies over `limit` bytes, declared or streamed."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, self.limit)


class TraceContext:
    """ASGI middleware: each API request (not /health, /ready, /metrics) runs in a server span
    continuing the caller's `traceparent`, or in a new trace; the response carries it back.
    (Plain ASGI: FastAPI's `@middleware("http")` costs a task and a streamed response per request.)"""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], provider: trace.TracerProvider | None
    ) -> None:
        self.app = app
        self.recording = provider is not None
        self.tracer = (provider or trace.NoOpTracerProvider()).get_tracer("switchboard.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or () if k in TRACE_KEYS}
        parent = propagate.extract(carrier)
        if not self.recording and not trace.get_current_span(parent).get_span_context().is_valid:
            parent = new_trace_context()
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER):
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in trace_headers().items()]

            async def send_with_trace(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                await send(message)

            await self.app(scope, receive, send_with_trace)


class _BodyTooLarge(HTTPException):
    """Raised by BodyLimit's receive. An HTTPException, so that FastAPI, which answers 400 to any
    other error raised while it reads a body, lets it through to its handler: 413, same body."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body exceeds {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's errors with a dotted `field` path (`items.0.quantity`) added."""
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        errors.append({"field": ".".join(loc) or "body", "message": err.get("msg", ""), "type": err.get("type", "")})
    return errors


class ErrorBody(BaseModel):
    """Every error other than 422."""

    detail: str = Field(examples=["request body exceeds 65536 bytes"])


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the failing field; `body` for the body as a whole")
    message: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: FastAPI's errors (`loc`, `msg`, `type`) and the same as `errors[].field` paths."""

    detail: list[dict[str, Any]]
    errors: list[FieldError]


ERROR_ANSWERS: dict[str, tuple[str, type[BaseModel]]] = {
    "400": ("body is not UTF-8 text", ErrorBody),
    "413": (f"body over {MAX_BODY_BYTES // 1024} KiB ({MAX_BODY_BYTES} bytes), declared or streamed", ErrorBody),
    "422": ("invalid body, path or query; `errors[].field` names the failing field", ValidationErrorBody),
    "401": ("no bearer token (answered with `WWW-Authenticate: Bearer`)", ErrorBody),
    "403": (
        f"wrong token, or the admin routes are disabled (ADMIN_TOKEN unset, blank or under {ADMIN_TOKEN_MIN_CHARS} characters)",
        ErrorBody,
    ),
}


def declare_error_answers(spec: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document list every error an operation can answer, with its real body:
    400 and 413 where there is a request body (`BodyLimit`, FastAPI's body parsing), our 422
    body wherever FastAPI declares its own (`_invalid` adds `errors`), 401 and 403 on admin
    operations (`require_admin`), and `{"detail": …}` as the body of a route's own 4xx."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for body_model in (ErrorBody, ValidationErrorBody):
        schema = body_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[body_model.__name__] = schema
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            codes = ["400", "413", "422"] if "requestBody" in operation else []
            codes += ["422"] if "422" in responses else []
            if any(ADMIN_SCHEME in requirement for requirement in operation.get("security", ())):
                codes += ["401", "403"]
            for code in codes:
                description, model = ERROR_ANSWERS[code]
                entry = responses.setdefault(code, {"description": description})
                if entry.get("description") == "Validation Error":  # FastAPI's default
                    entry["description"] = description
                entry["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
                if code == "401":
                    entry["headers"] = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}
            for code, entry in responses.items():  # a route's own 4xx (404, 409): HTTPException's body
                if code.startswith("4") and "content" not in entry:
                    entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, now unreferenced
        others = {k: v for k, v in schemas.items() if k != name}
        if f'"#/components/schemas/{name}"' not in json.dumps([spec.get("paths"), others]):
            schemas.pop(name, None)
    return spec


def allowed_methods(api: FastAPI, scope: Scope) -> list[str]:
    """The methods of every route of `api` whose path matches the request's, sorted."""
    methods: set[str] = set()
    for route in api.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def usable_admin_token(token: str | None) -> str | None:
    """ADMIN_TOKEN if it enables the admin routes: set, not blank, at least 16 characters."""
    if token is None or not token.strip() or len(token) < ADMIN_TOKEN_MIN_CHARS:
        return None
    return token


def _freeze_startup_objects() -> None:
    """Take everything alive after startup (modules, classes, the FastAPI and FastStream wiring:
    ~100k objects) out of the cyclic collector's view. A full collection scans every tracked
    object: during load one cost 35–40 ms in the order and inventory services, a pause that
    showed as p99 POST → RESERVED stalls of 50–100 ms. Objects created later are collected
    as usual."""
    gc.collect()
    gc.freeze()


def table_name(service: str, name: str) -> str:
    """The store table `name` of `service` (`order_orders`): the same whatever the settings."""
    return f"{service}_{name}"


_defaults: dict[str, Service] = {}


def default_attribute(module: str, name: str, create_service: Callable[[], Service]) -> Any:
    """The module `__getattr__` (PEP 562) of a service module: its `service`, built by
    `create_service()` at the first access and kept, and that service's `app`."""
    if name not in ("service", "app"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if module not in _defaults:
        try:
            _defaults[module] = create_service()
        except AttributeError as exc:  # getattr's caller (`faststream run`) would report a missing `app`
            raise RuntimeError(f"building {module}.{name} failed: {exc!r}") from exc
    service = _defaults[module]
    return service if name == "service" else service.app


class Service:
    """One service process (see module docstring)."""

    def __init__(self, name: str, *, title: str, description: str, settings: Settings | None = None) -> None:
        self.name = name
        self.service_name = f"{name}-service"
        self.settings = settings or get_settings()
        self.consumer = self.settings.consumer_name(name)
        """Kafka group, RabbitMQ queue owner, NATS durable: `<name>-service` unless CONSUMER_NAMES names it."""
        self.published: list[str] = []
        self.dead_letters_heard: list[str] = []
        """Contract channels this service publishes / whose dead letters it listens to (broker grants:
        `brokers.permissions`)."""
        configure_logging(self.settings.log_level)
        self._subscribed = False
        self.registry = CollectorRegistry()
        self.tracer_provider = tracer_provider(self.service_name, self.settings.otel_exporter_otlp_endpoint)
        self.transport = create_transport(
            self.settings, self.registry, app_name=self.service_name, tracer_provider=self.tracer_provider
        )
        self.db = Database(self.settings.database_url_for(name))
        self.outbox = Outbox(self.db, self.transport, self.table("outbox"), self._channel_names())
        self.schema: list[str] = [*self.outbox.ddl()]
        self.api = FastAPI(
            title=title,
            description=description,
            docs_url=None,  # Swagger UI on locally served assets: services.docs
            openapi_url="/docs/openapi.json",
            redoc_url=None,
        )
        add_docs_routes(self.api, "/docs/openapi")
        self._add_common_routes()
        self._honest_openapi()
        self.app = ServiceApp(
            *([] if self.transport.broker is None else [self.transport.broker]),  # None: it runs its own readers
            http=BodyLimit(TraceContext(self.api, self.tracer_provider), MAX_BODY_BYTES),
            # no uvicorn access log: each service logs what it did with a request, with its trace id
            # (a string: FastStream parses run options as CLI text); SERVER_OPTIONS: the request head
            # cap and request timeout (services.http_limits)
            defaults={
                "port": self.settings.port_for(name),
                "host": self.settings.http_host,
                "access_log": "false",
                **SERVER_OPTIONS,
            },
            asyncapi_path=asyncapi_route("/docs/asyncapi"),
            on_startup=[self._on_startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            after_shutdown=[self._after_shutdown],
        )
        self.app.schema.title = f"Switchboard {title}"  # type: ignore[attr-defined]

    # --- wiring --------------------------------------------------------------------
    def table(self, name: str) -> str:
        return table_name(self.name, name)

    def channel(self, contract_name: str) -> str:
        return self.settings.channel(contract_name)

    def _channel_names(self) -> dict[str, str]:
        return {name: self.channel(name) for name in CHANNEL_EVENTS}

    def subscribe(self, channel: str, handler: Callable[[Any], Awaitable[None]], model: Any, description: str) -> None:
        """`handler` runs once per message, in batches sharing one store transaction (each
        `db.transaction` inside it is a savepoint): see `brokers.Subscription` and `services.store`."""
        self.transport.subscribe(
            Subscription(
                self.channel(channel), self.consumer, handler, model, description, batch_scope=self._consumer_batch
            )
        )

    @asynccontextmanager
    async def _consumer_batch(self) -> AsyncIterator[None]:
        """A consumer batch: first wait for the outbox relay to catch up (flow control, see
        `Outbox.caught_up`), then one store transaction around the batch."""
        await self.outbox.caught_up()
        async with self.db.batch():
            yield

    def counter(self, name: str, documentation: str, *labels: str) -> Callable[..., None]:
        """A domain counter on /metrics, labelled with `broker` like every other series;
        returns `inc(**labels)` (called per message: each label set's child is looked up once)."""
        metric = Counter(name, documentation, ("broker", *labels), registry=self.registry)
        broker = self.transport.label
        children: dict[tuple[tuple[str, str], ...], Any] = {}

        def inc(**values: str) -> None:
            key = tuple(values.items())
            child = children.get(key)
            if child is None:
                child = children[key] = metric.labels(broker=broker, **values)
            child.inc()

        return inc

    def listen_dead_letters(self, channel: str, handler: Callable[[DeadLetter], Awaitable[None]]) -> None:
        """`handler` sees every message dead-lettered from `channel`, which stays on the DLT."""
        self.dead_letters_heard.append(channel)
        self.transport.listen_dead_letters(self.channel(channel), self.consumer, handler)

    def publishes(self, channel: str, model: Any, description: str) -> None:
        self.published.append(channel)
        self.transport.declare_publisher(self.channel(channel), model, description)
        for service in CONSUMERS.get(channel, ()):
            self.transport.watch_lag(self.channel(channel), self.settings.consumer_name(service))

    # --- lifecycle -----------------------------------------------------------------
    async def _on_startup(self) -> None:
        if self.transport.broker is None:  # e.g. `memory`: its channels live inside one process
            raise RuntimeError(
                f"BROKER={self.settings.broker} keeps its channels inside one process (for tests); "
                "a service process needs a broker the other services reach"
            )
        self._warn_if_admin_disabled()
        await self.db.connect(self.schema)
        await self.transport.connect()
        await self.transport.start_extras()
        self.outbox.start()  # publishing needs only the connection, not the subscribers

    async def _after_startup(self) -> None:
        _freeze_startup_objects()
        self._subscribed = True
        log.info("%s ready on %s (broker %s)", self.service_name, redacted(self.transport.url), self.transport.label)

    async def _on_shutdown(self) -> None:
        try:  # settle what was handled while the connection is still open
            await asyncio.wait_for(self.transport.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("messages still settling after %.0f s; the broker redelivers them", DRAIN_TIMEOUT_S)
        await self.outbox.stop()
        await self.transport.stop_extras()

    async def _after_shutdown(self) -> None:
        """Subscribers have stopped (they may use the store until then)."""
        await self.db.close()

    # --- common HTTP ---------------------------------------------------------------
    def _add_common_routes(self) -> None:
        api = self.api

        @api.exception_handler(RequestValidationError)
        async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
            """FastAPI's usual `detail` list (with `loc`), plus `errors[].field` as a dotted path."""
            detail = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
            return JSONResponse({"detail": detail, "errors": validation_errors(exc)}, status_code=422)

        @api.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
            """FastAPI's answer, except that a 405's `Allow` names every method of the path
            (Starlette's names only those of the first route that matched the path)."""
            if exc.status_code == 405:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(api, request.scope))}
            return await http_exception_handler(request, exc)

        @api.get("/health", tags=["ops"], summary="200 while the process runs")
        async def health() -> dict[str, str]:
            return {"status": "UP", "service": self.service_name}

        @api.get(
            "/ready",
            tags=["ops"],
            responses={
                503: {"description": "not ready: the same body, `status` DOWN", "content": {"application/json": {}}}
            },
            summary="200 when broker and store answer, every consumed channel can be read, every subscriber "
            "started and the outbox relay is not stalled, else 503",
        )
        async def ready() -> JSONResponse:
            """`channels`: false while a consumed channel cannot be read (no leader, or the broker does not
            answer for it). `outbox`: false once this process's relay has been unable to publish for longer than
            OUTBOX_STALL_TIMEOUT_S (`outboxStalledSeconds`: for how long; 0 while another replica publishes)."""
            broker_ok, store_ok, channels_ok = await asyncio.gather(
                self.transport.ping(READY_TIMEOUT_S),
                self.db.ping(),
                self.transport.consumed_channels_available(READY_TIMEOUT_S),
            )
            stalled_s = self.outbox.stalled_for()
            outbox_ok = stalled_s <= self.settings.outbox_stall_timeout_s
            status = 200 if broker_ok and store_ok and channels_ok and self._subscribed and outbox_ok else 503
            body = {
                "status": "UP" if status == 200 else "DOWN",
                "broker": broker_ok,
                "store": store_ok,
                "channels": channels_ok,
                "subscribed": self._subscribed,
                "outbox": outbox_ok,
                "outboxStalledSeconds": round(stalled_s, 1),
            }
            return JSONResponse(body, status_code=status)

        @api.get(
            "/metrics",
            tags=["ops"],
            summary="Prometheus metrics",
            response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
        )
        async def metrics() -> Response:
            try:
                await asyncio.wait_for(self.transport.refresh_lag(), LAG_TIMEOUT_S)
            except TimeoutError:
                log.debug("lag refresh timed out")
            await self.outbox.refresh_gauges(self.registry, self.transport.label)  # not cancelled: a store call
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def _honest_openapi(self) -> None:
        """The document FastAPI generates, passed through `declare_error_answers` once."""
        generate = self.api.openapi

        def openapi() -> dict[str, Any]:
            if self.api.openapi_schema is None:
                self.api.openapi_schema = declare_error_answers(generate())
            return self.api.openapi_schema

        self.api.openapi = openapi  # type: ignore[method-assign]

    def _warn_if_admin_disabled(self) -> None:
        token = self.settings.admin_token
        if token is not None and usable_admin_token(token) is None:
            what = "blank" if not token.strip() else f"only {len(token)} characters long"
            log.warning(
                "ADMIN_TOKEN is set but %s: admin routes are disabled (they answer 403); it needs at least %d characters",
                what,
                ADMIN_TOKEN_MIN_CHARS,
            )

    def require_admin(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]) -> None:
        """Dependency of the admin routes: 401 (with `WWW-Authenticate: Bearer`) without a bearer
        token, 403 with a wrong one or while they are disabled (`usable_admin_token`). The token is
        compared in constant time."""
        token = usable_admin_token(self.settings.admin_token)
        if token is None:
            raise HTTPException(status_code=403, detail="admin routes are disabled")
        if credentials is None:
            raise HTTPException(status_code=401, detail="admin token required", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(status_code=403, detail="wrong admin token")

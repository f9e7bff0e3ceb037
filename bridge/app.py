"""The HTTP layer: an ASGI entry point that owns bridged requests, Quart for the rest.

Why not a Quart view for the bridged routes: a view returns its ``Response``
before the body streams, so a nursery opened in the view cannot own the stream,
and clients leaving between the upstream headers and the body's first step leaked
upstream connections (design.md). Here one task owns each request from its first
byte to its last: it reads the body (bounded by ``server.max_body_bytes``), hands
the request to the engine with a sink over ASGI ``send``, and reports the client
leaving through ``receive()``, which hypercorn's ``send()`` never does.

Everything that is not a provider route (health, readiness, metrics, and the 404
for unknown paths) is served by a small Quart-Trio app.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from bridge.config import ConfigError
from bridge.core.engine import Engine
from bridge.core.exchange import Request
from bridge.errors import PayloadTooLarge
from bridge.headers import bearer_token
from bridge.metrics import render
from bridge.providers import suggest_route
from bridge.reports import format_usage, parse_since, usage_records

__all__ = ["ASGIApp", "make_asgi_app"]

logger = logging.getLogger("bridge.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGISink:
    """A :class:`~bridge.core.exchange.ResponseSink` over one ASGI HTTP exchange."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )

    async def send(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, last: bytes = b"") -> None:
        self.ended = True
        await self._send({"type": "http.response.body", "body": last, "more_body": False})

    async def wait_disconnected(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytes | None:
    """The whole request body, or ``None`` if the client left while sending it."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit} byte limit")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit} byte limit")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _request_from_scope(scope: Scope, body: bytes) -> Request:
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        body=body,
        client_address=client[0] if client else "",
        scheme=scope.get("scheme", "http"),
    )


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _serve_provider_route(engine: Engine, scope: Scope, receive: Receive, send: Send) -> None:
    sink = ASGISink(receive, send)
    try:
        limit = engine.config.server.max_body_bytes
        body = await _read_body(receive, limit, _declared_length(scope))
        if body is None:
            return
        await engine.handle(_request_from_scope(scope, body), sink)
    except PayloadTooLarge as exc:
        await _plain_error(sink, 413, str(exc), close=True, engine=engine, path=scope["path"])
    except Exception:
        logger.exception("unexpected error serving %s %s", scope["method"], scope["path"])
        if not sink.started:
            message = "internal error in the gateway"
            await _plain_error(sink, 500, message, engine=engine, path=scope["path"])


async def _plain_error(
    sink: ASGISink, status: int, message: str, *, engine: Engine, path: str, close: bool = False
) -> None:
    body = engine.error_body(path, status, message)
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if close:
        # quart-trio/hypercorn-trio hang a keep-alive connection after an early 413
        # (stack-notes.md, gotcha 4): close it.
        headers.append(("connection", "close"))
    await sink.start(status, headers)
    await sink.end(body)


async def _refuse_websocket(engine: Engine, scope: Scope, send: Send) -> None:
    """Answer a WebSocket upgrade on a provider route with ``426 Upgrade Required``.

    Codex tries WebSocket mode on ``/responses`` first; a 426 makes it fall back to
    HTTP at once, where 404/405/500/501 cost it seven retries and about 6.5 s.
    """
    message = "WebSocket mode is not available on this gateway yet; use HTTP (SSE) streaming"
    body = engine.error_body(scope["path"], 426, message)
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1003})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 426, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def _control_app(engine: Engine) -> QuartTrio:
    app = QuartTrio("bridge")
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready or not by status code; the checks too, unless they need the metrics key
        (they name MCP servers, the journal backlog, the providers)."""
        checks = await engine.readiness()
        required = [c["ok"] for c in checks.values() if c.get("required", True)]
        optional = [c["ok"] for c in checks.values() if not c.get("required", True)]
        ready = all(required)
        status = 200 if ready else 503
        if not _may_observe(engine):
            return _json({"ready": ready}, status)
        state = "ok" if ready and all(optional) else "degraded" if ready else "unready"
        return _json({"ready": ready, "status": state, "checks": checks}, status)

    @app.get("/api/v1/usage")
    async def usage() -> Response:
        """The usage report of ``bridgectl usage``: ``since`` and ``by`` as there,
        ``format`` json (the default) or csv (a download)."""
        admin_key = engine.config.auth.admin_key
        if not admin_key:
            message = "the usage API is off: set auth.admin_key to enable it"
            return _json({"error": {"type": "not_found", "message": message}}, 404)
        presented = bearer_token(request.headers.get("authorization", ""))
        if not hmac.compare_digest(presented.encode(), admin_key.encode()):
            message = "the usage API needs 'Authorization: Bearer <auth.admin_key>'"
            return _json({"error": {"type": "authentication_error", "message": message}}, 401)
        by = tuple(dict.fromkeys(request.args.getlist("by") or ["user"]))
        fmt = request.args.get("format", "json")
        try:
            if unknown := sorted(set(request.args) - _USAGE_PARAMETERS):
                raise ValueError(
                    f"unknown parameter {unknown[0]!r}; the usage API takes"
                    f" {', '.join(sorted(_USAGE_PARAMETERS))}"
                )
            if fmt not in ("json", "csv"):
                raise ValueError(f"format must be json or csv, got {fmt[:40]!r}")
            since_text = request.args.get("since")
            since = parse_since(since_text, name="since") if since_text else None
            rows = await trio.to_thread.run_sync(lambda: engine.store.usage(since=since, by=by))
        except (ConfigError, ValueError) as exc:
            return _json({"error": {"type": "invalid_request_error", "message": str(exc)}}, 400)
        if fmt == "csv":
            return Response(
                format_usage(rows, by, "csv") + "\n",
                content_type="text/csv; charset=utf-8",
                headers={"content-disposition": 'attachment; filename="usage.csv"'},
            )
        return _json(
            {
                "since": since.isoformat() if since else None,
                "by": list(by),
                "rows": usage_records(rows, by),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        if not _may_observe(engine):
            key = "metrics_key" if engine.config.observability.metrics_key else "admin_key"
            section = "observability" if key == "metrics_key" else "auth"
            message = f"/metrics needs 'Authorization: Bearer <{section}.{key}>'"
            return _json({"error": {"type": "authentication_error", "message": message}}, 401)
        engine.metrics.recorder_observed(engine.recorder.stats)
        body, content_type = await trio.to_thread.run_sync(render, engine.metrics)
        return Response(body, content_type=content_type)

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        message = f"route not supported: {request.method} {request.path}"
        if meant := suggest_route(engine.providers.values(), request.path):
            provider, path = meant
            base = f"{request.scheme}://{request.host}{provider.prefix}"
            message += f"; did you mean {path}? (the base URL is {base})"
        return _json({"error": {"type": "not_found", "message": message}}, 404)

    @app.errorhandler(405)
    async def not_allowed(_: Exception) -> Response:
        message = f"method not allowed: {request.method} {request.path}"
        return _json({"error": {"type": "method_not_allowed", "message": message}}, 405)

    @app.after_request
    async def close_after_early_errors(response: Response) -> Response:
        if response.status_code in (408, 413):
            response.headers["Connection"] = "close"
        return response

    return app


def _may_observe(engine: Engine) -> bool:
    """Whether this request may read ``/metrics`` and the ``/readyz`` checks: always,
    unless ``observability.metrics_auth`` asks for the metrics key (user ids, models and
    clients are in the labels)."""
    if not engine.config.observability.metrics_auth:
        return True
    presented = bearer_token(request.headers.get("authorization", ""))
    return hmac.compare_digest(presented.encode(), engine.config.metrics_key.encode())


_USAGE_PARAMETERS = frozenset({"since", "by", "format"})


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, content_type="application/json")


def make_asgi_app(engine: Engine) -> ASGIApp:
    """The gateway's ASGI application over ``engine``."""
    control = _control_app(engine)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and engine.owns(scope["path"]):
            await _serve_provider_route(engine, scope, receive, send)
        elif scope["type"] == "websocket" and engine.owns(scope["path"]):
            await _refuse_websocket(engine, scope, send)
        else:
            await control(scope, receive, send)  # type: ignore[arg-type]

    return app

"""The engine: routes requests to interceptions and passthrough relays.

An :class:`Engine` holds what lives as long as the gateway: the configuration,
one upstream connection pool per provider, and the recorder. It serves any number
of requests concurrently; each request is owned by the task that calls
:meth:`Engine.handle`, from its first byte to its last.

A request is decided on in two steps: :meth:`Engine.admit` looks only at its head
(route, method, the address's authentication failures, credentials), so the HTTP
layer can refuse a request before reading a byte of its body; :meth:`Engine.handle`
then serves it, admitting it first itself when given no admission (embedding).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from bridge.config import Config, mask_url
from bridge.core.exchange import Request, ResponseSink
from bridge.core.interception import RECORD_DEADLINE, Interception, Services, intercept
from bridge.core.observer import Observer
from bridge.core.passthrough import passthrough
from bridge.dialects import DIALECTS
from bridge.dialects.providers import Credential, Provider, Route, RouteKind
from bridge.errors import (
    BridgeError,
    ClientError,
    GatewayUnavailable,
    NotFound,
    TooManyFailures,
    Unauthorized,
)
from bridge.identity.auth import Actor, FailureLimiter, Identity, identify, identity_headers
from bridge.identity.keys import KEY_TOUCH_INTERVAL, KeyStore, looks_like_gateway_key
from bridge.recording.recorder import Recorder
from bridge.recording.records import CredentialKind, PassthroughCall, new_id, utcnow
from bridge.recording.store import Store, StoreError
from bridge.services.breaker import Breakers, CircuitBreaker, StateChange
from bridge.services.mcp import ToolHub
from bridge.services.resilience import KeyPool
from bridge.services.upstream import UpstreamClient
from bridge.telemetry.apidump import APIDump
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import SPAN_PASSTHROUGH, Tracer

__all__ = ["Admission", "Engine"]


logger = logging.getLogger("bridge.engine")

MAX_COUNTED_ADDRESSES = 65_536
"""Client addresses :attr:`Engine.auth_failures` keeps counts for, at most."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What :meth:`Engine.admit` decided from a request's head."""

    route: Route
    identity: Identity


class Engine:
    """Routes, authenticates and runs requests.

    Create it with :func:`~bridge.core.wiring.open_engine`, which also opens what it uses.
    """

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        store: Store,
        upstreams: dict[str, UpstreamClient],
        hub: ToolHub | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics(config.observability.metrics_prefix)
        """The gateway's Prometheus metrics."""
        self.tracer = tracer or Tracer()
        dump_dir = config.observability.dump_dir
        self.dump = APIDump(Path(dump_dir)) if dump_dir else None
        """The API dump, when ``observability.dump_dir`` is set."""
        self.hub = hub
        """The MCP tool hub, if any MCP server is configured."""
        self.recorder = recorder
        self.store = store
        self.providers = {p.name: Provider(p) for p in config.providers}
        self.breakers = Breakers(on_change=self._breaker_changed)
        """One circuit breaker per provider, endpoint and model (for providers that opt in)."""
        self.pools = {
            p.name: KeyPool(
                p.all_keys, clock=trio.current_time, cooldown=p.key_cooldown, name=p.name
            )
            for p in config.providers
            if p.all_keys
        }
        """Each provider's centralized keys, used round-robin with failover."""
        self._breaker_settings = {
            p.name: p.circuit_breaker for p in config.providers if p.circuit_breaker is not None
        }
        self._upstreams = upstreams
        self._strip = identity_headers(config.auth)
        self.inflight = 0
        """Interceptions and passthrough relays under way."""
        self._idle = trio.Event()
        self._idle.set()
        self.auth_failures: Counter[str] = Counter()
        """Refused credentials per client address (for metrics and abuse detection)."""
        self.failure_limiter = FailureLimiter(
            config.auth.failure_rate, config.auth.failure_burst, clock=trio.current_time
        )
        """Answers 429 to an address that failed authentication too often."""
        self._trusted = tuple(ipaddress.ip_network(n) for n in config.server.trusted_proxies)
        self._touched: dict[str, float] = {}
        observer = Observer(self.metrics, self.tracer)
        self._services = {
            name: Services(
                upstream=upstream,
                recorder=recorder,
                hub=hub,
                pool=self.pools.get(name),
                observer=observer,
                dump=self.dump,
            )
            for name, upstream in upstreams.items()
        }
        """What the interceptions of each provider use (built once, shared by them)."""

    async def _identify(self, request: Request) -> Identity:
        """Who sent ``request``: its own actor (embedding), or by the auth mode.

        An address out of authentication failures gets :class:`TooManyFailures` before
        its credentials are looked at, whatever they are.
        """
        if request.actor is not None:
            return Identity(request.actor)
        address = request.client_address or "unknown"
        if wait := self.failure_limiter.retry_after(address):
            raise TooManyFailures(
                "too many failed authentications from your address: check the gateway key"
                " you send, and retry after the time in Retry-After",
                max(1, math.ceil(wait)),
            )
        try:
            return await identify(self.config.auth, request.headers, self._find_actor)
        except Unauthorized as exc:
            self.auth_failures[address] += 1
            if len(self.auth_failures) > MAX_COUNTED_ADDRESSES:
                # Addresses come from strangers: forget the one counted first.
                del self.auth_failures[next(iter(self.auth_failures))]
            self.failure_limiter.failed(address)
            self.metrics.auth_failure("missing" if exc.missing else "invalid")
            raise

    async def _find_actor(self, secret: str) -> Actor | None:
        """The actor of a gateway key; the key's last use is noted at most once a minute."""
        if not looks_like_gateway_key(secret) or not isinstance(self.store, KeyStore):
            return None
        store = self.store
        try:
            key = await trio.to_thread.run_sync(store.find_key, secret)
            if key is None:
                return None
            now = trio.current_time()
            if now - self._touched.get(key.id, -math.inf) >= KEY_TOUCH_INTERVAL:
                self._touched[key.id] = now
                await trio.to_thread.run_sync(store.touch_key, key.id, utcnow())
        except StoreError as exc:
            logger.warning("cannot check a gateway key: %s", exc)
            raise GatewayUnavailable(
                "the gateway cannot check its keys right now (its database is unavailable);"
                " retry shortly"
            ) from None
        return Actor(key.user, dict(key.metadata))

    @staticmethod
    def _credential(route: Route, request: Request, identity: Identity) -> Credential:
        """The provider key: the client's own (BYOK), or the provider's when the client's
        API-key headers held its gateway key."""
        provider = route.provider
        if identity.central:
            if not provider.central_key:
                raise Unauthorized(
                    f"{provider.name} needs your own token in 'Authorization: Bearer' (for"
                    " Copilot, your GitHub token): send the gateway key in X-Bridge-Key"
                )
            credential = provider.centralized(provider.config.key)
        else:
            credential = provider.credential(list(request.headers))
        if credential.kind is CredentialKind.CENTRALIZED:
            _require_central_key(provider)
        return credential

    def _trusted_peer(self, address: str) -> bool:
        """Whether ``address`` is in ``server.trusted_proxies``."""
        if not self._trusted or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def _breaker_changed(self, change: StateChange) -> None:
        _log_state_change(change)
        provider, endpoint, model = change.name.split(":", 2)
        self.metrics.breaker_changed(
            provider=provider, endpoint=endpoint, model=model, state=change.to_state.gauge
        )

    def _breaker(self, route: Route, model: str) -> CircuitBreaker | None:
        settings = self._breaker_settings.get(route.provider.name)
        if settings is None:
            return None
        return self.breakers.get(route.provider.name, route.suffix, model, settings)

    def owns(self, path: str) -> bool:
        """Whether ``path`` starts with a provider's route prefix."""
        name = path.lstrip("/").partition("/")[0]
        return name in self.providers

    def error_body(self, path: str, status: int, message: str) -> bytes:
        """An error body in the shape of the provider owning ``path``."""
        provider, _ = self.route(path)
        return self._error_dialect(provider).error_body(status, message)

    async def readiness(self) -> dict[str, dict[str, object]]:
        """Named checks for ``/readyz``: the recorder and its store, the providers, the
        centralized keys and the MCP servers.

        Each has ``ok``; one with ``"required": False`` (keys, MCP) makes the gateway
        *degraded* when it fails, not unready: it still serves.
        """
        checks: dict[str, dict[str, object]] = {}
        try:
            await trio.to_thread.run_sync(self.store.check)
            store_ok, detail = self.recorder.ready(), "writing"
        except Exception as exc:
            store_ok, detail = False, f"store unusable: {type(exc).__name__}"
        stats = self.recorder.stats
        if stats.journal_pending:
            detail = "spilling to the journal" if not store_ok else "replaying the journal"
        checks["recorder"] = {
            "ok": store_ok,
            "detail": detail,
            "queued": stats.queued,
            "spilled": stats.spilled,
            "journal_pending": stats.journal_pending,
            "journal_records": stats.journal_records,
            "journal_bytes": stats.journal_bytes,
        }
        configured = [p.name for p in self.config.providers]
        checks["providers"] = {"ok": bool(configured), "detail": ", ".join(configured) or "none"}
        if self.pools:
            # A key the upstream refused stays in use when it is the last one, so this
            # never makes the gateway unready; it tells an operator which key to replace.
            disabled = [
                f"{name} {key['hint']}"
                for name, pool in self.pools.items()
                for key in pool.status()
                if key["state"] == "disabled"
            ]
            checks["keys"] = {
                "ok": not disabled,
                "required": False,
                "detail": "refused by the upstream (401): " + ", ".join(disabled)
                if disabled
                else "every key usable",
                "providers": {
                    name: {"rejected_401": pool.rejections, "keys": pool.status()}
                    for name, pool in self.pools.items()
                },
            }
        if self.hub is not None:
            # A down MCP server does not make the gateway unready (its tools are just
            # absent), but it is not "ok" either: the gateway is degraded, and says why.
            servers = self.hub.status()
            down = [
                f"{name}: {info['last_error'] or 'not connected yet'}"
                for name, info in servers.items()
                if info["last_error"] is not None or not (info["connected"] or info["per_actor"])
            ]
            checks["mcp"] = {
                "ok": not down,
                "required": False,
                "detail": "; ".join(down) if down else "every server connected",
                "servers": servers,
            }
        return checks

    def route(self, path: str) -> tuple[Provider | None, Route | None]:
        """The provider owning ``path`` (by its first segment) and the route, if any."""
        provider = self.providers.get(path.lstrip("/").partition("/")[0])
        if provider is None:
            return None, None
        return provider, provider.route(path)

    async def admit(self, request: Request) -> Admission:
        """Decide on ``request`` from its head alone; its body is not looked at.

        Raises, in this order: :class:`NotFound` for no route, :class:`MethodNotAllowed`
        for anything but POST on a bridged route (it would be sent upstream as a billed
        POST), :class:`TooManyFailures` for an address out of authentication failures,
        :class:`Unauthorized` for missing or bad credentials, and
        :class:`GatewayUnavailable` when keys cannot be checked.
        """
        _, route = self.route(request.path)
        if route is None:
            raise NotFound(f"route not supported: {request.method} {request.path}")
        if route.kind is RouteKind.BRIDGED:
            route.check_method(request.method, request.path, writes=False)
        return Admission(route, await self._identify(request))

    async def handle(
        self, request: Request, sink: ResponseSink, admission: Admission | None = None
    ) -> None:
        """Serve one request to completion; ``admission`` is :meth:`admit`'s, if taken.

        Client mistakes get a 4xx in the provider's error shape; nothing raises out
        of here for a client's fault. Cancellation propagates (the caller owns it).
        """
        provider, _ = self.route(request.path)
        dialect = self._error_dialect(provider)
        self.inflight += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            if admission is None:
                admission = await self.admit(request)
            route, identity = admission.route, admission.identity
            actor = identity.actor
            strip = (*self._strip, *identity.strip)
            trusted_peer = self._trusted_peer(request.client_address)
            if route.kind is RouteKind.PASSTHROUGH:
                await self._passthrough(route, request, sink, identity, strip, dialect)
                return
            assert route.dialect is not None
            bridged = DIALECTS[route.dialect]
            parsed = bridged.parse_request(request.body)
            tools = await self.hub.tools_for(actor) if self.hub is not None else ()
            ix = Interception(
                id=new_id(),
                route=route,
                request=request,
                actor=actor,
                parsed=parsed,
                dialect=bridged,
                credential=self._credential(route, request, identity),
                services=self._services[route.provider.name],
                strip_headers=strip,
                trusted_peer=trusted_peer,
                tools=tools,
                breaker=self._breaker(route, parsed.model),
                max_iterations=self.config.mcp.max_iterations,
                call_timeout=self.config.mcp.call_timeout,
                max_retries=route.provider.config.max_retries,
                client_write_timeout=self.config.server.client_write_timeout,
            )
            await intercept(ix, sink, ping_interval=self.config.server.ping_interval)
        except (ClientError, GatewayUnavailable) as exc:
            await _respond(sink, dialect, exc)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def _passthrough(
        self,
        route: Route,
        request: Request,
        sink: ResponseSink,
        identity: Identity,
        strip: tuple[str, ...],
        dialect: ErrorShape,
    ) -> None:
        """Relay one passthrough request, or refuse its method (405); record it either way.

        The credential is chosen as for a bridged route; a request that needs none (a
        Copilot discovery document) goes without. Writes are allowed when the user's own
        key goes upstream (the objects are theirs) or the provider has
        ``passthrough_writes``.
        """
        provider = route.provider
        credential: Credential | None = None
        watched = _StatusSink(sink)
        started_at, started = utcnow(), time.perf_counter()
        try:
            try:
                credential = self._credential(route, request, identity)
            except Unauthorized:
                if provider.central_key:
                    raise  # the gateway has no key of this provider to send
                # A provider whose users bring their own token: without one, nothing goes
                # upstream (Copilot's discovery documents need none).
            own_key = credential is not None and credential.kind is CredentialKind.BYOK
            writes = own_key or provider.config.passthrough_writes
            route.check_method(request.method, request.path, writes=writes)
            self.metrics.passthrough(
                provider=provider.name, route=route.template, method=request.method
            )
            headers = provider.upstream_headers(
                list(request.headers),
                credential,
                strip=strip,
                client_address=request.client_address,
                scheme=request.scheme,
                trusted_peer=self._trusted_peer(request.client_address),
            )
            span = {
                "passthrough_url": route.suffix,
                "passthrough_upstream_url": mask_url(route.upstream_url("")),
                "passthrough_method": request.method,
            }
            with self.tracer.span(SPAN_PASSTHROUGH, span):
                await passthrough(
                    route,
                    request,
                    watched,
                    self._upstreams[provider.name],
                    headers=headers,
                    error_body=dialect.error_body,
                )
        except ClientError as exc:
            await _respond(watched, dialect, exc)
        finally:
            call = PassthroughCall(
                initiator_id=identity.actor.id,
                provider=provider.type,
                provider_name=provider.name,
                method=request.method,
                path=request.path,
                status=watched.status,
                duration_ms=round((time.perf_counter() - started) * 1000),
                credential_kind=None if credential is None else credential.kind,
                credential_hint="" if credential is None else credential.hint,
                started_at=started_at,
            )
            with trio.move_on_after(RECORD_DEADLINE, shield=True):
                await self.recorder.record(call)

    async def wait_idle(self) -> None:
        """Return once no request is being served (every record of them is queued)."""
        while self.inflight:
            await self._idle.wait()

    def _error_dialect(self, provider: Provider | None) -> ErrorShape:
        if provider is None:
            return _GENERIC
        return DIALECTS[provider.error_dialect]


def _require_central_key(provider: Provider) -> None:
    """Refuse a request that would need the provider's own key when it has none.

    Sent upstream without a key, it would come back with the provider's "x-api-key header
    is required", which a client that sent its gateway key cannot make sense of.
    """
    if provider.central_key and not provider.config.all_keys:
        raise Unauthorized(
            f"the gateway has no {provider.name} key to send upstream: its operator must"
            f" set {provider.config.key_settings}; or bring your own provider key, with"
            " the gateway key in X-Bridge-Key"
        )


async def _respond(sink: ResponseSink, dialect: ErrorShape, exc: BridgeError) -> None:
    """Answer with ``exc`` in the provider's error shape, with the headers its status
    needs (``Allow`` for a 405, ``Retry-After``)."""
    status = exc.status_hint
    body = dialect.error_body(status, str(exc))
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    await sink.start(status, [*headers, *exc.headers])
    await sink.end(body)


class _StatusSink:
    """A sink that notes the status the client got, for the passthrough record."""

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self.status: int | None = None
        """The status sent, ``None`` until the response started."""

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        await self._sink.start(status, headers)
        self.status = status

    async def send(self, data: bytes) -> None:
        await self._sink.send(data)

    async def end(self, last: bytes = b"") -> None:
        await self._sink.end(last)

    async def wait_disconnected(self) -> None:
        await self._sink.wait_disconnected()


def _log_state_change(change: StateChange) -> None:
    provider, endpoint, model = change.name.split(":", 2)
    logger.info(
        "circuit breaker state change: provider=%s endpoint=%s model=%s from=%s to=%s",
        provider,
        endpoint,
        model,
        change.from_state.value,
        change.to_state.value,
    )


class ErrorShape(Protocol):
    """Anything that can shape an error body: every dialect can."""

    def error_body(self, status: int, message: str) -> bytes:
        """An error body for ``status`` with ``message``."""
        ...


class _GenericErrors:
    """Error shape for paths that belong to no provider."""

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"error": {"type": "not_found", "message": message}}).encode()


_GENERIC = _GenericErrors()

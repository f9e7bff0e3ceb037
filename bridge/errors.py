"""The errors of bridge, split by blame.

::

    BridgeError
    ├── ClientError            the client's request is wrong: a 4xx, never a 500
    │   ├── BadRequest         400: malformed JSON, wrong types, missing fields
    │   ├── Unauthorized       401: missing or bad credentials
    │   ├── NotFound           404: no such route
    │   ├── MethodNotAllowed   405: the route does not take this method (from this caller)
    │   ├── RequestTimeout     408: the body took longer than server.body_timeout
    │   ├── PayloadTooLarge    413: body over server.max_body_bytes
    │   ├── TooManyFailures    429: this address failed authentication too often
    │   └── NotSupported       501: a valid request for a feature bridge does not offer
    ├── GatewayUnavailable     503: the gateway cannot serve now (its database is down)
    │   └── GatewayBusy        503: bodies being held are at server.max_buffered_bytes
    └── UpstreamError          the provider failed us
        ├── UpstreamUnavailable    502: could not connect, connection reset, timed out
        │   └── UpstreamTimeout    504: the provider went silent past one of its timeouts
        ├── UpstreamProtocolError  502: the provider sent something we cannot read
        ├── CircuitOpen            503: the breaker of this provider/endpoint/model is open
        └── KeysExhausted          429: every centralized key of the provider is resting

    SetupError                 the gateway's own setup is at fault: the operator must act
    ├── ConfigError            the configuration is invalid (bridge.config)
    ├── StoreError             the recording database cannot be opened or used
    └── JournalError           the journal directory cannot be used

Every error carries ``status_hint``, and ``headers`` to send with it (``Allow``,
``Retry-After``); the HTTP status a client should see if the error
happens before the response has started (h11's ``error_status_hint``). After the
response has started, the dialect turns the error into the provider's in-stream
error event instead. Messages never contain secrets or tracebacks: they are shown to
clients as they are.

:class:`SetupError` is a sibling of :class:`BridgeError`, not a child: it happens at
start-up or in the operator's commands, never answers a client's request, and a handler
of request errors must not catch it. Each is re-exported by the module that raises it
(``bridge.config.ConfigError``, ``bridge.recording.StoreError``, ...).
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BridgeError",
    "CircuitOpen",
    "ClientError",
    "ConfigError",
    "GatewayBusy",
    "GatewayUnavailable",
    "JournalError",
    "KeysExhausted",
    "MethodNotAllowed",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "RequestTimeout",
    "SetupError",
    "StoreError",
    "TooManyFailures",
    "Unauthorized",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class BridgeError(Exception):
    """The root of bridge's own errors."""

    status_hint: int = 500

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Response headers the status needs (``Allow`` for a 405, ``Retry-After``)."""
        return []


class ClientError(BridgeError):
    """The request is at fault; the client gets a 4xx in its provider's error shape."""

    status_hint = 400


class BadRequest(ClientError):
    """The body or parameters are malformed (400)."""

    status_hint = 400


class Unauthorized(ClientError):
    """Credentials are missing or wrong (401).

    ``missing``: no credential was sent at all (rather than a wrong one); the
    ``auth_failures_total`` metric tells the two apart by it.
    """

    status_hint = 401

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class NotFound(ClientError):
    """No bridged or passthrough route matches (404)."""

    status_hint = 404


class MethodNotAllowed(ClientError):
    """The route exists but does not take this method, or not from this caller (405)."""

    status_hint = 405

    def __init__(self, message: str, allowed: tuple[str, ...] = ("POST",)) -> None:
        super().__init__(message)
        self.allowed = allowed
        """The methods the caller may use, sent as ``Allow`` (empty: none)."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``Allow``: the methods the caller may use."""
        return [("allow", ", ".join(self.allowed))]


class RequestTimeout(ClientError):
    """The request body did not arrive within ``server.body_timeout`` (408)."""

    status_hint = 408


class PayloadTooLarge(ClientError):
    """The request body is over ``server.max_body_bytes`` (413)."""

    status_hint = 413


class TooManyFailures(ClientError):
    """The client's address has used up its authentication failures for now (429)."""

    status_hint = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Whole seconds, sent to the client as ``Retry-After``."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``Retry-After``."""
        return [("retry-after", str(self.retry_after))]


class NotSupported(ClientError):
    """A well-formed request for something the gateway does not do (501)."""

    status_hint = 501


class GatewayUnavailable(BridgeError):
    """The gateway itself cannot serve the request right now, through no fault of the
    client or the provider: e.g. a gateway key cannot be checked while the database is
    down. Retrying later is the right move, hence 503 rather than 500 (or a false 401)."""

    status_hint = 503


class GatewayBusy(GatewayUnavailable):
    """The bodies the process holds are at ``server.max_buffered_bytes``: retry shortly."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """``Retry-After: 1``: bodies are let go as their requests end."""
        return [("retry-after", "1")]


class UpstreamError(BridgeError):
    """The provider could not be reached or misbehaved (502 before the stream starts)."""

    status_hint = 502


class UpstreamUnavailable(UpstreamError):
    """Connecting, writing or reading failed: refused, reset, timed out, closed early."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream went silent past one of the provider's timeouts (504 before the
    response started); the connection has been closed.

    A subclass of :class:`UpstreamUnavailable`: like a connection failure, a timeout
    before the response headers may be retried, and counts against the circuit breaker.
    """

    status_hint = 504


class UpstreamProtocolError(UpstreamError):
    """The provider's response could not be parsed (bad JSON, bad or oversized SSE)."""


class _RetryLater(UpstreamError):
    """An upstream refusal the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Whole seconds, sent to the client as ``Retry-After``."""


class CircuitOpen(_RetryLater):
    """The circuit breaker rejected the request: the upstream was not called (503)."""

    status_hint = 503


class KeysExhausted(_RetryLater):
    """Every centralized key is rate limited or disabled (429); BYOK never gets this."""

    status_hint = 429


class SetupError(Exception):
    """The gateway's own setup is wrong or unusable; the message says what to change."""


class ConfigError(SetupError):
    """The configuration is invalid; the message names the key, the bad value and the rule.

    Also raised by :meth:`bridge.config.Config.provider` for an unknown provider name, so
    that a caller choosing a provider by name gets the same "did you mean" help as a config
    file author.
    """


class StoreError(SetupError):
    """A store cannot be opened or used: a bad URL, an unreadable file, an unknown schema."""


class JournalError(SetupError):
    """The journal directory cannot be used."""

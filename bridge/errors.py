"""The errors of bridge, split by blame.

::

    BridgeError
    ├── ClientError            the client's request is wrong: a 4xx, never a 500
    │   ├── BadRequest         400: malformed JSON, wrong types, missing fields
    │   ├── Unauthorized       401: missing or bad credentials
    │   ├── NotFound           404: no such route
    │   ├── MethodNotAllowed   405: the route does not take this method (from this caller)
    │   ├── PayloadTooLarge    413: body over server.max_body_bytes
    │   └── NotSupported       501: a valid request for a feature bridge does not offer
    ├── GatewayUnavailable     503: the gateway cannot serve now (its database is down)
    └── UpstreamError          the provider failed us
        ├── UpstreamUnavailable    502: could not connect, connection reset, timed out
        ├── UpstreamProtocolError  502: the provider sent something we cannot read
        ├── CircuitOpen            503: the breaker of this provider/endpoint/model is open
        └── KeysExhausted          429: every centralized key of the provider is resting

Every error carries ``status_hint``, the HTTP status a client should see if the error
happens before the response has started (h11's ``error_status_hint``). After the
response has started, the dialect turns the error into the provider's in-stream
error event instead. Messages never contain secrets or tracebacks: they are shown to
clients as they are.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BridgeError",
    "CircuitOpen",
    "ClientError",
    "GatewayUnavailable",
    "KeysExhausted",
    "MethodNotAllowed",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "Unauthorized",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamUnavailable",
]


class BridgeError(Exception):
    """The root of bridge's own errors."""

    status_hint: int = 500


class ClientError(BridgeError):
    """The request is at fault; the client gets a 4xx in its provider's error shape."""

    status_hint = 400


class BadRequest(ClientError):
    """The body or parameters are malformed (400)."""

    status_hint = 400


class Unauthorized(ClientError):
    """Credentials are missing or wrong (401)."""

    status_hint = 401


class NotFound(ClientError):
    """No bridged or passthrough route matches (404)."""

    status_hint = 404


class MethodNotAllowed(ClientError):
    """The route exists but does not take this method, or not from this caller (405)."""

    status_hint = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed
        """The methods the caller may use, sent as ``Allow`` (empty: none)."""


class PayloadTooLarge(ClientError):
    """The request body is over ``server.max_body_bytes`` (413)."""

    status_hint = 413


class NotSupported(ClientError):
    """A well-formed request for something the gateway does not do (501)."""

    status_hint = 501


class GatewayUnavailable(BridgeError):
    """The gateway itself cannot serve the request right now, through no fault of the
    client or the provider: e.g. a gateway key cannot be checked while the database is
    down. Retrying later is the right move, hence 503 rather than 500 (or a false 401)."""

    status_hint = 503


class UpstreamError(BridgeError):
    """The provider could not be reached or misbehaved (502 before the stream starts)."""

    status_hint = 502


class UpstreamUnavailable(UpstreamError):
    """Connecting, writing or reading failed: refused, reset, timed out, closed early."""


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

"""bridge: an AI gateway on Trio.

It sits between AI clients and LLM providers, records per user the tokens,
prompts, tool calls and thoughts of every request, and owns each interception in
one Trio nursery. This module is the whole public API; everything else is private
and may change.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

from bridge.config import (
    AuthConfig,
    Config,
    ConfigError,
    ProviderConfig,
    RecordingConfig,
    ServerConfig,
    load_config,
)
from bridge.core.exchange import Request
from bridge.errors import (
    BadRequest,
    BridgeError,
    ClientError,
    GatewayUnavailable,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.identity.auth import ANONYMOUS, Actor
from bridge.recording.memory import MemoryStore
from bridge.recording.records import (
    CredentialKind,
    InterceptionEnded,
    InterceptionStarted,
    ModelThought,
    Outcome,
    PassthroughCall,
    PromptUsage,
    TokenUsage,
    ToolUsage,
)

if TYPE_CHECKING:
    from bridge.embed import Bridge, Response, StreamedResponse, open_bridge
    from bridge.process.server import serve

# The running parts (the engine, its HTTP face, the server) are imported on first use:
# the command line (``bridgectl keys``, ``bridgectl usage``, ``--help``) needs only the
# configuration and the stores, and loading the gateway, Quart, hypercorn and the MCP
# library took it from a tenth of a second to over two.
_LAZY: dict[str, str] = {
    "Bridge": "bridge.embed",
    "Response": "bridge.embed",
    "StreamedResponse": "bridge.embed",
    "open_bridge": "bridge.embed",
    "serve": "bridge.process.server",
}

__all__ = [
    "ANONYMOUS",
    "Actor",
    "AuthConfig",
    "BadRequest",
    "Bridge",
    "BridgeError",
    "ClientError",
    "Config",
    "ConfigError",
    "CredentialKind",
    "GatewayUnavailable",
    "InterceptionEnded",
    "InterceptionStarted",
    "MemoryStore",
    "ModelThought",
    "NotFound",
    "Outcome",
    "PassthroughCall",
    "PayloadTooLarge",
    "PromptUsage",
    "ProviderConfig",
    "RecordingConfig",
    "Request",
    "Response",
    "ServerConfig",
    "StreamedResponse",
    "TokenUsage",
    "ToolUsage",
    "Unauthorized",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamUnavailable",
    "load_config",
    "open_bridge",
    "serve",
]

__version__ = "0.1.0"


def _present(obj: Any) -> None:
    """Tracebacks and reprs say ``bridge.Config``, not where it happens to live."""
    if isinstance(obj, type) or callable(obj):
        with contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = "bridge"


def __getattr__(name: str) -> Any:
    """The names of :data:`_LAZY`, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    obj = getattr(importlib.import_module(module), name)
    _present(obj)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in __all__:
    if _name not in _LAZY:
        _present(globals()[_name])
del _name

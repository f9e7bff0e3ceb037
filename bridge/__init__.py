"""bridge: an AI gateway on Trio.

It sits between AI clients and LLM providers, records per user the tokens,
prompts, tool calls and thoughts of every request, and owns each interception in
one Trio nursery. This module is the whole public API; everything else is private
and may change.
"""

from __future__ import annotations

import contextlib

from bridge.auth import ANONYMOUS, Actor
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
from bridge.gateway import Bridge, Response, StreamedResponse, open_bridge
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
from bridge.server import serve

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

# Tracebacks and reprs say ``bridge.Config``, not where it happens to live.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = "bridge"
del _name, _obj

"""What OpenAI's Chat Completions and Responses APIs share: error shapes, prompts.

OpenAI errors are ``{"error": {"message", "type", "param", "code"}}``; upstream
errors are relayed with their status, content type and body unchanged.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.dialects.base import dumps

__all__ = ["error_body", "error_document", "last_text_part", "upstream_error"]

# OpenAI's error types by status, for errors the gateway itself makes.
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented",
}


def error_document(status: int, message: str) -> dict[str, Any]:
    """``{"error": {...}}`` for a gateway-made error with this status."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "service_unavailable" if status == 503 else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_body(status: int, message: str) -> bytes:
    """The encoded :func:`error_document`."""
    return dumps(error_document(status, message))


def upstream_error(status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
    """Upstream errors reach the client exactly as sent (status, content type, body)."""
    return content_type or "application/json", body


def last_text_part(parts: Any, kinds: tuple[str, ...] = ("text",)) -> str | None:
    """The text of the last content part whose type is in ``kinds``."""
    if not isinstance(parts, list):
        return None
    for part in reversed(parts):
        if isinstance(part, dict) and part.get("type") in kinds:
            text = part.get("text")
            return text if isinstance(text, str) else None
    return None

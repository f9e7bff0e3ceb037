"""The mock's own answers: the providers' error shapes (a refused key, a missing one), and
how many tool results a request carries (which answer of a scenario it gets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from bridge.mock.scenario import ReceivedRequest, ScenarioResponse, _encode

# --------------------------------------------------------------------------- error shapes


def _error_response(status: int, error_type: str, message: str) -> ScenarioResponse:
    """A response in Anthropic's error shape, for answers the mock makes up itself."""
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_mock",
    }
    return _encode(
        ScenarioResponse(status=status, headers=(("request-id", "req_mock"),), body=body),
        streaming=False,
    )


# Statuses the mock can answer for a key named in ``x-mock-key-status``, with their error types.
_KEY_ERRORS: Final = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def _key_refusal(request: ReceivedRequest, error: _ErrorShape) -> ScenarioResponse | None:
    """The error ``x-mock-key-status: <key>=<status>,...`` asks for the key presented, if any.

    Lets key-failover tests make one centralized key rate limited or revoked while the
    others work; a 429 carries ``retry-after: 30``.
    """
    rules = request.header("x-mock-key-status")
    if not rules:
        return None
    presented = request.header("x-api-key") or (request.header("authorization") or "")[7:]
    for rule in rules.split(","):
        key, _, status = rule.strip().rpartition("=")
        if key == presented and status.isdigit() and int(status) in _KEY_ERRORS:
            code = int(status)
            refusal = error(code, _KEY_ERRORS[code], f"key refused with {code} by the mock")
            if code == 429:
                headers = (*refusal.headers, ("retry-after", "30"))
                return _encode(replace(refusal, headers=headers, wire_headers=()), streaming=False)
            return refusal
    return None


def _openai_error_response(
    status: int, error_type: str, message: str, code: str | None = None
) -> ScenarioResponse:
    """A response in OpenAI's error shape, for answers the mock makes up on OpenAI routes."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return _encode(
        ScenarioResponse(status=status, headers=(("x-request-id", "req_mock"),), body=body),
        streaming=False,
    )


def _json_response(body: Any) -> ScenarioResponse:
    return _encode(
        ScenarioResponse(status=200, headers=(("request-id", "req_mock"),), body=body),
        streaming=False,
    )


_NOT_AUTHENTICATED: Final = _error_response(
    401, "authentication_error", "x-api-key header is required"
)
_OPENAI_NOT_AUTHENTICATED: Final = _openai_error_response(
    401,
    "invalid_request_error",
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
)

_ErrorShape = Callable[[int, str, str], ScenarioResponse]
"""Makes the mock's own error answers in the shape of the route's provider."""


# --------------------------------------------------------------------------- routing


def _tool_result_turns(body: dict[str, Any]) -> int:
    """How many request messages carry a ``tool_result`` block: the agentic-loop call index."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    turns = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") == "tool_result" for block in content
        ):
            turns += 1
    return turns


def _tool_messages(body: dict[str, Any]) -> int:
    """How many Chat Completions messages have role ``tool``: the agentic-loop call index."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")


def _tool_outputs(body: dict[str, Any]) -> int:
    """How many Responses input items are tool outputs: the agentic-loop call index.

    ``input`` may be a plain string (no items). A follow-up that relies on
    ``previous_response_id`` carries only the new outputs, so its index can exceed the
    scenario's list; the ``min(k, len - 1)`` cap then answers with the last response.
    """
    items = body.get("input")
    if not isinstance(items, list):
        return 0
    return sum(
        1
        for item in items
        if isinstance(item, dict)
        and item.get("type") in ("function_call_output", "custom_tool_call_output")
    )

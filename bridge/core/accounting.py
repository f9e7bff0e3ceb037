"""An interception's records: the started one, and those of each upstream response.

What the client asked for and what each turn used become records for the recorder (and,
through the observer, metrics). The ended record is written by the interception itself,
once it knows what the client got.
"""

from __future__ import annotations

from bridge.core.state import Interception
from bridge.dialects.base import TurnResult
from bridge.dialects.clients import guess_client, session_id
from bridge.protocol.headers import header_value
from bridge.recording.records import (
    InterceptionStarted,
    ModelThought,
    PromptUsage,
    Record,
    TokenUsage,
    ToolUsage,
)
from bridge.telemetry.tracing import (
    SPAN_RECORD_MODEL_THOUGHT,
    SPAN_RECORD_PROMPT_USAGE,
    SPAN_RECORD_TOKEN_USAGE,
    SPAN_RECORD_TOOL_USAGE,
)

__all__ = ["record_turn", "started_record"]


def started_record(ix: Interception) -> InterceptionStarted:
    """The interception's first record: who asked what, with which client and key."""
    headers = ix.request.headers
    client = guess_client(headers)
    user_agent = header_value(headers, "user-agent")
    return InterceptionStarted(
        id=ix.id,
        initiator_id=ix.actor.id,
        provider=ix.route.provider.type,
        provider_name=ix.route.provider.name,
        model=ix.parsed.model,
        streaming=ix.parsed.stream,
        client=client,
        user_agent=user_agent,
        credential_kind=ix.credential.kind,
        credential_hint=ix.credential.hint,
        session_id=session_id(client, headers, ix.parsed.session_hint),
        correlating_tool_call_id=ix.parsed.correlating_tool_call_id,
        metadata=dict(ix.actor.metadata),
    )


async def record_turn(ix: Interception, result: TurnResult) -> None:
    """Queue the records of one upstream response (also of a cut one)."""
    progress = ix.progress
    progress.turns.append(result)
    records: list[Record] = []
    if not progress.prompt_recorded and ix.parsed.prompt:
        progress.prompt_recorded = True
        records.append(PromptUsage(ix.id, result.response_id, ix.parsed.prompt))
    if result.usage is not None:
        records.append(TokenUsage.of(ix.id, result.response_id, result.usage))
    injected = ix.injected_names
    records.extend(
        ToolUsage(ix.id, result.response_id, call.name, call.id, call.input)
        for call in result.tool_calls
        if call.name not in injected
    )
    records.extend(ModelThought(ix.id, content, source) for source, content in result.thoughts)
    observer, recorder = ix.services.observer, ix.services.recorder
    for record in records:
        with observer.span(_RECORD_SPANS[type(record)]):
            await recorder.record(record)
    observer.turn_recorded(ix, records)


_RECORD_SPANS: dict[type[Record], str] = {
    PromptUsage: SPAN_RECORD_PROMPT_USAGE,
    TokenUsage: SPAN_RECORD_TOKEN_USAGE,
    ToolUsage: SPAN_RECORD_TOOL_USAGE,
    ModelThought: SPAN_RECORD_MODEL_THOUGHT,
}

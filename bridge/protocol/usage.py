"""The token counters a provider reports for one response: the one list of them.

Dialects fill :class:`TokenCounts` from a response, the recorder writes them as a
:class:`~bridge.recording.TokenUsage` (one column each), the usage report sums them,
and the mock upstream's fixtures state them as the expected totals. All of these
take the names from here, so that a new counter is added in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Final

__all__ = ["TOKEN_COUNTERS", "TokenCounts"]


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """The token counters of one upstream response (see :class:`~bridge.recording.TokenUsage`).

    ``cache_write`` is the sum of ``cache_write_5m`` and ``cache_write_1h`` when the
    provider splits it; ``reasoning`` (OpenAI) is already counted inside ``output``;
    ``extra`` holds any further counters a provider reports, under their provider names.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    web_search_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)


TOKEN_COUNTERS: Final[tuple[str, ...]] = tuple(
    f.name for f in dataclasses.fields(TokenCounts) if f.name != "extra"
)
"""The named counters, in column order (``extra`` is not one: it is a map of the rest)."""

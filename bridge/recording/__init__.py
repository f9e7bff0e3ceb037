"""Recording: records, the non-blocking recorder, and the stores behind it.

``open_recorder(store)`` runs a :class:`Recorder` that writes :data:`Record` values to a
:class:`Store` in batches, off the gateway's hot path; ``open_store(url)`` opens the store
that ``recording.database`` names.

:class:`PostgresStore` is imported on first use: psycopg loads libpq, which a gateway
recording into SQLite has no use for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .journal import Journal as Journal
from .journal import JournalError as JournalError
from .memory import MemoryStore as MemoryStore
from .recorder import Recorder as Recorder
from .recorder import RecorderClosedError as RecorderClosedError
from .recorder import RecorderStats as RecorderStats
from .recorder import open_recorder as open_recorder
from .records import CredentialKind as CredentialKind
from .records import InterceptionEnded as InterceptionEnded
from .records import InterceptionStarted as InterceptionStarted
from .records import ModelThought as ModelThought
from .records import Outcome as Outcome
from .records import PassthroughCall as PassthroughCall
from .records import PromptUsage as PromptUsage
from .records import Record as Record
from .records import TokenUsage as TokenUsage
from .records import ToolUsage as ToolUsage
from .sqlite import SQLiteStore as SQLiteStore
from .store import GROUP_BY as GROUP_BY
from .store import Store as Store
from .store import StoreError as StoreError
from .store import UsageRow as UsageRow
from .store import open_store as open_store

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore

__all__ = [
    "GROUP_BY",
    "CredentialKind",
    "InterceptionEnded",
    "InterceptionStarted",
    "Journal",
    "JournalError",
    "MemoryStore",
    "ModelThought",
    "Outcome",
    "PassthroughCall",
    "PostgresStore",
    "PromptUsage",
    "Record",
    "Recorder",
    "RecorderClosedError",
    "RecorderStats",
    "SQLiteStore",
    "Store",
    "StoreError",
    "TokenUsage",
    "ToolUsage",
    "UsageRow",
    "open_recorder",
    "open_store",
]


def __getattr__(name: str) -> object:
    """``PostgresStore``, imported when first asked for (see the module docstring)."""
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""A store that could not be opened at start-up, opened later by the recorder's writer.

When the database is down as the gateway starts and a journal is configured, the gateway
starts anyway: records go to the journal, and the store is opened once the database is
back. Rules:

* Only the recorder's writer opens it: :meth:`DeferredStore.open` and
  :meth:`DeferredStore.write_batch` (which opens first) are called from its worker thread,
  under its backoff, like any other write. So there is one place that decides when to
  write, spill, replay and now open; no second retry loop.
* Everything else (``/readyz``'s :meth:`check`, a usage report, a gateway key look-up)
  never opens it: until the writer has, they raise :class:`StoreError` saying the database
  is not open yet and why, as they would if the database went down later.
* Once open, every call goes to the real store, which :attr:`DeferredStore.store` gives.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable, Mapping, Sequence

from bridge.identity.keys import GatewayKey, KeyStore

from .records import Record
from .store import Store, StoreError, UsageRow

__all__ = ["DeferredStore"]


class DeferredStore:
    """Stands for the store *opener* returns, until the recorder's writer has opened it.

    *error* is why opening failed at start-up; later failures replace it.
    """

    def __init__(self, opener: Callable[[], Store], error: Exception) -> None:
        self._opener = opener
        self._store: Store | None = None
        self._error: Exception = error
        self._closed = False
        self._lock = threading.Lock()  # open() against close() at the recorder's exit

    @property
    def store(self) -> Store | None:
        """The real store once opened, else None."""
        return self._store

    def open(self) -> Store:
        """Open the store if it is not yet (the recorder's writer calls this); raise what
        opening raises. Idempotent once it succeeded."""
        with self._lock:
            if self._store is not None:
                return self._store
            if self._closed:
                raise StoreError("the recording store was closed before it could be opened")
            try:
                self._store = self._opener()
            except Exception as exc:
                self._error = exc
                raise
            return self._store

    def _opened(self) -> Store:
        store = self._store
        if store is None:
            raise StoreError(
                f"the recording database is not open yet ({self._error}); records go to the"
                " journal and the gateway keeps trying to open it"
            )
        return store

    # -- Store --------------------------------------------------------------------------------

    def write_batch(self, records: Sequence[Record]) -> None:
        """Open the store if needed, then write: only the recorder's writer writes."""
        self.open().write_batch(records)

    def check(self) -> None:
        self._opened().check()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._store is not None:
                self._store.close()

    def usage(
        self, *, since: _dt.datetime | None = None, by: Sequence[str] = ("user",)
    ) -> list[UsageRow]:
        return self._opened().usage(since=since, by=by)

    # -- KeyStore: a look-up during the outage fails as it would if the database went down
    # later, rather than finding no key (which would tell a client its key is wrong).

    def _keys(self) -> KeyStore:
        store = self._opened()
        if not isinstance(store, KeyStore):
            raise StoreError("the recording database cannot keep gateway keys")
        return store

    def create_key(self, user: str, metadata: Mapping[str, str]) -> tuple[str, GatewayKey]:
        return self._keys().create_key(user, metadata)

    def list_keys(self) -> list[GatewayKey]:
        return self._keys().list_keys()

    def revoke_key(self, key_id: str) -> bool:
        return self._keys().revoke_key(key_id)

    def find_key(self, secret: str) -> GatewayKey | None:
        return self._keys().find_key(secret)

    def touch_key(self, key_id: str, when: _dt.datetime) -> None:
        self._keys().touch_key(key_id, when)

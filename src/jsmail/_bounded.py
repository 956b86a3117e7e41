"""A map that cannot grow with what others send: :class:`LRU`.

Long-lived state keyed by something a sender picks (a destination's address, a
mailbox, a client) is kept in an :class:`LRU`, so an attacker who names a million
destinations or mailboxes costs jsmail a bounded amount of memory (security review
L-10).  Forgetting an entry must only cost work again (a lookup, a ``stat``, an
earlier retry), never correctness.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator, MutableMapping, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(MutableMapping[K, V]):
    """At most ``limit`` entries: setting one more forgets the least recently used.
    Reading an entry (``[]``, ``get``, ``in``) makes it the most recently used.  Safe
    to use from the disk threads and the reactor at once (a lock per map)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an LRU keeps at least one entry, not {limit}")
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self._entries[key]
            self._entries.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._entries[key]

    def forget(self, key: K) -> None:
        """Remove ``key`` if it is there."""
        with self._lock:
            self._entries.pop(key, None)

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

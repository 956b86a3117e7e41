"""The queue as the status page and ``jsmail_queue_*`` gauges show it: messages by
state and age, read from the queue directory (the delivery process may be another
process, so the directory is the one truth both can see)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily

from jsmail.envelope import EnvelopeFormatError
from jsmail.queue.admin import readQueueEntry

STATES = ("new", "deferred", "held")
#: Age bands of the status page: (upper bound in seconds, heading).
AGES = ((300.0, "< 5 min"), (3600.0, "< 1 h"), (86400.0, "< 1 day"), (float("inf"), "older"))
#: Seconds a scan is reused: a scrape every few seconds must not read a large queue each time.
CACHE_SECONDS = 5.0


@dataclass
class QueueState:
    """Counts by state (``new``: never tried; ``deferred``: waiting for a retry;
    ``held``: held by an operator) and by age band, and the oldest message's age."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    byAge: dict[str, list[int]] = field(default_factory=lambda: {s: [0] * len(AGES) for s in STATES})
    oldest: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def scanQueue(directory: str, now: float) -> QueueState:
    """Read every queued message's envelope (blocking: run in a thread)."""
    state = QueueState()
    for place in ("active", "hold"):
        folder = os.path.join(directory, place)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if name.endswith(".env") or name.startswith("."):
                continue
            try:
                entry = readQueueEntry(directory, name)
            except (FileNotFoundError, EnvelopeFormatError, ValueError, OSError):
                continue  # delivered (or set aside) while we looked
            kind = "held" if entry.held else ("deferred" if entry.envelope.attempts else "new")
            age = max(0.0, now - entry.envelope.arrival)
            state.counts[kind] += 1
            state.byAge[kind][next(i for i, (bound, _) in enumerate(AGES) if age < bound)] += 1
            state.oldest = max(state.oldest, age)
    return state


class QueueWatcher:
    """Scans a queue directory at most every :data:`CACHE_SECONDS`; a Prometheus
    collector for ``jsmail_queue_messages{state}`` and ``jsmail_queue_oldest_seconds``.
    Thread-safe: scrapes run in the web server's threads."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._state: QueueState | None = None
        self._at = 0.0

    def state(self) -> QueueState:
        """The queue now, or as of a few seconds ago (blocking)."""
        with self._lock:
            now = time.time()
            if self._state is None or now - self._at > CACHE_SECONDS:
                self._state, self._at = scanQueue(self.directory, now), now
            return self._state

    def collect(self) -> Iterator[Any]:
        state = self.state()
        messages = GaugeMetricFamily("jsmail_queue_messages", "Messages in the queue, by state "
                                     "(new: not yet tried; deferred: waiting for a retry; held)", labels=["state"])
        for kind in STATES:
            messages.add_metric([kind], state.counts[kind])
        yield messages
        yield GaugeMetricFamily("jsmail_queue_oldest_seconds", "Age of the oldest queued message", value=state.oldest)

"""Counting from the operator log: one observer on the global log publisher turns
``jsmail.maillog`` events into metrics, a ring buffer of recent deliveries and
refusals, and per-minute figures for the last hour (the status page's charts).

The delivery process's events are republished in the gateway's log
(:mod:`jsmail.send.process`), so delivery is counted here without plumbing of its own;
so are the silent ``jsmail.metrics`` events that carry its commit and DNS timings.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.logger import ILogObserver
from zope.interface import implementer

from jsmail.metrics import NAMESPACE, Metrics

#: Entries kept of recent deliveries, and of recent refusals.
RECENT = 50
#: Minutes of history kept for the charts.
MINUTES = 60

_MAILLOG = "jsmail.maillog"


@dataclass
class Minute:
    """What happened in one minute."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0  # temporary and permanent failures, per recipient
    latencySum: float = 0.0
    latencyCount: int = 0
    latencyMax: float = 0.0

    @property
    def latencyMean(self) -> float:
        return self.latencySum / self.latencyCount if self.latencyCount else 0.0


@dataclass
class History:
    """Per-minute figures for the last :data:`MINUTES` minutes, keyed by minute number
    (seconds since the epoch // 60)."""

    minutes: dict[int, Minute] = field(default_factory=dict)

    def at(self, when: float) -> Minute:
        key = int(when // 60)
        minute = self.minutes.get(key)
        if minute is None:
            minute = self.minutes[key] = Minute()
            for old in [k for k in self.minutes if k <= key - MINUTES]:
                del self.minutes[old]
        return minute

    def lastHour(self, now: float) -> list[Minute]:
        """The last :data:`MINUTES` minutes, oldest first, the current one last."""
        end = int(now // 60)
        return [self.minutes.get(key) or Minute() for key in range(end - MINUTES + 1, end + 1)]


@implementer(ILogObserver)
class MaillogObserver:
    """Counts the operator log's events (see the module docstring); cheap per event:
    one namespace test, one dictionary dispatch and cached label children."""

    def __init__(self, metrics: Metrics, recentSize: int = RECENT) -> None:
        self.metrics = metrics
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=recentSize)
        self.refusals: deque[dict[str, Any]] = deque(maxlen=recentSize)
        self.history = History()
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "connect": self._connect, "tls": self._tls, "tls-failed": self._tlsFailed, "auth": self._auth,
            "reject": self._reject, "queued": self._queued, "attempt": self._attempt,
            "remote": self._remote, "delivered": self._delivery, "deferred": self._delivery,
            "failed": self._delivery,
        }

    def __call__(self, event: dict[str, Any]) -> None:
        namespace = event.get("log_namespace")
        if namespace == _MAILLOG:
            handler = self._handlers.get(event.get("event", ""))
            if handler is not None:
                handler(event)
        elif namespace == NAMESPACE:
            metric = event.get("metric")
            if metric == "commit":
                self.metrics.commit(event["seconds"])
            elif metric == "dns":
                self.metrics.dns(event["seconds"])
            elif metric == "counts" and isinstance(event.get("counts"), list):
                self.metrics.counted(event["counts"])

    def _when(self, event: dict[str, Any]) -> float:
        return float(event.get("log_time") or time.time())

    def _connect(self, event: dict[str, Any]) -> None:
        self.metrics.child(self.metrics.connections, event.get("listener", "-")).inc()

    def _tls(self, event: dict[str, Any]) -> None:
        version = str(event.get("info", "")).partition(" ")[0] or "unknown"
        self.metrics.child(self.metrics.tls, version).inc()

    def _tlsFailed(self, event: dict[str, Any]) -> None:
        self.metrics.child(self.metrics.tls, "failed").inc()

    def _auth(self, event: dict[str, Any]) -> None:
        if event.get("outcome") != "ok":
            self.metrics.authFailures.inc()

    def _reject(self, event: dict[str, Any]) -> None:
        replyText = str(event.get("reply", ""))
        if event.get("command") in ("DATA", "BDAT"):
            outcome = "tempfailed" if replyText.startswith("4") else "rejected"
            self.metrics.child(self.metrics.messages, event.get("listener", "-"), outcome).inc()
        self.refusals.append({"time": self._when(event), "client": event.get("client", ""),
                              "command": event.get("command", ""), "reply": replyText,
                              "listener": event.get("listener", "-")})

    def _queued(self, event: dict[str, Any]) -> None:
        self.metrics.child(self.metrics.messages, event.get("listener", "-"), "queued").inc()
        self.history.at(self._when(event)).queued += 1

    def _attempt(self, event: dict[str, Any]) -> None:
        m, agent, seconds = self.metrics, event.get("agent", "-"), float(event.get("seconds", 0.0))
        for result in ("delivered", "temporary", "permanent"):
            count = event.get(result, 0)
            if count:
                m.child(m.attempts, agent, result).inc(count)
        m.child(m.deliverySeconds, agent).observe(seconds)
        minute = self.history.at(self._when(event))
        minute.latencySum += seconds
        minute.latencyCount += 1
        minute.latencyMax = max(minute.latencyMax, seconds)

    def _remote(self, event: dict[str, Any]) -> None:
        self.metrics.child(self.metrics.remoteTLS, event.get("mode", "-"), event.get("outcome", "-")).inc()

    def _delivery(self, event: dict[str, Any]) -> None:
        when, kind = self._when(event), event["event"]
        minute = self.history.at(when)
        if kind == "delivered":
            minute.delivered += 1
        else:
            minute.failed += 1
        self.deliveries.append({"time": when, "queueId": event.get("queueId", ""), "event": kind,
                                "recipient": event.get("recipient", ""), "code": event.get("code", ""),
                                "enhanced": event.get("enhanced", ""), "text": event.get("text", ""),
                                "remoteMTA": event.get("remoteMTA", "")})

"""The gateway's thread pools outlive the work that needs them at shutdown."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from jsmail._threads import ThreadPoolService


class LastWrite(ThreadPoolService):
    """Once its children have stopped, writes something in its disk pool, a turn of
    the reactor later (as a policy refresh that ends during a shutdown does)."""

    def __init__(self) -> None:
        super().__init__(reactor, {"disk": 1})
        self.written: list[str] = []

    def childrenStopped(self) -> defer.Deferred[Any]:
        write = self.threads("disk")
        return task.deferLater(reactor, 0, lambda: None).addCallback(
            lambda _: write(self.written.append, "policy"))


class ShutdownTests(TestCase):
    timeout = 10

    @defer.inlineCallbacks
    def test_lastWriteAtShutdownIsNotLost(self):  # type: ignore[no-untyped-def]
        """A write given to a pool after it stopped was dropped without a word, and
        whoever waited for it waited for ever."""
        service = LastWrite()
        service.startService()
        yield service.stopService()
        self.assertEqual(service.written, ["policy"])
        self.assertFalse(any(pool.started for pool in service.pools.values()))

"""The gateway's thread pools outlive the work that needs them at shutdown."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from jsmail._threads import Batches, BatchNotFinished, ThreadPoolService
from jsmail.testing import HeldThreads


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


class BatchesTests(TestCase):
    """Jobs run a batch at a time: what comes while one runs makes the next."""

    def setUp(self) -> None:
        self.runInThread = HeldThreads()  # what was sent to the "thread", not yet run
        self.hops = self.runInThread.held
        self.batches = Batches(self.runInThread)
        self.runHop = self.runInThread.runNext

    def test_jobsThatComeWhileABatchRunsMakeTheNext(self) -> None:
        ran: list[int] = []
        first = self.batches.run(lambda: ran.append(1) or "one")
        second = self.batches.run(lambda: ran.append(2) or "two")
        third = self.batches.run(lambda: ran.append(3) or "three")
        self.assertEqual(len(self.hops), 1)  # one hop for the first; the others wait for it
        self.runHop()
        self.assertEqual((ran, self.successResultOf(first)), ([1], "one"))
        self.assertEqual(len(self.hops), 1)  # one hop for the two that waited
        self.runHop()
        self.assertEqual(ran, [1, 2, 3])
        self.assertEqual((self.successResultOf(second), self.successResultOf(third)), ("two", "three"))
        self.assertEqual(self.hops, [])

    def test_aJobsErrorIsItsOwn(self) -> None:
        def fails() -> None:
            raise OSError("disk on fire")

        bad = self.batches.run(fails)
        good = self.batches.run(lambda: "fine")
        self.runHop()
        self.runHop()
        self.failureResultOf(bad, OSError)
        self.assertEqual(self.successResultOf(good), "fine")

    def test_aFailedHopFailsItsBatchAndTheNextRuns(self) -> None:
        first = self.batches.run(lambda: "never run")
        second = self.batches.run(lambda: "runs")
        d, _, _ = self.hops.pop(0)
        d.errback(RuntimeError("pool stopped"))
        self.failureResultOf(first, RuntimeError)
        self.runHop()
        self.assertEqual(self.successResultOf(second), "runs")

    def test_finishRunsOnceAfterEachBatchInTheThread(self) -> None:
        """A sync of what the batch wrote, before any of its jobs is answered."""
        ran: list[str] = []
        self.batches = Batches(self.runInThread, lambda: ran.append("sync"))
        first = self.batches.run(lambda: ran.append("a") or "a")
        second = self.batches.run(lambda: ran.append("b") or "b")
        third = self.batches.run(lambda: ran.append("c") or "c")
        self.runHop()
        self.runHop()
        self.assertEqual(ran, ["a", "sync", "b", "c", "sync"])
        self.assertEqual([self.successResultOf(d) for d in (first, second, third)], ["a", "b", "c"])

    def test_prepareRunsBeforeEachBatchInTheThread(self) -> None:
        """To forget what the last batch learned; its error fails the whole batch."""
        ran: list[str] = []
        self.batches = Batches(self.runInThread, prepare=lambda: ran.append("prepare"))
        first = self.batches.run(lambda: ran.append("a") or "a")
        second = self.batches.run(lambda: ran.append("b") or "b")
        self.runHop()
        self.runHop()
        self.assertEqual(ran, ["prepare", "a", "prepare", "b"])
        self.assertEqual([self.successResultOf(d) for d in (first, second)], ["a", "b"])

        def broken() -> None:
            raise OSError("no memory to forget with")

        self.batches = Batches(self.runInThread, prepare=broken)
        third = self.batches.run(lambda: ran.append("c"))
        self.runHop()
        self.failureResultOf(third, OSError)
        self.assertNotIn("c", ran)

    def test_failedFinishFailsTheJobsThatSucceeded(self) -> None:
        def sync() -> None:
            raise OSError(5, "Input/output error")

        def fails() -> None:
            raise ValueError("its own")

        self.batches = Batches(self.runInThread, sync)
        written = self.batches.run(lambda: "/maildir/new/1")
        failed = self.batches.run(fails)
        self.runHop()
        self.runHop()
        notFinished = self.failureResultOf(written, BatchNotFinished).value
        self.assertEqual(notFinished.result, "/maildir/new/1")
        self.assertTrue(notFinished.failure.check(OSError))
        self.failureResultOf(failed, ValueError)

    def test_noFinishWhenEveryJobFailed(self) -> None:
        ran: list[str] = []
        self.batches = Batches(self.runInThread, lambda: ran.append("sync"))

        def fails() -> None:
            raise ValueError("nothing written")

        d = self.batches.run(fails)
        self.runHop()
        self.failureResultOf(d, ValueError)
        self.assertEqual(ran, [])

"""Security review L-8: waking the delivery process signals nobody."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from jsmail.cli import main as jsmailMain
from jsmail.queue.admin import wakeDelivery
from jsmail.queue.store import MaildirQueue
from jsmail.queue.trigger import TriggerReader, pull


def jsmail(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = jsmailMain(list(argv))
    return code, out.getvalue(), err.getvalue()


class WakeTests(TestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.queueDir = os.path.join(self.data, "queue")
        MaildirQueue(self.queueDir, defer.maybeDeferred).close()

    def test_wakeSignalsOnlyJsmailProcess(self) -> None:
        """A pid planted in send.pid (here a sleep's) is not signalled by jsmail queue
        flush, requeue, release or the qmail programs' wake-up: they reach only a
        process that reads the queue's trigger, and there is none."""
        sleeper = subprocess.Popen(["sleep", "30"])
        self.addCleanup(sleeper.wait)
        self.addCleanup(sleeper.kill)
        with open(os.path.join(self.queueDir, "send.pid"), "w") as f:
            f.write(f"{sleeper.pid}\n")
        code, _, err = jsmail("--data", self.data, "queue", "flush")
        self.assertEqual(code, 1)
        self.assertIn("no running delivery process", err)
        self.assertEqual(jsmail("--data", self.data, "queue", "requeue")[0], 0)
        self.assertFalse(wakeDelivery(self.queueDir))
        time.sleep(0.05)  # SIGALRM's default action would have ended it by now
        self.assertIsNone(sleeper.poll())

    def test_pullNeverWritesThroughASymlinkOrIntoAFile(self) -> None:
        """Whatever is planted under the trigger's name gets no byte and no error."""
        target = os.path.join(self.data, "victim")
        with open(target, "wb") as f:
            f.write(b"precious")
        trigger = os.path.join(self.queueDir, "trigger")
        os.symlink(target, trigger)
        self.assertFalse(pull(self.queueDir))
        os.unlink(trigger)
        os.link(target, trigger)  # a regular file, the same one
        self.assertFalse(pull(self.queueDir, flush=True))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    @defer.inlineCallbacks
    def test_triggerWakesItsReaderOncePerBurst(self):  # type: ignore[no-untyped-def]
        """The delivery side reads the FIFO: a burst of pulls while it looks at the
        queue is one more look, and a flush among them is kept."""
        calls: list[bool] = []
        running: list[defer.Deferred[None]] = []

        def pulled(flush: bool) -> defer.Deferred[None]:
            calls.append(flush)
            running.append(defer.Deferred())
            return running[-1]

        reader = TriggerReader(self.queueDir, reactor, pulled)
        reader.start()
        self.addCleanup(reader.stop)
        self.assertTrue(pull(self.queueDir))
        yield self.until(lambda: calls == [False])
        for flush in (False, True, False):
            self.assertTrue(pull(self.queueDir, flush))
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(calls, [False])  # the first look is still going on
        running[0].callback(None)
        yield self.until(lambda: calls == [False, True])
        running[1].callback(None)
        reader.stop()
        self.assertFalse(pull(self.queueDir))  # stopped: the FIFO is gone

    @defer.inlineCallbacks
    def until(self, predicate):  # type: ignore[no-untyped-def]
        for _ in range(200):
            if predicate():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("timed out")

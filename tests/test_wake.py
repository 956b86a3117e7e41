"""Security review L-8: waking the delivery process signals nobody, and files written
into the queue's tmp/ are never opened through a name planted there."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._disk import createNew, writeAndRename
from jsmail.cli import main as jsmailMain
from jsmail.envelope import Envelope, Recipient
from jsmail.queue.admin import listQueue, wakeDelivery
from jsmail.queue.store import MaildirQueue
from jsmail.queue.trigger import TriggerReader, pull
from jsmail.testing import filesInTmp


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

    def test_plantedSendPidIsNeverSignalled(self) -> None:
        """Review L-8: a pid planted in send.pid (here a sleep's) is not signalled by
        jsmail queue flush, requeue, release or the qmail programs' wake-up: they
        reach only a process that reads the queue's trigger, and there is none."""
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
        # Had SIGALRM been sent, it would be pending or acted on already, and it is
        # delivered before SIGTERM (lower signals first): the exit says which came.
        sleeper.terminate()
        self.assertEqual(sleeper.wait(), -signal.SIGTERM)

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


class TemporaryFileTests(SynchronousTestCase):
    """tmp/ files are always new files, never opened through what is there."""

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.queueDir = os.path.join(self.data, "queue")
        self.queue = MaildirQueue(self.queueDir, defer.maybeDeferred)
        self.victim = os.path.join(self.data, "victim")
        with open(self.victim, "wb") as f:
            f.write(b"precious")

    def test_tmpSymlinkNotFollowed(self) -> None:
        """L-8: root running jsmail queue requeue used to open tmp/<id>.env, following
        a symlink the jsmail user planted there, and overwrite its target."""
        incoming = self.queue.newMessage(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0,
                                                  attempts=3, nextAttempt=9e9))
        incoming.write(b"Subject: x\r\n\r\nx\r\n")
        queueId = self.successResultOf(incoming.commit())
        os.symlink(self.victim, os.path.join(self.queueDir, "tmp", queueId + ".env"))
        self.assertEqual(jsmail("--data", self.data, "queue", "requeue", queueId)[0], 0)
        with open(self.victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        [entry] = listQueue(self.queueDir)
        self.assertEqual((entry.envelope.attempts, entry.envelope.nextAttempt), (0, 0.0))

    def test_createNewRefusesWhatIsThere(self) -> None:
        path = os.path.join(self.data, "planted")
        os.symlink(self.victim, path)
        self.assertRaises(FileExistsError, createNew, path)
        os.unlink(path)
        os.symlink(os.path.join(self.data, "nowhere"), path)  # dangling: O_CREAT alone would make its target
        self.assertRaises(FileExistsError, createNew, path)
        self.assertFalse(os.path.exists(os.path.join(self.data, "nowhere")))
        with open(self.victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_writeAndRenameLeavesNothingBehind(self) -> None:
        final = os.path.join(self.data, "final")
        writeAndRename(os.path.join(self.queueDir, "tmp", "x.env"), final, b"data")
        with open(final, "rb") as f:
            self.assertEqual(f.read(), b"data")
        self.assertEqual(os.stat(final).st_mode & 0o777, 0o600)
        self.assertEqual([p for p in filesInTmp(os.path.join(self.queueDir, "tmp"))
                          if not os.path.basename(p).startswith("spare.")], [])

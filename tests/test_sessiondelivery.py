"""Delivery during the SMTP session (jsmail.local.session): what goes straight into the
Maildir before the 250, what is queued instead, and what is refused; on real files
(the queue and the Maildirs in a temporary directory), with blocking work run at once
and a fake clock, then through a whole gateway over a real socket."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import smtplib
import stat
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from jsmail import reply
from jsmail._threads import Batches, _runEach
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery
from jsmail.local.session import PLAN_SECONDS, SessionDelivery, _MaildirFile
from jsmail.local.settings import LocalSettings
from jsmail.queue.store import MaildirQueue
from jsmail.route import Router
from jsmail.testing import Dialog, HeldThreads, runNow
from tests.test_integration import GatewayTestCase, queuedId

MESSAGE = b"Subject: hello\r\nFrom: <a@example.org>\r\n\r\nline one\r\nline two\r\n"


class _FullDisk:
    """A file whose octets held in memory can no longer be written out: the file
    system filled up."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self._f.close()
        raise OSError(errno.ENOSPC, "No space left on device")


def inSession(message: object) -> bool:
    """Whether ``message`` is being delivered during the session (else it is queued)."""
    return isinstance(message, _MaildirFile)


def envelope(*recipients: str, **params: str) -> Envelope:
    return Envelope("a@example.org", tuple(Recipient(r, dict(params)) for r in recipients), arrival=0.0)


class SessionSinkCase(unittest.TestCase):
    """A SessionDelivery over a queue and Maildirs in a temporary directory, blocking
    work run at once, a fake clock, and the operator log's events kept."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.queue = MaildirQueue(os.path.join(base, "queue"), runNow, spares=0)
        self.addCleanup(self.queue.close)
        self.root = os.path.join(base, "mail")
        self.usersDir = os.path.join(base, "users")
        os.makedirs(self.usersDir)
        settings = LocalSettings(usersDir=self.usersDir, localDomains=("localhost",))
        self.local = LocalDelivery(self.root, runNow, "mx.test", self.queue.syncer, reactor=self.clock,
                                   settings=settings)
        self.sink = SessionDelivery(self.queue, self.local, Router(["localhost"], self.local), self.clock)
        self.events: list[dict[str, Any]] = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def known(self, *recipients: str) -> None:
        """Have the sink look at the recipients' plans (at once: runNow), their Maildirs
        made as a first delivery would."""
        for recipient in recipients:
            local, _, domain = recipient.rpartition("@")
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.root, domain, local, sub), exist_ok=True)
            self.sink.newMessage(envelope(recipient)).abort()

    def send(self, env: Envelope, *chunks: bytes) -> Any:
        message = self.sink.newMessage(env)
        for chunk in chunks or (MESSAGE,):
            message.write(chunk)
        return message, message.commit()

    def inbox(self, local: str = "user") -> list[bytes]:
        new = os.path.join(self.root, "localhost", local, "new")
        return [open(os.path.join(new, n), "rb").read() for n in sorted(os.listdir(new))] if os.path.isdir(new) else []

    def queued(self) -> list[str]:
        return sorted(os.listdir(self.queue.activeDir))

    def maillog(self) -> list[str]:
        return [e["event"] for e in self.events if e.get("log_namespace") == "jsmail.maillog"]

    def fromQueue(self, env: Envelope, data: bytes) -> bytes:
        """What local delivery writes for ``data`` queued with ``env`` (the file is
        taken out of the Maildir again)."""
        incoming = self.queue.newMessage(env)
        incoming.write(data)
        queueId = self.successResultOf(incoming.commit())
        message = QueuedMessage(queueId, env, lambda: self.queue.openMessage(queueId))
        [result] = self.successResultOf(self.local.deliver(message, env.recipients))
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        os.unlink(os.path.join(self.queue.activeDir, queueId))
        path = result.detail.removeprefix("maildir ") + "/new"
        [name] = os.listdir(path)
        with open(os.path.join(path, name), "rb") as f:
            written = f.read()
        os.unlink(os.path.join(path, name))
        return written

    def heldLooks(self) -> list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]]:
        """Hold the sink's looks at plans (a slow disk): each is listed, to be answered
        by the test; other blocking work still runs at once."""
        looks: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []
        now = self.local.runInThread

        def held(f: Any, *args: Any) -> Any:
            if f != self.sink._plan:
                return now(f, *args)
            d: defer.Deferred[Any] = defer.Deferred()
            looks.append((d, f, args))
            return d

        self.local.runInThread = held
        return looks


class SessionDeliveryTests(SessionSinkCase):
    def test_deliveredIntoTheMaildirBeforeTheCommitFires(self) -> None:
        """Once the plan is known, the message is in new/ (Return-Path and Delivered-To
        first, LF line ends, 0600) when commit fires, and never in the queue."""
        self.known("user@localhost")
        split = MESSAGE.index(b"\r\n") + 1  # a CR LF split between two writes
        message, d = self.send(envelope("user@localhost"), MESSAGE[:split], MESSAGE[split:])
        self.assertEqual(self.successResultOf(d), message.queueId)
        [delivered] = self.inbox()
        self.assertEqual(delivered, b"Return-Path: <a@example.org>\nDelivered-To: user@localhost\n"
                         + MESSAGE.replace(b"\r\n", b"\n"))
        [name] = os.listdir(os.path.join(self.root, "localhost", "user", "new"))
        mode = os.stat(os.path.join(self.root, "localhost", "user", "new", name)).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertEqual(self.queued(), [])
        self.assertEqual(os.listdir(self.queue.tmpDir), [])

    def test_logLinesComeWhenTheReceiverAsks(self) -> None:
        """The delivery's operator-log lines (attempt, delivered, removed) are written
        by deliveredInSession, which smtpd calls after its queued line."""
        self.known("user@localhost")
        message, d = self.send(envelope("user@localhost"))
        self.successResultOf(d)
        self.assertEqual(self.maillog(), [])
        message.deliveredInSession()
        self.assertEqual(self.maillog(), ["attempt", "delivered", "removed"])
        delivered = [e for e in self.events if e.get("event") == "delivered"][0]
        self.assertEqual((delivered["queueId"], delivered["recipient"]), (message.queueId, "user@localhost"))
        self.assertEqual([e["agent"] for e in self.events if e.get("event") == "attempt"], ["session"])

    def test_firstMessageToARecipientIsQueuedWhileItsPlanIsLookedAt(self) -> None:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.root, "localhost", "user", sub))
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        self.assertEqual(self.successResultOf(d), message.queueId)
        self.assertEqual(self.queued(), [message.queueId])
        self.assertIsNone(message.deliveredInSession)
        message2, d2 = self.send(envelope("user@localhost"))
        self.successResultOf(d2)
        self.assertEqual(len(self.inbox()), 1)

    def test_planLooksAgainAfterItsTime(self) -> None:
        """A .qmail file made after the plan was looked at is followed within
        PLAN_SECONDS: the plan is looked at again, and the message is queued."""
        self.known("user@localhost")
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        self.clock.advance(PLAN_SECONDS)
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        self.assertEqual(self.inbox(), [])

    def test_userWithADotQmailFileIsQueued(self) -> None:
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("./Maildir/\n")
        self.known("user@localhost")
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        self.assertEqual(self.queued(), [message.queueId])

    def test_maildirOnAnotherFileSystemIsQueued(self) -> None:
        """A spare file cannot be renamed across file systems: such a Maildir (here a
        link into /dev/shm, a tmpfs) is left to the queue, which copies."""
        elsewhere = tempfile.mkdtemp(dir="/dev/shm") if os.path.isdir("/dev/shm") else ""
        if not elsewhere or os.stat(elsewhere).st_dev == os.stat(self.queue.tmpDir).st_dev:
            raise unittest.SkipTest("no second file system at /dev/shm")
        self.addCleanup(shutil.rmtree, elsewhere)
        os.makedirs(os.path.join(self.root, "localhost"))
        os.symlink(elsewhere, os.path.join(self.root, "localhost", "user"))
        self.known("user@localhost")
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        self.assertEqual(self.queued(), [message.queueId])

    def test_messagesTheQueueOwesMoreAreQueued(self) -> None:
        """Two recipients, a remote one, or a success notice asked for: queued."""
        self.known("user@localhost", "other@localhost")
        for env in (envelope("user@localhost", "other@localhost"), envelope("someone@example.org"),
                    envelope("user@localhost", NOTIFY="SUCCESS,FAILURE")):
            message, d = self.send(env)
            self.assertFalse(inSession(message))
            self.successResultOf(d)
        self.assertEqual(len(self.queued()), 3)
        self.assertEqual(self.inbox(), [])

    def test_ownDeliveredToLineIsRefusedNotBounced(self) -> None:
        self.known("user@localhost")
        message, d = self.send(envelope("user@localhost"), b"Delivered-To: user@localhost\r\n" + MESSAGE)
        error = self.failureResultOf(d, SMTPReplyError).value
        self.assertEqual(error.reply, reply.LOOPING)
        self.assertEqual((self.inbox(), self.queued(), os.listdir(self.queue.tmpDir)), ([], [], []))

    def test_twentyDeliveredToLinesAreRefusedNotBounced(self) -> None:
        self.known("user@localhost")
        hops = b"".join(b"Delivered-To: hop%d@example.org\r\n" % i for i in range(20))
        message, d = self.send(envelope("user@localhost"), hops + MESSAGE)
        self.assertEqual(self.failureResultOf(d, SMTPReplyError).value.reply, reply.TOO_MANY_DELIVERED_TO)
        self.assertEqual((self.inbox(), os.listdir(self.queue.tmpDir)), ([], []))

    def test_aLoopOnAFullDiskIsStillRefused(self) -> None:
        """Writing out what the file held fails (a full disk) as a looping message is
        thrown away: the client hears the refusal, nothing is left, nothing raises."""
        self.known("user@localhost")
        newMessage = self.sink.newMessage

        def fillingUp(env: Envelope) -> Any:
            message = newMessage(env)
            commit = message.commit

            def commitOnAFullDisk() -> Any:
                message._file = _FullDisk(message._file)
                return commit()

            message.commit = commitOnAFullDisk
            return message

        self.sink.newMessage = fillingUp  # type: ignore[method-assign]
        dialog = Dialog(sink=self.sink, clock=self.clock)
        dialog.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
        hops = b"".join(b"Delivered-To: hop%d@example.org\r\n" % i for i in range(20))
        self.assertEqual(dialog.send(hops + MESSAGE + b".\r\n"), reply.TOO_MANY_DELIVERED_TO.wire)
        self.assertEqual((self.inbox(), self.queued(), os.listdir(self.queue.tmpDir)), ([], [], []))

    def test_aFullDiskAtTheEndIsAFailureNotAnError(self) -> None:
        """The last CR, held back in case an LF follows, cannot be written: the commit
        fails (the client hears 451), and the file is removed."""
        self.known("user@localhost")
        message = self.sink.newMessage(envelope("user@localhost"))
        message.write(MESSAGE + b"last line\r")
        message._file = _FullDisk(message._file)
        self.failureResultOf(message.commit(), OSError)
        self.assertEqual((self.inbox(), self.queued(), os.listdir(self.queue.tmpDir)), ([], [], []))

    def test_maildirRemovedMeanwhileIsATemporaryFailure(self) -> None:
        """The client hears 451 and tries again; the plan is looked at again then."""
        self.known("user@localhost")
        maildir = os.path.join(self.root, "localhost", "user")
        for sub in ("tmp", "new", "cur"):
            os.rmdir(os.path.join(maildir, sub))
        message, d = self.send(envelope("user@localhost"))
        self.assertEqual(self.failureResultOf(d, SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
        self.assertEqual(os.listdir(self.queue.tmpDir), [])
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))  # looked at again: no Maildir, the queue makes it
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))

    def heldBatches(self) -> HeldThreads:
        """A new sink whose batches of placings are held (a busy thread), to be run one
        by one (``runNext``); other blocking work still runs at once."""
        held, now = HeldThreads(), self.local.runInThread
        self.local.runInThread = lambda f, *args: (held if f is _runEach else now)(f, *args)
        self.sink = SessionDelivery(self.queue, self.local, Router(["localhost"], self.local), self.clock)
        return held

    def test_aBatchLooksAtEachRecipientsPlanOnce(self) -> None:
        """Messages whose final dots came together are placed together, after one new
        look at their recipient's plan (made after every one of those dots)."""
        batches = self.heldBatches()
        self.known("user@localhost")
        looks: list[str] = []
        plainMaildir = self.local.plainMaildir
        self.local.plainMaildir = lambda address: looks.append(address) or plainMaildir(address)  # type: ignore[method-assign]
        first = self.send(envelope("user@localhost"))[1]  # the first batch: alone
        rest = [self.send(envelope("user@localhost"))[1] for _ in range(3)]  # the next: three together
        batches.runNext()
        batches.runNext()
        for d in (first, *rest):
            self.successResultOf(d)
        self.assertEqual((len(self.inbox()), looks), (4, ["user@localhost"] * 2))

    def test_planChangedBetweenBatchesIsFollowed(self) -> None:
        """What one batch looked at is forgotten before the next: a ``.qmail`` file made
        after a batch is followed by the messages of the next (451, then queued)."""
        batches = self.heldBatches()
        self.known("user@localhost")
        before = self.send(envelope("user@localhost"))[1]
        batches.runNext()
        self.successResultOf(before)
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        after = self.send(envelope("user@localhost"))[1]
        batches.runNext()
        self.assertEqual(self.failureResultOf(after, SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
        self.assertEqual(len(self.inbox()), 1)
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))

    def test_noMaildirYetIsQueuedAndNoneIsMade(self) -> None:
        """Delivery from the queue makes a Maildir, on the first delivery: looking at a
        plan makes none (a message refused at its end leaves no trace)."""
        self.sink.newMessage(envelope("new@localhost")).abort()  # the plan looked at
        message, d = self.send(envelope("new@localhost"))
        self.assertFalse(inSession(message))
        message.abort()
        self.assertFalse(os.path.exists(os.path.join(self.root, "localhost", "new")))

    def test_failedSyncTakesTheFileBack(self) -> None:
        """Not known to be on disk: the file is removed, and the commit fails (451)."""
        self.known("user@localhost")

        def failingSync() -> None:
            raise OSError(5, "Input/output error")

        self.sink.placing = Batches(runNow, failingSync)
        message, d = self.send(envelope("user@localhost"))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.inbox(), [])
        self.assertIsNone(message.deliveredInSession)

    def test_aBatchThatCannotBeginLeavesNoFileBehind(self) -> None:
        """Its prepare step failed, so no job ran to take its file back: the client
        hears 451 and nothing is left in the queue's tmp/."""
        self.known("user@localhost")

        def failingPrepare() -> None:
            raise MemoryError("no room to begin")

        self.sink.placing = Batches(runNow, self.sink._sync, failingPrepare)
        message, d = self.send(envelope("user@localhost"))
        self.assertEqual(self.failureResultOf(d, SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
        self.assertEqual((self.inbox(), os.listdir(self.queue.tmpDir)), ([], []))

    def test_abortLeavesNothing(self) -> None:
        self.known("user@localhost")
        message = self.sink.newMessage(envelope("user@localhost"))
        message.write(MESSAGE)
        message.abort()
        self.assertEqual((self.inbox(), self.queued(), os.listdir(self.queue.tmpDir)), ([], [], []))


class GatewaySessionDeliveryTests(GatewayTestCase):
    """A whole gateway: with its delivery process stopped (SIGSTOP), a message is in
    the Maildir when the client hears 250 all the same."""

    @defer.inlineCallbacks
    def stoppedDelivery(self, **settings: Any) -> Any:
        gateway = yield self.startGateway(**settings)
        for sub in ("tmp", "new", "cur"):  # an existing mailbox
            os.makedirs(os.path.join(self.dataDir, "mail", "localhost", "user", sub))
        [replies] = yield self.send(("a@example.org", ["user@localhost"], MESSAGE, ()))
        yield self.queueDrained()  # the first goes through the queue, while the plan is looked at
        child = gateway.delivery.child.transport.pid
        os.kill(child, signal.SIGSTOP)
        self.addCleanup(os.kill, child, signal.SIGCONT)
        return gateway

    @defer.inlineCallbacks
    def test_deliveredBeforeThe250(self) -> Any:
        yield self.stoppedDelivery()
        [replies] = yield self.send(("a@example.org", ["user@localhost"], MESSAGE, ()))
        queueId = queuedId(replies[-1])
        self.assertEqual(len(self.mailbox("user@localhost")), 2)
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "active")), [])
        # Found by its id: Maildir names do not sort in time (their microseconds are not padded).
        [delivered] = [m for m in self.mailbox("user@localhost") if queueId.encode() in m]
        self.assertDelivered(delivered, "a@example.org", "user@localhost", MESSAGE, "ESMTP", queueId)

    @defer.inlineCallbacks
    def test_turnedOffEverythingIsQueued(self) -> Any:
        yield self.stoppedDelivery(local__deliver_in_session=False)
        [replies] = yield self.send(("a@example.org", ["user@localhost"], MESSAGE, ()))
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "active")), [queuedId(replies[-1])])
        self.assertEqual(len(self.mailbox("user@localhost")), 1)

    @defer.inlineCallbacks
    def test_forwardedTooOftenIsRefusedAtTheDotNotBounced(self) -> Any:
        """A loop local delivery would bounce gets 554 5.4.6 at the final dot instead:
        nothing is queued, no bounce goes out."""
        yield self.stoppedDelivery()
        hops = b"".join(b"Delivered-To: hop%d@example.org\r\n" % i for i in range(20))

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=10) as client:
                client.ehlo()
                client.mail("a@example.org")
                client.rcpt("user@localhost")
                return client.data(hops + MESSAGE)  # the reply to the final dot

        code, text = yield deferToThread(send)
        self.assertEqual((code, text), (554, b"5.4.6 This message is looping: it has been forwarded too many times"))
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "active")), [])
        self.assertEqual(len(self.mailbox("user@localhost")), 1)

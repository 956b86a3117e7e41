"""Delivery during the SMTP session (jsmail.local.session): what goes straight into the
Maildir before the 250, what is queued instead, and what is refused; on real files
(the queue and the Maildirs in a temporary directory), with blocking work run at once
and a fake clock, then through a whole gateway over a real socket."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import stat
import subprocess
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from jsmail import reply
from jsmail._disk import GroupSync
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import MAX_DELIVERED_TO, LocalDelivery
from jsmail.local.session import PLAN_SECONDS, PLANNING_AT_ONCE, SessionDelivery, _MaildirFile
from jsmail.local.settings import LocalSettings
from jsmail.queue.store import MaildirQueue
from jsmail.route import Router
from jsmail.testing import runNow
from tests.test_integration import GatewayTestCase, queuedId

MESSAGE = b"Subject: hello\r\nFrom: <a@example.org>\r\n\r\nline one\r\nline two\r\n"


def inSession(message: object) -> bool:
    """Whether ``message`` is being delivered during the session (else it is queued)."""
    return isinstance(message, _MaildirFile)


def envelope(*recipients: str, **params: str) -> Envelope:
    return Envelope("a@example.org", tuple(Recipient(r, dict(params)) for r in recipients), arrival=0.0)


class SessionDeliveryTests(unittest.TestCase):
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

    def test_sameFileAsDeliveryFromTheQueue(self) -> None:
        """Byte for byte what local delivery writes from the queue: bare CRs, a CR
        before CR LF, a message not ending in CR LF or ending in a lone CR, 8-bit
        content and UTF-8 addresses, each cut into two writes at every octet."""
        contents = (MESSAGE, b"Subject: a\rb\r\n\r\nbare\rCR\r\r\nend\r\n", b"Subject: x\r\n\r\nno end",
                    b"Subject: x\r\n\r\nlone CR at the end\r", "Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n".encode())
        envelopes = (envelope("user@localhost"),
                     Envelope("jos\u00e9@example.org", (Recipient("\u00fcser@localhost"),), arrival=0.0),
                     Envelope("", (Recipient("User@LOCALHOST"),), arrival=0.0))
        self.known("user@localhost", "\u00fcser@localhost")
        for env in envelopes:
            self.sink.newMessage(env).abort()  # its plan looked at
            for data in contents:
                expected = self.fromQueue(env, data)
                for cut in range(len(data) + 1):
                    message, d = self.send(env, data[:cut], data[cut:])
                    self.assertTrue(inSession(message))
                    self.successResultOf(d)
                    [name] = os.listdir(message._maildir + "/new")
                    path = os.path.join(message._maildir, "new", name)
                    with open(path, "rb") as f:
                        self.assertEqual((cut, f.read()), (cut, expected))
                    os.unlink(path)

    def test_deliveredToLimitIsTheQueuesLimit(self) -> None:
        """MAX_DELIVERED_TO - 1 Delivered-To lines of other addresses are delivered, as
        from the queue; one more is refused, where the queue would bounce."""
        self.known("user@localhost")
        hops = b"".join(b"Delivered-To: hop%d@example.org\r\n" % i for i in range(MAX_DELIVERED_TO - 1))
        expected = self.fromQueue(envelope("user@localhost"), hops + MESSAGE)
        message, d = self.send(envelope("user@localhost"), hops + MESSAGE)
        self.successResultOf(d)
        self.assertEqual(self.inbox(), [expected])
        more = b"Delivered-To: one@example.org\r\n" + hops + MESSAGE
        message, d = self.send(envelope("user@localhost"), more)
        self.assertEqual(self.failureResultOf(d, SMTPReplyError).value.reply, reply.TOO_MANY_DELIVERED_TO)
        incoming = self.queue.newMessage(envelope("user@localhost"))
        incoming.write(more)
        queueId = self.successResultOf(incoming.commit())
        queued = QueuedMessage(queueId, envelope("user@localhost"), lambda: self.queue.openMessage(queueId))
        [result] = self.successResultOf(self.local.deliver(queued, [Recipient("user@localhost")]))
        self.assertEqual(result.reply, reply.TOO_MANY_DELIVERED_TO)

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
        self.assertEqual([e["agent"] for e in self.events if e.get("event") == "attempt"], ["local"])

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

    def test_dotQmailMadeDuringASlowDataIsFollowed(self) -> None:
        """A forward set up while a message trickles in (a DATA may last as long as the
        client keeps sending) is not bypassed: the plan is looked at again at the final
        dot; the client hears 451 and, trying again, is queued."""
        self.known("user@localhost")
        message = self.sink.newMessage(envelope("user@localhost"))
        message.write(MESSAGE[:10])
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        message.write(MESSAGE[10:])
        error = self.failureResultOf(message.commit(), SMTPReplyError).value
        self.assertEqual(error.reply, reply.DELIVERY_ERROR)
        self.assertIn("plan changed", error.reason)
        self.assertEqual((self.inbox(), os.listdir(self.queue.tmpDir)), ([], []))
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))

    def test_lookBegunBeforeAForwardDoesNotUndoIt(self) -> None:
        """A slow look at the plan, begun before a .qmail forward was made, ends after a
        final dot found the forward: what the dot found stands, and the next message
        is queued, not refused with 451 once more."""
        self.known("user@localhost")
        self.clock.advance(PLAN_SECONDS - 1)
        trickling = self.sink.newMessage(envelope("user@localhost"))  # the plan still trusted
        trickling.write(MESSAGE)
        self.clock.advance(1)
        looks: list[tuple[defer.Deferred[Any], Any]] = []
        now = self.local.runInThread

        def slowLooks(f: Any, *args: Any) -> Any:
            if f != self.sink._plan:
                return now(f, *args)
            d: defer.Deferred[Any] = defer.Deferred()
            looks.append((d, f(*args)))  # the disk as it is now, the answer later
            return d

        self.local.runInThread = slowLooks
        self.sink.newMessage(envelope("user@localhost")).abort()  # the plan is old: a look begins
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        self.clock.advance(1)
        self.assertEqual(self.failureResultOf(trickling.commit(), SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
        [(d, answer)] = looks
        d.callback(answer)  # the Maildir, as it was
        message = self.sink.newMessage(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        message.abort()

    def test_aliasMadeWithinThePlansTimeIsFollowed(self) -> None:
        """An alias added a moment after the plan was looked at (well within
        PLAN_SECONDS) takes effect for the next message's final dot."""
        aliases = os.path.abspath(self.mktemp())
        with open(aliases, "w") as f:
            f.write("")
        settings = LocalSettings(usersDir=self.usersDir, localDomains=("localhost",), aliases=aliases)
        self.local = LocalDelivery(self.root, runNow, "mx.test", self.queue.syncer, reactor=self.clock,
                                   settings=settings)
        self.sink = SessionDelivery(self.queue, self.local, Router(["localhost"], self.local), self.clock)
        self.known("user@localhost")
        with open(aliases, "w") as f:
            f.write("user: someone@example.org\n")
        os.utime(aliases, (1, 1))  # another stamp, whatever the clock's resolution
        message, d = self.send(envelope("user@localhost"))
        self.assertTrue(inSession(message))  # the plan known a moment ago
        self.assertEqual(self.failureResultOf(d, SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
        self.assertEqual(self.inbox(), [])

    def test_planSlowToLookAtIsAsOldAsItsStart(self) -> None:
        """A plan looked at on a slow disk is trusted PLAN_SECONDS from when the look
        began, not from when it ended."""
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.root, "localhost", "user", sub))
        looks: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def slowly(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            looks.append((d, f, args))
            return d

        self.local.runInThread = slowly
        self.sink.newMessage(envelope("user@localhost")).abort()
        self.clock.advance(PLAN_SECONDS)
        [(d, f, args)] = looks
        d.callback(f(*args))
        message = self.sink.newMessage(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        message.abort()
        self.assertEqual(len(looks), 2)  # looked at again

    def test_floodOfNewRecipientsLooksAtFewPlansAtOnce(self) -> None:
        """Messages to thousands of distinct recipients (a catch-all domain) while the
        disk is slow start at most PLANNING_AT_ONCE looks, not a thread job each; they
        are all queued, and looks start again once those end."""
        looks: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def slowly(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            looks.append((d, f, args))
            return d

        self.local.runInThread = slowly
        for n in range(2000):
            message = self.sink.newMessage(envelope(f"user{n}@localhost"))
            self.assertFalse(inSession(message))
            message.abort()
        self.assertEqual(len(looks), PLANNING_AT_ONCE)
        for d, f, args in looks:
            d.callback(f(*args))
        self.sink.newMessage(envelope("another@localhost")).abort()
        self.assertEqual(len(looks), PLANNING_AT_ONCE + 1)

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

    def test_maildirOnABindMountIsDeliveredNotRefused(self) -> None:
        """A Maildir reached through a bind mount of the queue's own file system has
        the queue's st_dev, yet a rename into it fails (EXDEV): the message is copied
        in, rather than the client hearing 451 on every other try."""
        if os.geteuid() != 0 or not shutil.which("mount"):
            raise unittest.SkipTest("a bind mount needs root")
        base = os.path.dirname(self.root)
        source = os.path.join(base, "elsewhere")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(source, sub))
        target = os.path.join(self.root, "localhost", "user")
        os.makedirs(target)
        if subprocess.run(["mount", "--bind", source, target], capture_output=True).returncode != 0:
            raise unittest.SkipTest("cannot bind-mount here")
        self.addCleanup(subprocess.run, ["umount", target], check=True)
        self.assertEqual(os.stat(target).st_dev, os.stat(self.queue.tmpDir).st_dev)
        self.known()
        self.sink.newMessage(envelope("user@localhost")).abort()  # its plan looked at
        for _ in range(2):
            message, d = self.send(envelope("user@localhost"))
            self.assertTrue(inSession(message))
            self.assertEqual(self.successResultOf(d), message.queueId)
        expected = b"Return-Path: <a@example.org>\nDelivered-To: user@localhost\n" + MESSAGE.replace(b"\r\n", b"\n")
        self.assertEqual(self.inbox(), [expected, expected])
        self.assertEqual((os.listdir(os.path.join(target, "tmp")), os.listdir(self.queue.tmpDir)), ([], []))

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

    def test_forwardedTooOftenToARecipientWithInstructionsIsRefusedAlike(self) -> None:
        """A message with MAX_DELIVERED_TO Delivered-To lines gets the same 554 at the
        dot whether its recipient's mail is delivered during the session or queued (it
        has a .qmail file): a reply that differed would tell a client who forwards
        mail, and the queue would only bounce it."""
        home = os.path.join(self.usersDir, "localhost", "fwd")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        self.known("user@localhost", "fwd@localhost")
        hops = b"".join(b"Delivered-To: hop%d@example.org\r\n" % i for i in range(MAX_DELIVERED_TO))
        refused = []
        for recipient in ("user@localhost", "fwd@localhost"):
            message, d = self.send(envelope(recipient), hops + MESSAGE)
            refused.append((inSession(message), self.failureResultOf(d, SMTPReplyError).value.reply))
        self.assertEqual(refused, [(True, reply.TOO_MANY_DELIVERED_TO), (False, reply.TOO_MANY_DELIVERED_TO)])
        self.assertEqual((self.queued(), os.listdir(self.queue.tmpDir)), ([], []))
        message, d = self.send(envelope("fwd@localhost"), hops[hops.index(b"\n") + 1:] + MESSAGE)
        self.assertEqual(self.queued(), [self.successResultOf(d)])

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

    def test_noMaildirYetIsQueuedAndNoneIsMade(self) -> None:
        """Delivery from the queue makes a Maildir, on the first delivery: looking at a
        plan makes none (a message refused at its end leaves no trace)."""
        self.sink.newMessage(envelope("new@localhost")).abort()  # the plan looked at
        message, d = self.send(envelope("new@localhost"))
        self.assertFalse(inSession(message))
        message.abort()
        self.assertFalse(os.path.exists(os.path.join(self.root, "localhost", "new")))

    def test_maildirMissingCurIsLeftToTheQueue(self) -> None:
        """A Maildir whose cur/ (or tmp/) was removed is queued, and delivery from the
        queue makes it whole again, rather than a message going into a Maildir readers
        cannot move it out of new/ in."""
        self.known("user@localhost")
        os.rmdir(os.path.join(self.root, "localhost", "user", "cur"))
        self.clock.advance(PLAN_SECONDS)
        self.sink.newMessage(envelope("user@localhost")).abort()  # its plan looked at again
        message, d = self.send(envelope("user@localhost"))
        self.assertFalse(inSession(message))
        self.assertEqual(self.inbox(), [])

    def test_failedSyncTakesTheFileBack(self) -> None:
        """Not known to be on disk: the file is removed, and the commit fails (451)."""
        self.known("user@localhost")

        def failingSync(path: str) -> None:
            raise OSError(5, "Input/output error")

        self.sink.syncer = GroupSync(lambda f, *a: defer.maybeDeferred(failingSync, *a))
        message, d = self.send(envelope("user@localhost"))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.inbox(), [])
        self.assertIsNone(message.deliveredInSession)

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

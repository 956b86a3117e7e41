"""Attacks on delivery during the SMTP session (jsmail.local.session), and the
failures a mail server engineer would look for: that it writes exactly what delivery
from the queue writes and refuses what it would bounce, that it never delivers where
the queue would not (a plan changed while a message came in, a slow look at a plan, a
Maildir half removed), that a flood of new recipients costs a bounded number of
looks, and that a Maildir on a bind mount is not refused for ever."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial import unittest

from jsmail import reply
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.interfaces import QueuedMessage
from jsmail.local.agent import MAX_DELIVERED_TO, LocalDelivery
from jsmail.local.session import PLAN_SECONDS, SessionDelivery
from jsmail.local.settings import LocalSettings
from jsmail.route import Router
from jsmail.testing import runNow
from tests.test_sessiondelivery import MESSAGE, SessionSinkCase, envelope, inSession


class SessionAttackTests(SessionSinkCase):
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
        looks = self.heldLooks()
        self.sink.newMessage(envelope("user@localhost")).abort()  # the plan is old: a look begins
        [(d, f, args)] = looks
        answer = f(*args)  # the disk as it is now, the answer later
        home = os.path.join(self.usersDir, "localhost", "user")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("&someone@example.org\n")
        self.clock.advance(1)
        self.assertEqual(self.failureResultOf(trickling.commit(), SMTPReplyError).value.reply, reply.DELIVERY_ERROR)
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
        looks = self.heldLooks()
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
        disk is slow start at most [local] concurrency looks, not a thread job each; they
        are all queued, and looks start again once those end."""
        looks = self.heldLooks()
        for n in range(2000):
            message = self.sink.newMessage(envelope(f"user{n}@localhost"))
            self.assertFalse(inSession(message))
            message.abort()
        self.assertEqual(len(looks), self.local.settings.concurrency)
        for d, f, args in looks:
            d.callback(f(*args))
        self.sink.newMessage(envelope("another@localhost")).abort()
        self.assertEqual(len(looks), self.local.settings.concurrency + 1)

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

    def test_hugeDeliveredToFieldsAreLeftToTheQueue(self) -> None:
        """Delivered-To fields past what is kept (64 KiB), fewer than the limit, do not
        get a queued message refused: delivery from the queue counts them."""
        self.known("fwd@localhost")
        fold = b"\r\n " + b"x" * 70
        huge = b"".join(b"Delivered-To: hop%d@example.org" % i + fold * 400 + b"\r\n" for i in range(3))
        message, d = self.send(envelope("new@localhost"), huge + MESSAGE)
        self.assertFalse(inSession(message))
        self.assertEqual(self.queued(), [self.successResultOf(d)])

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

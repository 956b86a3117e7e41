"""The queue tools against a running delivery service (newcomer review item 2): after
``jsmail queue hold``, ``release``, ``flush`` and ``requeue`` delivered nothing until
the delivery process restarted, and the log said the held message was "removed".

Each test runs a :class:`DeliveryService` in this process over a real queue in a
temporary directory, with the wake-up FIFO (``queue/trigger``) of a real delivery
process, and runs the ``jsmail queue`` command as an operator would.  The recipient's
instructions name a Maildir that does not exist yet, so delivery is deferred until
the test makes it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jsmail import cli
from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus
from jsmail.local.maildir import makeMaildir
from jsmail.queue.admin import readQueueEntry
from jsmail.reply import PeerReply
from jsmail.route import Router
from jsmail.send.scheduler import Scheduler
from jsmail.send.service import DeliveryService
from jsmail.testing import MemoryQueue, RecordingAgent, runNow
from tests.test_loops import maillog, watchLog

WAIT = 10.0  # seconds: every wait below is a bounded poll
MESSAGE = b"Subject: held\r\n\r\nWaiting for a mailbox.\r\n"


class QueueToolTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.queueDir = os.path.join(self.data, "queue")
        self.maildir = os.path.join(self.data, "held-Maildir")
        os.makedirs(self.data)
        aliases = os.path.join(self.data, "aliases")
        with open(aliases, "w") as f:
            f.write(f"held: {self.maildir}/\n")
        previous = signal.getsignal(signal.SIGALRM)
        self.addCleanup(signal.signal, signal.SIGALRM, previous)
        config = loadConfig(overrides={"server.data": self.data, "server.hostname": "mx.example.test",
                                       "server.domains": ["example.test"], "local.aliases": aliases,
                                       "queue.retry_first": 3600, "remote.mta_sts": False,
                                       "remote.dns_server": "127.0.0.1:53"})
        self.service = DeliveryService(config, reactor, flushOnSignal=True)
        self.events = watchLog(self)

    @defer.inlineCallbacks
    def waitFor(self, predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def deferredMessage(self) -> Any:
        """Start the service, queue a message and wait for its first attempt to fail."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield self.waitFor(lambda: self.service.scheduler.running, "the delivery service to start")
        envelope = Envelope("a@example.org", (Recipient("held@example.test"),), arrival=time.time())
        queueId = yield self.service.scheduler.funnel.enqueue(envelope, MESSAGE)
        yield self.waitFor(lambda: self.attempts(queueId) == 1, "the first attempt")
        self.assertEqual([e["recipient"] for e in maillog(self.events, "deferred")], ["held@example.test"])
        return queueId

    def attempts(self, queueId: str) -> int:
        try:
            return readQueueEntry(self.queueDir, queueId).envelope.attempts
        except Exception:
            return 0

    def jsmailQueue(self, *arguments: str) -> defer.Deferred[str]:
        """Run ``jsmail --data DATA queue ARGUMENTS`` (blocking, so in a thread); fire
        with what it printed."""

        def run() -> str:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(cli.main(["--data", self.data, "queue", *arguments]), 0)
            return out.getvalue()

        return deferToThread(run)

    def delivered(self) -> list[str]:
        new = os.path.join(self.maildir, "new")
        return os.listdir(new) if os.path.isdir(new) else []

    def removed(self, queueId: str) -> list[dict[str, Any]]:
        return [e for e in maillog(self.events, "removed") if e["queueId"] == queueId]

    @defer.inlineCallbacks
    def assertDeliveredOnce(self, queueId: str) -> Any:
        yield self.waitFor(lambda: self.removed(queueId), "the message to be delivered")
        self.assertEqual(len(self.delivered()), 1)
        self.assertEqual(os.listdir(os.path.join(self.queueDir, "active")), [])
        self.assertEqual(len(self.removed(queueId)), 1)

    @defer.inlineCallbacks
    def test_heldThenReleasedMessageIsDelivered(self) -> Any:
        """A held message leaves the running plan without being logged as removed; once
        released it is taken up at once and delivered."""
        queueId = yield self.deferredMessage()
        printed = yield self.jsmailQueue("hold", queueId)
        self.assertEqual(printed, f"jsmail queue: {queueId} held\n")
        yield self.waitFor(lambda: self.service.scheduler.queued == 0, "the held message to leave the plan")
        self.assertEqual(self.removed(queueId), [])
        self.assertIn(queueId, os.listdir(os.path.join(self.queueDir, "hold")))
        makeMaildir(self.maildir)
        yield self.jsmailQueue("release", queueId)
        yield self.assertDeliveredOnce(queueId)

    @defer.inlineCallbacks
    def test_heldMessageIsNotDeliveredUntilReleased(self) -> Any:
        queueId = yield self.deferredMessage()
        yield self.jsmailQueue("hold", queueId)
        yield self.waitFor(lambda: self.service.scheduler.queued == 0, "the held message to leave the plan")
        makeMaildir(self.maildir)
        self.service.scheduler.flush()
        yield self.service.scheduler.rescan()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((self.delivered(), self.attempts(queueId)), ([], 1))

    @defer.inlineCallbacks
    def test_flushDeliversADeferredMessageNow(self) -> Any:
        queueId = yield self.deferredMessage()
        makeMaildir(self.maildir)
        printed = yield self.jsmailQueue("flush")
        self.assertEqual(printed,
                         "jsmail queue flush: asked the delivery process to retry every queued message now\n")
        yield self.assertDeliveredOnce(queueId)

    @defer.inlineCallbacks
    def test_requeueDeliversADeferredMessageNow(self) -> Any:
        queueId = yield self.deferredMessage()
        makeMaildir(self.maildir)
        printed = yield self.jsmailQueue("requeue", queueId)
        self.assertEqual(printed, "jsmail queue: 1 message(s) requeued\n")
        yield self.assertDeliveredOnce(queueId)

    @defer.inlineCallbacks
    def test_releasedMessageIsRetriedThenRequeuedAndFlushed(self) -> Any:
        """Released while the mailbox is still missing, the message is tried again at
        once (and deferred again); ``requeue`` of everything, then ``flush``, deliver it
        once the mailbox is there."""
        queueId = yield self.deferredMessage()
        yield self.jsmailQueue("hold", queueId)
        yield self.waitFor(lambda: self.service.scheduler.queued == 0, "the held message to leave the plan")
        yield self.jsmailQueue("release", queueId)
        yield self.waitFor(lambda: self.attempts(queueId) == 2, "the attempt after the release")
        makeMaildir(self.maildir)
        yield self.jsmailQueue("requeue")
        yield self.assertDeliveredOnce(queueId)


class HeldWhilePlannedTests(TestCase):
    """The same rules in memory: the scheduler and a queue an operator changes under it."""

    def test_messageHeldWhilePlannedComesBackWhenReleased(self) -> None:
        events = watchLog(self)
        clock, queue = Clock(), MemoryQueue()
        answers = [DeliveryStatus.TEMPORARY, DeliveryStatus.DELIVERED]
        agent = RecordingAgent(lambda rcpt: (answers.pop(0), PeerReply(451, "4.2.0", "later")))
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        scheduler.startService()
        envelope = Envelope("a@localhost", (Recipient("x@localhost"),))
        queueId = self.successResultOf(scheduler.funnel.enqueue(envelope, b"x\r\n"))
        clock.advance(0)
        held = queue.messages.pop(queueId)  # jsmail queue hold
        scheduler.flush()
        clock.advance(0)
        self.assertEqual((scheduler.queued, maillog(events, "removed")), (0, []))
        queue.messages[queueId] = held  # jsmail queue release
        self.successResultOf(scheduler.rescan())
        scheduler.flush()
        clock.advance(0)
        self.assertEqual((len(agent.deliveries), queue.messages), (2, {}))
        self.assertEqual([e["queueId"] for e in maillog(events, "removed")], [queueId])

"""Nothing one queue file does stops the others, and no message can stay unscheduled:
the findings of the crash and fuzzing trials against the queue and the scheduler."""

from __future__ import annotations

import errno
import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from jsmail.envelope import Envelope, EnvelopeFormatError, Recipient
from jsmail.interfaces import DeliveryStatus
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue
from jsmail.reply import PeerReply
from jsmail.route import Router
from jsmail.send.scheduler import Scheduler
from jsmail.send.settings import QueueSettings
from jsmail.testing import RecordingAgent, runNow

GOOD = Envelope("a@b.test", (Recipient("x@localhost"),))


def envelopeLine(**changes: object) -> bytes:
    data = json.loads(GOOD.toBytes())
    data.update(changes)
    return json.dumps(data).encode()


class EnvelopeDecoderTests(TestCase):
    def test_fieldsOfTheWrongTypeAreAFormatError(self) -> None:
        """Fuzzing found envelopes that loaded and then made every attempt fail with a
        traceback, for ever: each field's type is now checked when read."""
        recipient = json.loads(GOOD.toBytes())["recipients"][0]
        for line in (envelopeLine(nextAttempt="soon"), envelopeLine(attempts="1"), envelopeLine(attempts=-1),
                     envelopeLine(recipients=[{**recipient, "address": 42}]), envelopeLine(recipients=[]),
                     envelopeLine(mailParams={"SIZE": 5}), envelopeLine(sender=None), envelopeLine(extra=1),
                     envelopeLine(recipients=[{**recipient, "state": "lost"}]), b"[1, 2]", b"\xff"):
            self.assertRaises(EnvelopeFormatError, Envelope.fromBytes, line)

    def test_deeplyNestedJsonIsAFormatError(self) -> None:
        """A RecursionError from the JSON parser was not caught, and stopped recovery."""
        self.assertRaises(EnvelopeFormatError, Envelope.fromBytes, b"[" * 100_000 + b"]" * 100_000)
        self.assertRaises(EnvelopeFormatError, Envelope.fromBytes, b'{"a":' * 5000 + b"1" + b"}" * 5000)


class RecoveryTests(TestCase):
    def queue(self) -> MaildirQueue:
        queue = MaildirQueue(self.mktemp(), runNow, spares=0)
        self.addCleanup(queue.close)
        return queue

    def enqueue(self, queue: MaildirQueue, envelope: Envelope = GOOD) -> str:
        incoming = queue.newMessage(envelope)
        incoming.write(b"Subject: x\r\n\r\nx\r\n")
        return self.successResultOf(incoming.commit())

    def test_badFilesAreSetAsideAndTheOthersRecovered(self) -> None:
        """One file with deeply nested JSON, or a field of the wrong type, used to stop
        recovery, and none of the valid messages beside it was delivered."""
        queue = self.queue()
        good = [self.enqueue(queue) for _ in range(10)]
        bad = {"0BAD1": b"[" * 50_000 + b"]" * 50_000, "0BAD2": envelopeLine(nextAttempt="soon"),
               "0BAD3": envelopeLine(attempts="many"), "0BAD4": b"not json at all"}
        for name, line in bad.items():
            with open(os.path.join(queue.activeDir, name), "wb") as f:
                f.write(line + b"\nSubject: x\r\n\r\nx\r\n")
        found = self.successResultOf(queue.recover())
        self.assertEqual(sorted(queueId for queueId, _ in found), sorted(good))
        self.assertEqual(sorted(os.listdir(queue.corruptDir)), sorted(bad))

    def test_fileDeliveredWhileRecoveryListsIsSkipped(self) -> None:
        """Crash trials: a message delivered and removed while start-up recovery was
        scanning was taken for a corrupt file, moving it raised FileNotFoundError, and
        the whole recovery pass failed."""
        queue = self.queue()
        gone, kept = self.enqueue(queue), self.enqueue(queue)
        read = queue._readEnvelope

        def removedJustBefore(queueId: str) -> Envelope:
            if queueId == gone:
                os.unlink(os.path.join(queue.activeDir, gone))
            return read(queueId)

        queue._readEnvelope = removedJustBefore  # type: ignore[method-assign]
        found = self.successResultOf(queue.recover())
        self.assertEqual([queueId for queueId, _ in found], [kept])
        self.assertEqual(os.listdir(queue.corruptDir), [])


class _UnwritableQueue(MemoryQueue):
    """A queue on a full disk: envelope updates fail."""

    def update(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        return defer.fail(OSError(errno.ENOSPC, "No space left on device"))


class SchedulerRescueTests(TestCase):
    def test_unannouncedMailIsDeliveredByThePeriodicRescan(self) -> None:
        """Killing only the delivery process under load left acknowledged messages in
        active/ until an operator flushed: the scheduler now looks at the whole queue
        every rescan_interval seconds, as qmail-send does."""
        clock, queue, agent = Clock(), MemoryQueue(), RecordingAgent()
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test",
                              QueueSettings(rescanInterval=60.0))
        scheduler.startService()
        self.addCleanup(scheduler.stopService)
        incoming = queue.newMessage(GOOD)  # queued, but the notice never arrives
        incoming.write(b"x\r\n")
        self.successResultOf(incoming.commit())
        clock.advance(59)
        self.assertEqual(agent.deliveries, [])
        clock.advance(1)
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 1)
        self.assertEqual(queue.messages, {})

    def test_failedEnvelopeUpdateStaysScheduled(self) -> None:
        """A full disk made the envelope update fail, and the message was forgotten
        until a restart: it is now retried on schedule all the same."""
        clock, queue = Clock(), _UnwritableQueue()
        answers = [DeliveryStatus.TEMPORARY, DeliveryStatus.DELIVERED]
        agent = RecordingAgent(lambda rcpt: (answers.pop(0), PeerReply(451, "4.4.1", "later")))
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test",
                              QueueSettings(retryFirst=300.0))
        scheduler.startService()
        self.addCleanup(scheduler.stopService)
        self.successResultOf(scheduler.funnel.enqueue(GOOD, b"x\r\n"))
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        clock.advance(300)
        self.assertEqual(len(agent.deliveries), 2)
        self.assertEqual(queue.messages, {}, "delivered at the retry, and removed")

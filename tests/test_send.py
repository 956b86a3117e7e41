"""The scheduler on an injected clock: retries, give-up, bounces, restart."""

from __future__ import annotations

import email

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from jsmail import reply
from jsmail.envelope import Envelope, Recipient, RecipientState
from jsmail.interfaces import DeliveryStatus
from jsmail.reply import PeerReply
from jsmail.route import Router
from jsmail.send.scheduler import Scheduler, retryDelay
from jsmail.send.settings import QueueSettings
from jsmail.testing import MemoryQueue, RecordingAgent, runNow

DAY = 86400.0
LATER = PeerReply(451, "4.4.1", "later")
CODES = {DeliveryStatus.DELIVERED: 250, DeliveryStatus.TEMPORARY: 451, DeliveryStatus.PERMANENT: 550}


class RetryDelayTests(TestCase):
    def test_grows_then_caps(self) -> None:
        schedule = QueueSettings(retryFirst=300, retryFactor=2, retryMaximum=3600)
        self.assertEqual([retryDelay(n, schedule) for n in range(1, 7)], [300, 600, 1200, 2400, 3600, 3600])


class SchedulerTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.queue = MemoryQueue()
        self.answers: dict[str, DeliveryStatus] = {}
        self.agent = RecordingAgent(self.answer)
        self.router = Router(["localhost"], self.agent, self.agent)
        self.scheduler = Scheduler(self.queue, self.router, self.clock, runNow, "mx.test",
                                   QueueSettings(retryFirst=300, retryFactor=2, retryMaximum=3600, giveUp=DAY))

    def answer(self, recipient: str) -> tuple[DeliveryStatus, PeerReply]:
        status = self.answers.get(recipient, DeliveryStatus.DELIVERED)
        return status, PeerReply(CODES[status], "", f"reply for {recipient}")

    def enqueue(self, sender: str, *recipients: str, body: bytes = b"Subject: hello\r\n\r\nbody\r\n") -> str:
        envelope = Envelope(sender, tuple(Recipient(r) for r in recipients), arrival=self.clock.seconds())
        return self.successResultOf(self.scheduler.funnel.enqueue(envelope, body))

    def bounces(self) -> list[tuple[Envelope, bytes]]:
        """Bounces delivered so far, with their envelopes."""
        return [(d.envelope, d.data) for d in self.agent.deliveries if d.envelope.isBounce]

    def maillog(self) -> list[dict[str, object]]:
        """The operator log's events from now on."""
        events: list[dict[str, object]] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_namespace") == "jsmail.maillog":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    def test_delivered_and_removed(self) -> None:
        self.scheduler.startService()
        queueId = self.enqueue("a@localhost", "x@localhost", "y@localhost")
        self.clock.advance(0)
        [delivery] = self.agent.deliveries
        self.assertEqual((delivery.queueId, delivery.recipients, delivery.data),
                         (queueId, ["x@localhost", "y@localhost"], b"Subject: hello\r\n\r\nbody\r\n"))
        self.assertEqual(self.queue.messages, {})
        self.assertEqual(self.scheduler.queued, 0)

    def test_retries_then_exactly_one_bounce(self) -> None:
        """Temporary failures are retried on schedule; at the give-up age the sender
        gets one bounce naming the recipient and the last error (and before it, after
        4 hours, one delay warning)."""
        self.answers["x@localhost"] = DeliveryStatus.TEMPORARY
        self.scheduler.startService()
        queueId = self.enqueue("a@localhost", "x@localhost", "ok@localhost")
        self.clock.advance(0)
        attemptTimes = [self.clock.seconds()]
        for _ in range(40):
            if queueId not in self.queue.messages:
                break
            envelope = self.queue.messages[queueId][0]
            self.assertEqual([r.state for r in envelope.recipients], [RecipientState.PENDING, RecipientState.DELIVERED])
            self.clock.advance(envelope.nextAttempt - self.clock.seconds())
            attemptTimes.append(self.clock.seconds())
        gaps = [b - a for a, b in zip(attemptTimes, attemptTimes[1:], strict=False)]
        self.assertEqual(gaps[:5], [300, 600, 1200, 2400, 3600])
        self.assertLessEqual(attemptTimes[-1] - attemptTimes[0], DAY)
        self.assertNotIn(queueId, self.queue.messages)
        [(_, warning), (bounce, body)] = self.bounces()
        self.assertIn(b"Action: delayed", warning)
        self.assertEqual((bounce.sender, [r.address for r in bounce.recipients]), ("", ["a@localhost"]))
        report = email.message_from_bytes(body)
        self.assertEqual(report.get_content_type(), "multipart/report")
        status = report.get_payload()[1].get_payload()
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; x@localhost")
        self.assertEqual(status[1]["Action"], "failed")
        self.assertEqual((status[1]["Status"], status[1]["Diagnostic-Code"]),
                         ("4.0.0", "smtp; 451 reply for x@localhost (gave up: in the queue for too long)"))
        self.assertIn(b"Subject: hello", body)
        # Each recipient was delivered to once: ok@localhost on the first attempt only.
        self.assertEqual(sum(d.recipients.count("ok@localhost") for d in self.agent.deliveries), 1)

    def test_give_up_is_in_the_operator_log_and_only_for_temporary_failures(self) -> None:
        """On the last attempt a temporary failure fails for good, noted as given up; a
        permanent one is only itself."""
        events = self.maillog()
        self.answers.update({"x@localhost": DeliveryStatus.TEMPORARY, "bad@localhost": DeliveryStatus.PERMANENT})
        self.scheduler.startService()
        envelope = Envelope("a@localhost", (Recipient("x@localhost"), Recipient("bad@localhost")),
                            arrival=self.clock.seconds() - DAY)
        self.successResultOf(self.scheduler.funnel.enqueue(envelope, b"Subject: s\r\n\r\nbody\r\n"))
        self.clock.advance(0)
        self.assertEqual([(e["event"], e["recipient"], e["detail"]) for e in events if e["event"] == "failed"], [
            ("failed", "x@localhost", "451 reply for x@localhost (gave up: in the queue for too long)"),
            ("failed", "bad@localhost", "550 reply for bad@localhost")])
        [(_, body)] = self.bounces()
        codes = [part["Diagnostic-Code"] for part in email.message_from_bytes(body).get_payload()[1].get_payload()[1:]]
        self.assertEqual(codes, ["smtp; 451 reply for x@localhost (gave up: in the queue for too long)",
                                 "smtp; 550 reply for bad@localhost"])

    def test_permanent_failure_bounces_at_once(self) -> None:
        self.answers["bad@localhost"] = DeliveryStatus.PERMANENT
        self.scheduler.startService()
        self.enqueue("a@localhost", "bad@localhost")
        self.clock.advance(0)
        [(bounce, body)] = self.bounces()
        self.assertIn(b"Final-Recipient: rfc822; bad@localhost", body)
        self.assertIn(b"Diagnostic-Code: smtp; 550 reply for bad@localhost", body)

    def test_never_bounce_a_bounce(self) -> None:
        self.answers["a@localhost"] = DeliveryStatus.PERMANENT
        self.scheduler.startService()
        self.enqueue("", "a@localhost")
        self.clock.advance(0)
        self.assertEqual(self.queue.messages, {})
        self.assertEqual(len(self.agent.deliveries), 1)

    def test_bounce_to_failing_sender_is_dropped(self) -> None:
        """A bounce that cannot be delivered is not bounced again (null sender)."""
        self.answers["bad@localhost"] = DeliveryStatus.PERMANENT
        self.answers["a@localhost"] = DeliveryStatus.PERMANENT
        self.scheduler.startService()
        self.enqueue("a@localhost", "bad@localhost")
        self.clock.advance(0)
        self.assertEqual(self.queue.messages, {})
        self.assertEqual([d.recipients for d in self.agent.deliveries], [["bad@localhost"], ["a@localhost"]])

    def test_restart_picks_up_the_plan(self) -> None:
        """A new scheduler on the same store finds the message and tries it on time."""
        self.answers["x@localhost"] = DeliveryStatus.TEMPORARY
        self.scheduler.startService()
        queueId = self.enqueue("a@localhost", "x@localhost")
        self.clock.advance(0)
        self.successResultOf(self.scheduler.stopService())
        self.answers.clear()
        restarted = Scheduler(self.queue, self.router, self.clock, runNow, "mx.test")
        restarted.startService()
        self.clock.advance(299)
        self.assertIn(queueId, self.queue.messages)
        self.clock.advance(1)
        self.assertNotIn(queueId, self.queue.messages)

    def test_agent_failure_is_a_temporary_failure(self) -> None:
        """An agent that breaks its promise (fails instead of reporting) defers the
        message rather than losing it."""

        class Broken(RecordingAgent):
            def deliver(self, message, recipients):  # type: ignore[no-untyped-def]
                return defer.fail(RuntimeError("agent bug"))

        events = self.maillog()
        scheduler = Scheduler(self.queue, Router(["localhost"], Broken()), self.clock, runNow, "mx.test")
        scheduler.startService()
        envelope = Envelope("a@localhost", (Recipient("x@localhost"),), arrival=self.clock.seconds())
        queueId = self.successResultOf(scheduler.funnel.enqueue(envelope, b"x\r\n"))
        self.clock.advance(0)
        [recipient] = self.queue.messages[queueId][0].recipients
        self.assertEqual(recipient.state, RecipientState.PENDING)
        self.assertEqual(recipient.lastReply, "451 4.3.0 Temporary local delivery error")
        [deferred] = [e for e in events if e["event"] == "deferred"]
        self.assertEqual(deferred["detail"], "451 4.3.0 Temporary local delivery error (agent bug)")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class NoticeTests(TestCase):
    """Hearing of a message twice (recovery and a notice) delivers it once."""

    def test_schedule_twice_delivers_once(self) -> None:
        clock = Clock()
        queue = MemoryQueue()
        agent = RecordingAgent()
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        envelope = Envelope("a@localhost", (Recipient("x@localhost"),))
        incoming = queue.newMessage(envelope)
        queueId = self.successResultOf(incoming.commit())
        scheduler.schedule(queueId, envelope)
        scheduler.startService()  # recovery finds the same message
        self.successResultOf(scheduler.scheduleFromQueue(queueId))
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 1)
        self.assertEqual(queue.messages, {})

    def test_noticeForAMessageAlreadyGoneIsIgnored(self) -> None:
        """The notice can come after a rescan delivered the message and removed it."""
        clock = Clock()
        scheduler = Scheduler(MemoryQueue(), Router(["localhost"], RecordingAgent()), clock, runNow, "mx.test")
        scheduler.startService()
        self.assertIsNone(self.successResultOf(scheduler.scheduleFromQueue("1234.gone")))
        self.assertEqual(scheduler.queued, 0)

    def test_accepted_while_recovering(self) -> None:
        """A message queued (and being delivered) while recovery lists the queue is
        delivered once, not again when the listing arrives."""
        from zope.interface import implementer

        from jsmail.interfaces import IDeliveryAgent

        class SlowRecoveryQueue(MemoryQueue):
            def recover(self):  # type: ignore[no-untyped-def]
                self.listNow: defer.Deferred[None] = defer.Deferred()
                return self.listNow.addCallback(lambda _: MemoryQueue.recover(self))

        @implementer(IDeliveryAgent)
        class HeldAgent:
            calls = 0

            def deliver(self, message, recipients):  # type: ignore[no-untyped-def]
                self.calls += 1
                return defer.Deferred()

        queue, agent, clock = SlowRecoveryQueue(), HeldAgent(), Clock()
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        scheduler.startService()
        incoming = scheduler.funnel.newMessage(Envelope("a@example.org", (Recipient("u@localhost"),)))
        incoming.write(b"Subject: x\r\n\r\nx\r\n")
        incoming.commit()
        clock.advance(0)  # its attempt is in progress
        queue.listNow.callback(None)  # recovery now finds the message
        clock.advance(0)
        self.assertEqual(agent.calls, 1)

    def test_listing_of_a_delivered_message_is_ignored(self) -> None:
        class SlowRecoveryQueue(MemoryQueue):
            def recover(self):  # type: ignore[no-untyped-def]
                snapshot = MemoryQueue.recover(self)
                self.listNow: defer.Deferred[None] = defer.Deferred()
                return self.listNow.addCallback(lambda _: snapshot).addCallback(lambda d: d)

        queue, agent, clock = SlowRecoveryQueue(), RecordingAgent(), Clock()
        envelope = Envelope("a@example.org", (Recipient("u@localhost"),))
        queueId = self.successResultOf(queue.newMessage(envelope).commit())
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        scheduler.startService()
        self.successResultOf(scheduler.scheduleFromQueue(queueId))  # a notice, before the listing
        clock.advance(0)
        self.assertEqual(queue.messages, {})
        queue.listNow.callback(None)  # the listing still names it
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 1)


class BounceTests(TestCase):
    """RFC 3461/3464 details of the bounce, and the one double bounce."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = MemoryQueue()
        self.agent = RecordingAgent(lambda rcpt: (
            DeliveryStatus.PERMANENT if rcpt.startswith("bad") else DeliveryStatus.DELIVERED,
            PeerReply(550, "5.1.1", f"{rcpt} unknown")))
        self.scheduler = Scheduler(self.queue, Router(["localhost"], self.agent), self.clock, runNow, "mx.test",
                                   postmaster="postmaster@localhost")
        self.scheduler.startService()

    def deliver(self, envelope: Envelope, body: bytes = b"Subject: s\r\n\r\nthe body\r\n") -> list:
        self.successResultOf(self.scheduler.funnel.enqueue(envelope, body))
        self.clock.advance(0)
        return [d for d in self.agent.deliveries if d.envelope.isBounce]

    def test_ret_full_envid_orcpt(self) -> None:
        """ENVID and ORCPT come back as the client gave them, in xtext (RFC 3461 section
        4; security review L-1), and RET=FULL returns the whole message to a trusted
        sender."""
        [bounce] = self.deliver(Envelope("a@localhost", (Recipient("bad@localhost", {"ORCPT": "rfc822;bad+2Bx@localhost"}),),
                                         mailParams={"RET": "FULL", "ENVID": "ID+2B1"}, trusted=True))
        report = email.message_from_bytes(bounce.data)
        status = report.get_payload()[1].get_payload()
        self.assertEqual(status[0]["Original-Envelope-Id"], "ID+2B1")
        self.assertEqual(status[1]["Original-Recipient"], "rfc822; bad+2Bx@localhost")
        returned = report.get_payload()[2]
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn(b"the body", bounce.data)

    def test_diagnosticCodeNamesWhoSaidIt(self) -> None:
        """RFC 3464 section 2.3.6: a remote server's reply is "smtp;", jsmail's own
        reason goes under its own type, and Status comes from the reply's code."""
        peer = RecordingAgent(lambda rcpt: (DeliveryStatus.PERMANENT, PeerReply(550, "5.1.1", "unknown user")))
        own = RecordingAgent(lambda rcpt: (DeliveryStatus.PERMANENT, reply.LOOPING))
        bodies = []
        for agent in (peer, own):
            scheduler = Scheduler(MemoryQueue(), Router(["localhost"], agent), self.clock, runNow, "mx.test")
            scheduler.startService()
            self.successResultOf(scheduler.funnel.enqueue(Envelope("a@localhost", (Recipient("bad@localhost"),)),
                                                          b"Subject: s\r\n\r\nbody\r\n"))
            self.clock.advance(0)
            [bounce] = [d for d in agent.deliveries if d.envelope.isBounce]
            bodies.append(email.message_from_bytes(bounce.data).get_payload()[1].get_payload()[1])
        self.assertEqual([(b["Status"], b["Diagnostic-Code"]) for b in bodies], [
            ("5.1.1", "smtp; 550 5.1.1 unknown user"),
            ("5.4.6", "X-jsmail; 550 5.4.6 This message is looping: it already has my Delivered-To line")])

    def test_headers_only_by_default(self) -> None:
        [bounce] = self.deliver(Envelope("a@localhost", (Recipient("bad@localhost"),)))
        self.assertIn(b"Content-Type: text/rfc822-headers", bounce.data)
        self.assertNotIn(b"the body", bounce.data)

    def test_notify_never_means_no_bounce(self) -> None:
        self.assertEqual(self.deliver(Envelope("a@localhost", (Recipient("bad@localhost", {"NOTIFY": "NEVER"}),))), [])
        self.assertEqual(self.queue.messages, {})

    def test_undeliverable_bounce_goes_to_postmaster_once(self) -> None:
        bounces = self.deliver(Envelope("bad@localhost", (Recipient("bad2@localhost"),)))
        self.assertEqual([(b.envelope.recipients[0].address, b.envelope.protocol) for b in bounces],
                         [("bad@localhost", "local"), ("postmaster@localhost", "double-bounce")])
        self.assertIn(b"Subject: Undeliverable bounce", bounces[1].data)
        self.assertEqual(self.queue.messages, {})

    def test_failed_double_bounce_is_dropped(self) -> None:
        self.scheduler.postmaster = "bad-postmaster@localhost"
        bounces = self.deliver(Envelope("bad@localhost", (Recipient("bad2@localhost"),)))
        self.assertEqual(len(bounces), 2)
        self.assertEqual(self.queue.messages, {})


class FlushTests(TestCase):
    def test_flush_makes_retries_due_now(self) -> None:
        clock = Clock()
        queue = MemoryQueue()
        answers = [DeliveryStatus.TEMPORARY, DeliveryStatus.DELIVERED]
        agent = RecordingAgent(lambda rcpt: (answers.pop(0), LATER))
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        scheduler.startService()
        self.successResultOf(scheduler.funnel.enqueue(Envelope("a@localhost", (Recipient("x@localhost"),)), b"x\r\n"))
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 1)
        scheduler.flush()
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 2)
        self.assertEqual(queue.messages, {})


class OperatorTests(TestCase):
    def test_message_deleted_by_an_operator_is_dropped(self) -> None:
        """The scheduler reads the envelope afresh before each attempt: a message an
        operator deleted (or held) meanwhile is dropped from the plan, not delivered."""
        clock = Clock()
        queue = MemoryQueue()
        agent = RecordingAgent(lambda rcpt: (DeliveryStatus.TEMPORARY, LATER))
        scheduler = Scheduler(queue, Router(["localhost"], agent), clock, runNow, "mx.test")
        scheduler.startService()
        queueId = self.successResultOf(scheduler.funnel.enqueue(Envelope("a@localhost", (Recipient("x@localhost"),)), b"x\r\n"))
        clock.advance(0)
        del queue.messages[queueId]  # jsmail queue delete
        scheduler.flush()
        clock.advance(0)
        self.assertEqual(len(agent.deliveries), 1)
        self.assertEqual(scheduler.queued, 0)


class StalledAgentTests(TestCase):
    def test_stalledRemoteDeliveriesDoNotStopLocalDelivery(self) -> None:
        """Security review M-5: every attempt, local or remote, took a slot of one
        semaphore, so remote deliveries stuck on a tarpit stopped local delivery.
        Each agent now has its own limit."""

        class Stalled(RecordingAgent):
            def deliver(self, message, recipients):  # type: ignore[no-untyped-def]
                return defer.Deferred()  # a tarpit: never answers

        clock, queue, local = Clock(), MemoryQueue(), RecordingAgent()
        scheduler = Scheduler(queue, Router(["localhost"], local, Stalled()), clock, runNow, "mx.test",
                              QueueSettings(concurrency=2))
        scheduler.startService()
        for n in range(5):
            self.successResultOf(scheduler.funnel.enqueue(Envelope("a@b.test", (Recipient(f"r{n}@far.test"),)),
                                                          b"x\r\n"))
        self.successResultOf(scheduler.funnel.enqueue(Envelope("a@b.test", (Recipient("me@localhost"),)), b"x\r\n"))
        clock.advance(0)
        self.assertEqual([d.recipients for d in local.deliveries], [["me@localhost"]])

"""Delivery status notifications (RFC 3461, 3464, 6522, 6533): which recipient is owed
which notice and when, on the scheduler over a memory queue and a clock; and what a
notice says, read back with the standard library's ``email`` package."""

from __future__ import annotations

import email
import io
import re
import smtplib
import socket
import time
from email.message import Message
from typing import Any, Sequence

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from jsmail.envelope import Envelope, Recipient, RecipientState
from jsmail.interfaces import DeliveryResult, DeliveryStatus, Handoff, IDeliveryAgent, QueuedMessage
from jsmail.reply import PeerReply
from jsmail.route import Router
from jsmail.send.dsn import Action, BareLineEnd, Notice, _Checked, writeDSN, xtext
from jsmail.send.scheduler import Scheduler
from jsmail.send.settings import QueueSettings
from jsmail.testing import Delivery, MemoryQueue, runNow
from tests.test_integration import CLIENT_TIMEOUT, DELIVERY_TIMEOUT, POLL_INTERVAL, GatewayTestCase

HOUR = 3600.0
BODY = b"Subject: the report\r\nMessage-ID: <m1@example.org>\r\n\r\nthe body\r\n"
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def report(data: bytes) -> tuple[Message, list[Message], Message]:
    """A notice as the ``email`` package reads it: the whole report, the status part's
    blocks (per-message fields, then one block per recipient) and the returned part.
    Python reads ``message/global-delivery-status`` as one message whose body holds the
    recipients' blocks, so they are read from there."""
    message = email.message_from_bytes(data)
    assert message.get_content_type() == "multipart/report", message.get_content_type()
    human, status, returned = message.get_payload()
    assert human.get_content_type() == "text/plain"
    if status.get_content_type() == "message/delivery-status":
        blocks = status.get_payload()
    else:
        [perMessage] = status.get_payload()
        text = perMessage.get_payload(decode=True).decode("utf-8")
        blocks = [perMessage] + [email.message_from_string(block) for block in re.split(r"\r?\n\r?\n", text)
                                 if block.strip()]
    return message, blocks, returned


def groups(data: bytes) -> list[tuple[str, str, str]]:
    """(Final-Recipient, Action, Status) of each recipient a notice names."""
    return [(g["Final-Recipient"], g["Action"], g["Status"]) for g in report(data)[1][1:]]


@implementer(IDeliveryAgent)
class ScriptedAgent:
    """Answers each recipient from ``script``: (status, handoff), delivered and final
    by default."""

    def __init__(self) -> None:
        self.script: dict[str, tuple[DeliveryStatus, Handoff]] = {}
        self.deliveries: list[Delivery] = []

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        with message.open() as f:
            self.deliveries.append(Delivery(message.queueId, message.envelope, [r.address for r in recipients],
                                            f.read()))
        results = []
        for r in recipients:
            status, handoff = self.script.get(r.address, (DeliveryStatus.DELIVERED, Handoff.DELIVERED))
            code = {DeliveryStatus.DELIVERED: (250, "2.0.0"), DeliveryStatus.TEMPORARY: (451, "4.2.0"),
                    DeliveryStatus.PERMANENT: (550, "5.1.1")}[status]
            results.append(DeliveryResult(r.address, status, PeerReply(*code, f"said of {r.address}"),
                                          remoteMTA="dns; mx.example.net", handoff=handoff))
        return defer.succeed(results)


class NoticeTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.queue = MemoryQueue()
        self.agent = ScriptedAgent()
        self.settings = QueueSettings(retryFirst=HOUR, retryFactor=1, retryMaximum=HOUR, giveUp=10 * HOUR,
                                      delayWarning=4 * HOUR)
        self.scheduler = self.startScheduler()

    def startScheduler(self) -> Scheduler:
        scheduler = Scheduler(self.queue, Router(["localhost"], self.agent, self.agent), self.clock, runNow,
                              "mx.test", self.settings, postmaster="postmaster@localhost")
        scheduler.startService()
        return scheduler

    def send(self, *recipients: Recipient, sender: str = "a@localhost", trusted: bool = False,
             **mailParams: str | None) -> str:
        envelope = Envelope(sender, recipients, mailParams=dict(mailParams), arrival=self.clock.seconds(),
                            trusted=trusted)
        queueId = self.successResultOf(self.scheduler.funnel.enqueue(envelope, BODY))
        self.clock.advance(0)
        return queueId

    def notices(self) -> list[Delivery]:
        return [d for d in self.agent.deliveries if d.envelope.isBounce]

    def refuse(self, address: str, status: DeliveryStatus = DeliveryStatus.PERMANENT) -> None:
        self.agent.script[address] = (status, Handoff.DELIVERED)


class WhenTests(NoticeTestCase):
    def test_permanentFailureIsReportedWhileAnotherRecipientIsDeferred(self) -> None:
        """A message with one failed and one deferred recipient bounced only when the
        deferred one ended, up to 5 days later.  Now the failure is reported after the
        attempt that found it, once, even across a restart."""
        self.refuse("bad@far.test")
        self.refuse("later@far.test", DeliveryStatus.TEMPORARY)
        queueId = self.send(Recipient("bad@far.test"), Recipient("later@far.test"))
        [notice] = self.notices()
        self.assertEqual(groups(notice.data), [("rfc822; bad@far.test", "failed", "5.1.1")])
        bad, later = self.queue.messages[queueId][0].recipients
        self.assertEqual((bad.state, bad.reported, later.state, later.reported),
                         (RecipientState.FAILED, True, RecipientState.PENDING, False))
        self.successResultOf(self.scheduler.stopService())
        self.scheduler = self.startScheduler()  # a restart reads the envelope from the queue
        del self.agent.script["later@far.test"]
        self.clock.advance(HOUR)
        self.assertEqual((len(self.notices()), self.queue.messages), (1, {}))

    def test_givenUpRecipientIsReportedOnceAtTheEnd(self) -> None:
        self.refuse("later@far.test", DeliveryStatus.TEMPORARY)
        self.send(Recipient("later@far.test"))
        self.clock.pump([HOUR] * 12)
        warning, notice = self.notices()
        self.assertEqual(groups(warning.data), [("rfc822; later@far.test", "delayed", "4.2.0")])
        self.assertEqual(groups(notice.data), [("rfc822; later@far.test", "failed", "4.2.0")])
        self.assertEqual(self.queue.messages, {})


class SuccessTests(NoticeTestCase):
    def test_notifySuccessGetsADeliveredNotice(self) -> None:
        """RFC 3461 section 4.1: NOTIFY=SUCCESS is told of a final delivery."""
        self.send(Recipient("me@localhost", {"NOTIFY": "SUCCESS,FAILURE"}), Recipient("quiet@localhost"))
        [notice] = self.notices()
        self.assertEqual(notice.envelope.recipients[0].address, "a@localhost")
        message, blocks, returned = report(notice.data)
        self.assertEqual(message["Subject"], "Successful Mail Delivery Report")
        self.assertEqual(groups(notice.data), [("rfc822; me@localhost", "delivered", "2.0.0")])
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers", "success notices return headers only")

    def test_relayToANextHopWithoutDSNGetsARelayedNotice(self) -> None:
        self.agent.script["far@far.test"] = (DeliveryStatus.DELIVERED, Handoff.RELAYED)
        self.send(Recipient("far@far.test", {"NOTIFY": "SUCCESS"}))
        [notice] = self.notices()
        [group] = report(notice.data)[1][1:]
        self.assertEqual((group["Action"], group["Remote-MTA"]), ("relayed", "dns; mx.example.net"))

    def test_nextHopWithDSNReportsInstead(self) -> None:
        """RFC 3461 section 5.2.1: the next hop got NOTIFY and reports from there."""
        self.agent.script["far@far.test"] = (DeliveryStatus.DELIVERED, Handoff.PASSED_ON)
        self.send(Recipient("far@far.test", {"NOTIFY": "SUCCESS"}))
        self.assertEqual(self.notices(), [])

    def test_forwardGetsAnExpandedNotice(self) -> None:
        self.agent.script["list@localhost"] = (DeliveryStatus.DELIVERED, Handoff.EXPANDED)
        self.send(Recipient("list@localhost", {"NOTIFY": "SUCCESS"}))
        [notice] = self.notices()
        self.assertEqual(groups(notice.data), [("rfc822; list@localhost", "expanded", "2.0.0")])

    def test_noSuccessNoticeUnlessAsked(self) -> None:
        self.send(Recipient("me@localhost"), Recipient("you@localhost", {"NOTIFY": "FAILURE"}))
        self.assertEqual(self.notices(), [])

    def test_failureAndSuccessOfOneAttemptShareANotice(self) -> None:
        self.refuse("bad@localhost")
        self.send(Recipient("bad@localhost"), Recipient("me@localhost", {"NOTIFY": "SUCCESS,FAILURE"}))
        [notice] = self.notices()
        self.assertEqual(groups(notice.data), [("rfc822; bad@localhost", "failed", "5.1.1"),
                                               ("rfc822; me@localhost", "delivered", "2.0.0")])
        self.assertEqual(report(notice.data)[0]["Subject"], "Undelivered Mail Returned to Sender")


class DelayTests(NoticeTestCase):
    def test_notifyDelayIsWarnedOnceAfterTheDelay(self) -> None:
        """Once the message has waited ``queue.delay_warning`` (4 hours here), the
        recipients whose NOTIFY has DELAY, or who gave no NOTIFY (RFC 3461 section 4.1
        lets that mean FAILURE,DELAY), are warned about, once; NOTIFY=FAILURE is not."""
        for address in ("slow@far.test", "other@far.test", "quiet@far.test"):
            self.refuse(address, DeliveryStatus.TEMPORARY)
        queueId = self.send(Recipient("slow@far.test", {"NOTIFY": "DELAY,FAILURE"}), Recipient("other@far.test"),
                            Recipient("quiet@far.test", {"NOTIFY": "FAILURE"}))
        self.clock.pump([HOUR] * 3)
        self.assertEqual(self.notices(), [])
        self.clock.advance(HOUR)
        [warning] = self.notices()
        message, blocks, returned = report(warning.data)
        self.assertEqual(message["Subject"], "Delayed Mail (still being retried)")
        group, default = blocks[1:]
        self.assertEqual((group["Final-Recipient"], group["Action"], group["Status"]),
                         ("rfc822; slow@far.test", "delayed", "4.2.0"))
        self.assertEqual((default["Final-Recipient"], default["Action"]), ("rfc822; other@far.test", "delayed"))
        self.assertEqual(group["Will-Retry-Until"], email.utils.format_datetime(
            email.utils.datetime.datetime.fromtimestamp(1_000_000 + 10 * HOUR, email.utils.datetime.timezone.utc)))
        self.assertTrue(self.queue.messages[queueId][0].delayWarned)
        self.clock.pump([HOUR] * 3)
        self.assertEqual(len(self.notices()), 1, "one warning per message")
        self.clock.pump([HOUR] * 4)
        final = self.notices()[1:]
        self.assertEqual([groups(n.data) for n in final], [[("rfc822; slow@far.test", "failed", "4.2.0"),
                                                           ("rfc822; other@far.test", "failed", "4.2.0"),
                                                           ("rfc822; quiet@far.test", "failed", "4.2.0")]])

    def test_delayWarningZeroTurnsThemOff(self) -> None:
        self.successResultOf(self.scheduler.stopService())
        self.settings = QueueSettings(retryFirst=HOUR, retryFactor=1, retryMaximum=HOUR, giveUp=10 * HOUR,
                                      delayWarning=0)
        self.scheduler = self.startScheduler()
        self.refuse("slow@far.test", DeliveryStatus.TEMPORARY)
        self.send(Recipient("slow@far.test", {"NOTIFY": "DELAY"}))
        self.clock.pump([HOUR] * 9)
        self.assertEqual(self.notices(), [])


class ContentTests(NoticeTestCase):
    def test_smtputf8MessageGetsAnInternationalisedNotice(self) -> None:
        """RFC 6533: message/global-delivery-status, a utf-8 address type for the
        non-ASCII address, the headers returned as message/global-headers, and the
        notice itself sent with SMTPUTF8."""
        self.refuse("用户@far.test")
        self.send(Recipient("用户@far.test"), sender="发件人@localhost", SMTPUTF8=None)
        [notice] = self.notices()
        self.assertEqual((notice.envelope.recipients[0].address, notice.envelope.mailParams),
                         ("发件人@localhost", {"SMTPUTF8": None}))
        message, blocks, returned = report(notice.data)
        self.assertEqual(message.get_param("report-type"), "global-delivery-status")
        self.assertEqual(message.get_payload()[1].get_content_type(), "message/global-delivery-status")
        self.assertEqual(groups(notice.data), [("utf-8; 用户@far.test", "failed", "5.1.1")])
        self.assertEqual(returned.get_content_type(), "message/global-headers")

    def test_asciiMessageGetsAPlainNotice(self) -> None:
        self.refuse("bad@far.test")
        self.send(Recipient("bad@far.test"))
        [notice] = self.notices()
        self.assertEqual((report(notice.data)[0].get_param("report-type"), notice.envelope.mailParams),
                         ("delivery-status", {}))

    def test_envidAndOrcptCannotInjectFields(self) -> None:
        """Security review L-1: ENVID and ORCPT decoded from xtext wrote fields of the
        sender's choosing (and bare CRs) into the report.  They stay in xtext form."""
        envid = "abc+0D+0A+0D+0A--INJECTED-PART+0D+0AX-Injected:+20yes"
        orcpt = "rfc822;x+0AFinal-Recipient:+20rfc822;+20ceo@bank.example+0AAction:+20delivered"
        self.refuse("b@far.test")
        self.send(Recipient("b@far.test", {"ORCPT": orcpt}), RET="FULL", ENVID=envid, trusted=True)
        [notice] = self.notices()
        self.assertIsNone(_BARE.search(notice.data))
        message, blocks, returned = report(notice.data)
        self.assertEqual(blocks[0]["Original-Envelope-Id"], envid)
        self.assertIsNone(message["X-Injected"])
        [group] = blocks[1:]
        self.assertEqual(group["Original-Recipient"], "rfc822; " + orcpt.partition(";")[2])
        self.assertEqual((group.get_all("Final-Recipient"), group.get_all("Action")),
                         (["rfc822; b@far.test"], ["failed"]))
        self.assertEqual(returned.get_content_type(), "message/rfc822")

    def test_bareLineEndsOfTheOriginalAreNotReturned(self) -> None:
        """The returned message goes out with CR LF line ends, whatever the queue file
        holds."""
        self.refuse("bad@far.test")
        envelope = Envelope("a@localhost", (Recipient("bad@far.test"),), mailParams={"RET": "FULL"},
                            arrival=self.clock.seconds())
        self.successResultOf(self.scheduler.funnel.enqueue(envelope, b"Subject: x\nX: y\r\r\nbody\rmore\n"))
        self.clock.advance(0)
        [notice] = self.notices()
        self.assertIsNone(_BARE.search(notice.data))
        self.assertIn(b"Subject: x\r\nX: y\r\n\r\nbody\r\nmore\r\n", notice.data)

    def test_writerRefusesABareLineEnd(self) -> None:
        """The last guard: whatever slips past, a notice with a bare CR or LF stops
        before its end is written, so it is never queued."""
        written: list[bytes] = []
        checked = _Checked(written.append)
        checked(b"fine\r")
        checked(b"\nstill fine\r\n")
        for bad in (b"a\nb", b"a\rb"):
            self.assertRaises(BareLineEnd, checked, bad)
        checked(b"ends with CR\r")
        self.assertRaises(BareLineEnd, checked.close)
        self.assertRaises(BareLineEnd, _Checked(written.append), b"\n")

    def test_xtextKeepsXtextAndEncodesTheRest(self) -> None:
        self.assertEqual(xtext("ID+2B1"), "ID+2B1")
        self.assertEqual(xtext("a b=c\r\n+é"), "a+20b+3Dc+0D+0A+2B+C3+A9")

    def test_everyGroupNamesItsActionAndStatus(self) -> None:
        """One notice with every action RFC 3464 section 2.3.3 defines parses as a
        report naming each recipient's action and status."""
        envelope = Envelope("a@localhost", tuple(Recipient(f"{a.value}@far.test") for a in Action))
        notices = [Notice(Recipient(f"{a.value}@far.test", lastReply=f"x {a.value}"), a) for a in Action]
        out = io.BytesIO()
        writeDSN(out.write, io.BytesIO(BODY), "Q1", envelope, notices, "mx.test", 0.0, retryUntil=3600.0)
        self.assertEqual(groups(out.getvalue()), [
            ("rfc822; failed@far.test", "failed", "5.0.0"), ("rfc822; delayed@far.test", "delayed", "4.0.0"),
            ("rfc822; delivered@far.test", "delivered", "2.0.0"), ("rfc822; relayed@far.test", "relayed", "2.0.0"),
            ("rfc822; expanded@far.test", "expanded", "2.0.0")])



def sendWithNotify(port: int, sender: str, recipients: list[str], message: bytes) -> list[tuple[int, bytes]]:
    """One transaction over smtplib, every RCPT with NOTIFY=SUCCESS,DELAY (blocking)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
        client.ehlo()
        replies = [client.mail(sender, ["RET=HDRS", "ENVID=e1"])]
        replies += [client.rcpt(r, ["NOTIFY=SUCCESS,DELAY"]) for r in recipients]
        return replies + [client.data(message)]


class GatewayNoticeTests(GatewayTestCase):
    """Issue 13's test as a user would run it: the whole gateway, one message with
    NOTIFY=SUCCESS,DELAY to a local user and to a remote host that takes no
    connection (a route to a closed port on 127.0.0.1)."""

    @defer.inlineCallbacks
    def reported(self, address: str, count: int) -> Any:
        """The (Final-Recipient, Action, Status) groups of the notices in ``address``'s
        mailbox, once they name ``count`` recipients (a bounded poll)."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(found := sorted(g for n in self.mailbox(address) for g in groups(n))) < count:
            if time.monotonic() > deadline:
                self.fail(f"{address} was told only {found} after {DELIVERY_TIMEOUT} s")
            yield task.deferLater(reactor, POLL_INTERVAL, lambda: None)
        return found

    @defer.inlineCallbacks
    def test_localSuccessAndRemoteDelayAreReported(self):  # type: ignore[no-untyped-def]
        """The success and the delay come in one notice or two, depending on whether
        the delay (0.01 s here) has passed at the first attempt."""
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        self.addCleanup(closed.close)
        route = {"domain": "far.test", "host": "127.0.0.1", "port": closed.getsockname()[1], "tls": "none"}
        yield self.startGateway(server__trusted_networks=["127.0.0.0/8"], remote__routes=[route],
                                queue__retry_first=0.05, queue__delay_warning=0.01)
        replies = yield deferToThread(sendWithNotify, self.port, "s@localhost", ["u@localhost", "x@far.test"], BODY)
        self.assertEqual([code for code, _ in replies], [250, 250, 250, 250])
        found = yield self.reported("s@localhost", 2)
        self.assertEqual(found, [("rfc822; u@localhost", "delivered", "2.0.0"),
                                 ("rfc822; x@far.test", "delayed", "4.4.1")])
        self.assertIn(b"the body", self.mailbox("u@localhost")[0])

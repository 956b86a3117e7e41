"""Mail loops (newcomer review item 1): a very common aliases file, ``postmaster: root``,
made one undeliverable message bounce and double-bounce for ever.  Whole gateways in
this process, on a real queue, against a loopback DNS server that knows no such
domains; and the rules one at a time."""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from jsmail.config import loadConfig
from jsmail.envelope import DOUBLE_BOUNCE, Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import MAX_DELIVERED_TO, LocalDelivery
from jsmail.local.settings import LocalSettings
from jsmail.reply import PeerReply
from jsmail.route import Router
from jsmail.send.scheduler import Scheduler
from jsmail.testing import DNSServer, MemoryQueue, RecordingAgent, runNow
from tests.test_integration import GatewayTestCase

SETTLE = 0.5  # seconds to watch a drained queue for mail that should not come


def watchLog(case: TestCase) -> list[dict[str, Any]]:
    """Every log event from now on, for the test's length."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def maillog(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "jsmail.maillog" and e.get("event") == kind]


class AliasLoopTests(GatewayTestCase):
    """A message to and from domains that do not exist, relayed by a trusted client,
    on a gateway whose aliases say ``postmaster: root``."""

    @defer.inlineCallbacks
    def loopingGateway(self, **settings: Any) -> Any:
        aliases = os.path.join(self.dataDir + "-etc", "aliases")
        os.makedirs(os.path.dirname(aliases))
        with open(aliases, "w") as f:
            f.write("# as on many hosts\npostmaster: root\n")
        dnsServer = DNSServer({"invalid": [], "example.test": []})
        self.addCleanup(dnsServer.stop)
        gateway = yield self.startGateway(
            server__hostname="mx.example.test", server__domains=["example.test"],
            server__trusted_networks=["127.0.0.0/8"], queue__delivery_process=False, local__aliases=aliases,
            remote__dns_server=dnsServer.start(), **settings)
        return gateway

    @defer.inlineCallbacks
    def sendAndSettle(self, events: list[dict[str, Any]]) -> Any:
        [replies] = yield self.send(("a@nonexistent.invalid", ["b@nonexistent.invalid"],
                                     b"Subject: into the void\r\n\r\nHello?\r\n", []))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        yield self.queueDrained()
        bounced = len(maillog(events, "bounced"))
        yield task.deferLater(reactor, SETTLE, lambda: None)
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "active")), [])
        self.assertEqual(len(maillog(events, "bounced")), bounced, "more notices after the queue emptied")

    @defer.inlineCallbacks
    def test_postmasterAliasedToRootMakesNoLoop(self) -> Any:
        """The bounce to the sender fails, so the postmaster gets one double bounce;
        ``root`` is qualified with the first local domain, not the host name, so it
        lands in root's mailbox, and that is the end of it."""
        events = watchLog(self)
        yield self.loopingGateway()
        yield self.sendAndSettle(events)
        self.assertEqual([e["sender"] for e in maillog(events, "bounced")],
                         ["a@nonexistent.invalid", "postmaster@example.test"])
        [doubleBounce] = self.mailbox("root@example.test")
        self.assertIn(b"\nSubject: Undeliverable bounce\n", doubleBounce)
        self.assertIn(b"Delivered-To: postmaster@example.test\n", doubleBounce)

    @defer.inlineCallbacks
    def test_doubleBounceForwardedToAFailingAddressIsDropped(self) -> Any:
        """With ``root`` qualified with the host name, which is not a local domain (the
        old default, still possible with ``local.noathost``), the forwarded double bounce
        fails too: it is still a double bounce, so it is dropped and logged, not bounced
        to the postmaster again."""
        events = watchLog(self)
        yield self.loopingGateway(local__noathost="mx.example.test")
        yield self.sendAndSettle(events)
        self.assertEqual([e["sender"] for e in maillog(events, "bounced")],
                         ["a@nonexistent.invalid", "postmaster@example.test"])
        self.assertEqual([e["recipient"] for e in maillog(events, "failed")],
                         ["b@nonexistent.invalid", "a@nonexistent.invalid", "root@mx.example.test"])
        dropped = [e for e in events if "Dropping the failed" in e.get("log_format", "")]
        self.assertEqual([(e["what"], e["recipients"]) for e in dropped],
                         [("double bounce", "<root@mx.example.test>")])
        self.assertEqual(self.mailbox("root@example.test"), [])


class AliasTargetTests(TestCase):
    def test_bareAliasTargetGetsTheFirstLocalDomain(self) -> None:
        """qmail's envnoathost defaults to a local name; so does jsmail's now, whatever
        the host is called."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        aliases = os.path.join(base, "aliases")
        with open(aliases, "w") as f:
            f.write("postmaster: root\n")
        config = loadConfig(overrides={"server.hostname": "mx.example.test", "server.domains": ["example.test"],
                                       "local.aliases": aliases, "server.data": base})
        local = LocalDelivery(base, runNow, config.server.hostname, reactor=reactor, settings=config.local)
        assert local.aliases is not None
        self.assertEqual([f.address for f in local.aliases.lookup("postmaster", "example.test", "-")],
                         ["root@example.test"])


class LocalLoopTests(TestCase):
    def deliver(self, envelope: Envelope, data: bytes, aliases: str) -> tuple[Any, MemoryQueue]:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        path = os.path.join(base, "aliases")
        with open(path, "w") as f:
            f.write(aliases)
        queue = MemoryQueue()
        local = LocalDelivery(os.path.join(base, "mail"), runNow, "mx.test", reactor=reactor,
                              settings=LocalSettings(aliases=path, localDomains=("example.test",)),
                              newMessage=queue.newMessage)
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(data))
        [result] = self.successResultOf(local.deliver(message, envelope.recipients))
        return result, queue

    def test_messageForwardedTwentyTimesIsRefused(self) -> None:
        """A loop through ever-new addresses (which the Delivered-To check of one
        address cannot see) ends at 20 Delivered-To lines with 5.4.6."""
        hops = b"".join(b"Delivered-To: hop%d@example.test\r\n" % n for n in range(MAX_DELIVERED_TO))
        envelope = Envelope("a@example.org", (Recipient("next@example.test"),))
        result, queue = self.deliver(envelope, hops + b"Subject: x\r\n\r\nx\r\n", "next: elsewhere@example.org\n")
        self.assertEqual((result.status, str(result.reply)), (
            DeliveryStatus.PERMANENT, "554 5.4.6 This message is looping: it has been forwarded too many times"))
        self.assertEqual(queue.messages, {})
        result, queue = self.deliver(envelope, hops[:-len(b"Delivered-To: hop19@example.test\r\n")] +
                                     b"Subject: x\r\n\r\nx\r\n", "next: elsewhere@example.org\n")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, "19 lines are fine")

    def test_forwardedDoubleBounceStaysADoubleBounce(self) -> None:
        envelope = Envelope("", (Recipient("postmaster@example.test"),), protocol=DOUBLE_BOUNCE)
        result, queue = self.deliver(envelope, b"Subject: Undeliverable bounce\r\n\r\nx\r\n", "postmaster: root\n")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        [(forwarded, _)] = queue.messages.values()
        self.assertEqual((forwarded.sender, [r.address for r in forwarded.recipients], forwarded.isDoubleBounce),
                         ("", ["root@example.test"], True))


class DoubleBounceTests(TestCase):
    def test_failedDoubleBounceIsDroppedAndLogged(self) -> None:
        """qmail's rule: a double bounce that cannot be delivered goes nowhere, and the
        operator log says so."""
        events = watchLog(self)
        clock, queue = Clock(), MemoryQueue()
        agent = RecordingAgent(lambda rcpt: (DeliveryStatus.PERMANENT, PeerReply(550, "5.1.1", "no such user")))
        scheduler = Scheduler(queue, Router(["example.test"], agent, agent), clock, runNow, "mx.test",
                              postmaster="postmaster@example.test")
        scheduler.startService()
        envelope = Envelope("", (Recipient("root@elsewhere.example"),), protocol=DOUBLE_BOUNCE)
        self.successResultOf(scheduler.funnel.enqueue(envelope, b"Subject: x\r\n\r\nx\r\n"))
        clock.advance(0)
        self.assertEqual((queue.messages, len(agent.deliveries)), ({}, 1))
        self.assertEqual(maillog(events, "bounced"), [])
        self.assertEqual([e["recipients"] for e in events if "Dropping the failed" in e.get("log_format", "")],
                         ["<root@elsewhere.example>"])

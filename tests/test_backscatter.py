"""No backscatter (security review M-1 and I-5, issue 11 item 5): a bounce to a sender
who was neither authenticated nor trusted returns the header section only, whatever
RET asked, and no private text (a program's output, a relay host's words and name).

The envelope's ``trusted`` mark is tested in SMTP dialogs in memory; what a bounce
says, on the whole gateway over a socket on 127.0.0.1, with an alias whose program
fails, and on the scheduler with a relay host's private reply.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, Handoff
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.reply import PeerReply
from jsmail.service import builtInChecks
from jsmail.smtp.settings import ServerSettings
from jsmail.testing import Dialog, runNow
from tests.test_auth import portal
from tests.test_dsn import NoticeTestCase, report
from tests.test_integration import GatewayTestCase, queuedId

SECRET = "db at /srv/internal/billing.sqlite on 10.1.2.3"
PHISH = b"From: \"Your Bank\" <security@bank.example>\r\nSubject: Urgent\r\n\r\nClick http://phish.example/ now.\r\n"


class EnvelopeTrustTests(SynchronousTestCase):
    """Which SMTP senders the queue envelope marks as trusted."""

    def queued(self, clientAddress: str = "192.0.2.1", auth: bool = False,
               trusted: tuple[str, ...] = ()) -> Envelope:
        queue = MemoryQueue()
        relay = RelayControl(lambda domain: domain == "localhost", [ipaddress.ip_network(n) for n in trusted])
        d = Dialog(ServerSettings(hostname="mx.test"), queue, policies=(relay,), clientAddress=clientAddress,
                   portal=portal(), implicitTLS=True)
        d.read()
        d.send(b"EHLO client.test\r\n")
        if auth:
            self.assertEqual(d.send(b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n")[:3], b"235")
        for line in [b"MAIL FROM:<a@example.org> RET=FULL\r\n", b"RCPT TO:<x@localhost>\r\n", b"DATA\r\n",
                     b"Subject: s\r\n\r\nbody\r\n.\r\n"]:
            self.assertIn(d.send(line)[:1], b"23")
        [(envelope, _)] = queue.messages.values()
        return envelope

    def test_anyoneOnTheInternetIsNotTrusted(self) -> None:
        self.assertFalse(self.queued().trusted)

    def test_authenticatedSenderIsTrusted(self) -> None:
        self.assertTrue(self.queued(auth=True).trusted)

    def test_clientInTrustedNetworksIsTrusted(self) -> None:
        self.assertTrue(self.queued("10.1.2.3", trusted=("10.0.0.0/8",)).trusted)
        self.assertFalse(self.queued("192.0.2.1", trusted=("10.0.0.0/8",)).trusted)

    def test_relayClientUnderTcpserverIsTrusted(self) -> None:
        """tcpserver's RELAYCLIENT leaves relay control out: the client is trusted."""
        config = loadConfig(overrides={"server.data": self.mktemp(), "server.domains": ["localhost"]})
        queue = MemoryQueue()
        d = Dialog(ServerSettings(hostname="mx.test"), queue, policies=builtInChecks(config, runNow, False))
        for line in [b"EHLO client.test\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<x@far.example>\r\n",
                     b"DATA\r\n", b"Subject: s\r\n\r\nbody\r\n.\r\n"]:
            self.assertIn(d.send(line)[:1], b"23")
        [(envelope, _)] = queue.messages.values()
        self.assertTrue(envelope.trusted)

    def test_oldEnvelopesAreNotTrusted(self) -> None:
        """An envelope written before the mark existed reads as untrusted."""
        line = Envelope("a@example.org", (Recipient("x@localhost"),)).toBytes().replace(b',"trusted":false', b"")
        self.assertNotIn(b"trusted", line)
        self.assertFalse(Envelope.fromBytes(line).trusted)


class GatewayBounceTests(GatewayTestCase):
    """The whole gateway: an alias whose program prints internal details and exits 100
    (a permanent failure, reached after the message was accepted)."""

    timeout = 60

    @defer.inlineCallbacks
    def bounceFor(self, **settings: Any) -> Any:
        """Send the phishing message to the failing alias from a forged victim's
        address with RET=FULL; the bounce the victim gets, and the operator log."""
        aliases = os.path.abspath(self.mktemp())
        with open(aliases, "w") as f:
            f.write(f'trap: "|echo {SECRET}; exit 100"\n')
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        yield self.startGateway(local__aliases=aliases, **settings)
        [replies] = yield self.send(("victim@localhost", ["trap@localhost"], PHISH, ["RET=FULL"]))
        queuedId(replies[-1])
        yield self.queueDrained()
        [bounce] = self.mailbox("victim@localhost")
        return bounce, " ".join(str(event.get(key, "")) for event in logged for key in ("detail", "reply"))

    @defer.inlineCallbacks
    def test_backscatterCarriesNoBody(self):  # type: ignore[no-untyped-def]
        """Security review M-1: an unauthenticated client forged the victim's address
        with RET=FULL, and the bounce delivered the phishing text to the victim from
        this server.  Now the bounce carries the header section only."""
        bounce, _ = yield self.bounceFor()
        message, _, returned = report(bounce)
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"phish.example", bounce)
        self.assertIn(b"Subject: Urgent", bounce)

    @defer.inlineCallbacks
    def test_bounceHidesProgramOutput(self):  # type: ignore[no-untyped-def]
        """Security review I-5: a program's output (here a path and an internal
        address) went to whoever the sender claimed to be.  Now the bounce gives the
        status and a generic text; the operator log keeps the output."""
        bounce, log = yield self.bounceFor()
        self.assertNotIn(b"/srv/internal", bounce)
        self.assertNotIn(b"10.1.2.3", bounce)
        _, [_, group], _ = report(bounce)
        self.assertEqual((group["Action"], group["Status"]), ("failed", "5.3.0"))
        self.assertEqual(group["Diagnostic-Code"],
                         "X-jsmail; delivery failed; the details are in this mail system's log")
        self.assertIn(SECRET, log)

    @defer.inlineCallbacks
    def test_trustedSenderGetsWholeMessageAndProgramOutput(self):  # type: ignore[no-untyped-def]
        """A client in trusted_networks is no stranger: RET=FULL and the program's own
        words are honoured."""
        bounce, _ = yield self.bounceFor(server__trusted_networks=["127.0.0.0/8"])
        _, [_, group], returned = report(bounce)
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn(b"phish.example", bounce)
        self.assertEqual(group["Diagnostic-Code"], f"X-jsmail; 554 5.3.0 {SECRET}")


class RelayHostTests(NoticeTestCase):
    """A reply from a relay host of the operator's own (a route or the smarthost) is
    private: its words and its name reach trusted senders only."""

    def relayRefuses(self) -> None:
        reply = PeerReply(550, "5.1.1", "<x@far.test>: unknown in relay-7.corp.internal's table", private=True)
        agent = self.agent
        deliver = agent.deliver

        def refusing(message: Any, recipients: Any) -> Any:
            d = deliver(message, recipients)
            return d.addCallback(lambda results: [
                r if message.envelope.isBounce else
                type(r)(r.recipient, DeliveryStatus.PERMANENT, reply, remoteMTA="dns; relay-7.corp.internal",
                        handoff=Handoff.DELIVERED) for r in results])

        agent.deliver = refusing  # type: ignore[method-assign]

    def test_relayHostNamesHiddenFromUntrustedSender(self) -> None:
        self.relayRefuses()
        self.send(Recipient("x@far.test"))
        [notice] = self.notices()
        self.assertNotIn(b"corp.internal", notice.data)
        _, [_, group], _ = report(notice.data)
        self.assertEqual((group["Status"], group["Remote-MTA"]), ("5.1.1", None))

    def test_relayHostNamedToTrustedSender(self) -> None:
        self.relayRefuses()
        self.send(Recipient("x@far.test"), trusted=True)
        [notice] = self.notices()
        _, [_, group], _ = report(notice.data)
        self.assertEqual((group["Remote-MTA"], group["Diagnostic-Code"]),
                         ("dns; relay-7.corp.internal", "smtp; 550 5.1.1 <x@far.test>: unknown in "
                                                        "relay-7.corp.internal's table"))

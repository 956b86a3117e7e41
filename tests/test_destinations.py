"""No delivery to internal addresses by accident (security review M-9): MX answers that
point into loopback or private networks, an MX that is this host, address-literal
senders.  First without sockets (an in-process zone, fake sessions), then end to end:
a real DNS server on loopback, a real gateway, a real SMTP peer that must see nothing."""

from __future__ import annotations

import io
import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, QueuedMessage
from jsmail.policy.relay import RelayControl
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.destinations import Destinations, isHostAddress, listenedOn
from jsmail.remote.settings import RemoteSettings
from jsmail.route import Route
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, runNow
from tests.test_remote import RemoteTestCase, freePort
from tests.test_remotedelivery import DELIVERED, PERMANENT, TEMPORARY, Network, Zone

MORE: list[tuple[str, Any]] = [
    ("private.test", dns.Record_MX(10, b"mx.private.test")),
    ("private.test", dns.Record_MX(20, b"mx.public.test")),
    ("mx.private.test", dns.Record_A("10.0.0.5")),
    ("mx.private.test", dns.Record_AAAA("::ffff:192.168.1.1")),
    ("mx.public.test", dns.Record_A("192.0.2.70")),
    ("inside.test", dns.Record_MX(10, b"mx.private.test")),
    ("linklocal.test", dns.Record_AAAA("fe80::1")),
    ("backup.test", dns.Record_MX(10, b"mx1.backup.test")),
    ("backup.test", dns.Record_MX(20, b"me.test")),
    ("backup.test", dns.Record_MX(30, b"mx3.backup.test")),
    ("mx1.backup.test", dns.Record_A("192.0.2.81")),
    ("me.test", dns.Record_A("192.0.2.99")),
    ("mx3.backup.test", dns.Record_A("192.0.2.83")),
    ("self.test", dns.Record_MX(10, b"me.test")),
    ("self.test", dns.Record_MX(20, b"mx3.backup.test")),
]


class MoreZone(Zone):
    def loadFile(self, filename: object) -> None:
        super().loadFile(filename)
        for name, record in MORE:
            self.records.setdefault(name.encode("idna"), []).append(record)


class SieveTests(SynchronousTestCase):
    """Which MX addresses remote delivery uses, over a fake network."""

    def setUp(self) -> None:
        self.network = Network()

    def deliver(self, *recipients: str, routes: tuple[Route, ...] = (), **destinations: Any) -> list[DeliveryResult]:
        remote = RemoteDelivery(Clock(), runNow, MoreZone(), RemoteSettings(heloHost="me.test", idleTimeout=0,
                                                                            routes=routes),
                                connect=self.network.connect, destinations=Destinations(**destinations))
        envelope = Envelope("a@me.test", tuple(Recipient(r) for r in recipients))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"))
        return self.successResultOf(remote.deliver(message, envelope.recipients))

    def test_internalAddressesSkippedForTheNextMx(self) -> None:
        [result] = self.deliver("x@private.test")
        self.assertEqual((result.status, self.network.addresses), (DELIVERED, ["192.0.2.70"]))

    def test_onlyInternalMxBounces544(self) -> None:
        """10.0.0.5 and ::ffff:192.168.1.1 (mapped IPv4) alike: permanent, nothing tried."""
        [result] = self.deliver("x@inside.test")
        self.assertEqual((result.status, str(result.reply)),
                         (PERMANENT, "550 5.4.4 Mail for inside.test is not sent to internal addresses"))
        self.assertEqual(result.detail, "MX mx.private.test: ::ffff:192.168.1.1 is private, 10.0.0.5 is private")
        self.assertEqual(self.network.attempts, [])

    def test_addressLiteralRecipientOnLoopbackRefused(self) -> None:
        """The review's bounce to ``anyone@[127.0.0.1]``, and a link-local implicit MX."""
        results = self.deliver("anyone@[127.0.0.1]", "x@[IPv6:::1]", "y@linklocal.test")
        self.assertEqual([(r.status, str(r.reply)) for r in results], [
            (PERMANENT, "550 5.4.4 Mail for [127.0.0.1] is not sent to internal addresses"),
            (PERMANENT, "550 5.4.4 Mail for [ipv6:::1] is not sent to internal addresses"),
            (PERMANENT, "550 5.4.4 Mail for linklocal.test is not sent to internal addresses")])
        self.assertEqual(self.network.attempts, [])

    def test_allowedNetworkDelivered(self) -> None:
        [result] = self.deliver("x@inside.test", allowed=(ipaddress.ip_network("10.0.0.0/8"),))
        self.assertEqual((result.status, self.network.addresses), (DELIVERED, ["10.0.0.5"]))

    def test_routeMayNameLoopback(self) -> None:
        """A route is the operator's choice (a content filter on 127.0.0.1:10025)."""
        route = Route("127.0.0.1", 10025, "none", domain="inside.test")
        [result] = self.deliver("x@inside.test", routes=(route,), listeners=(("127.0.0.1", 10025),))
        self.assertEqual((result.status, self.network.addresses), (DELIVERED, ["127.0.0.1"]))

    def test_mxThatIsMyselfIs546(self) -> None:
        [result] = self.deliver("x@self.test", listeners=(("192.0.2.99", 25),))
        self.assertEqual((result.status, str(result.reply)),
                         (PERMANENT, "550 5.4.6 Mail for self.test loops back to myself"))
        self.assertEqual(self.network.attempts, [], "the MX after this host is its backup: not tried")

    def test_backupMxWaitsForTheBetterOne(self) -> None:
        """This host is a backup MX (preference 20): when the primary is down the mail
        waits for it, and is not passed to the worse MX 30 (Postfix does the same)."""
        self.network.down = {"192.0.2.81"}
        [result] = self.deliver("x@backup.test", listeners=(("192.0.2.99", 25),))
        self.assertEqual((result.status, str(result.reply)),
                         (TEMPORARY, "451 4.4.1 Cannot connect to the mail exchanger"))
        self.assertEqual(self.network.addresses, ["192.0.2.81"])

    def test_otherPortOfThisHostIsNoLoop(self) -> None:
        [result] = self.deliver("x@self.test", listeners=(("192.0.2.99", 2525),))
        self.assertEqual((result.status, self.network.addresses), (DELIVERED, ["192.0.2.99"]))


class DestinationsTests(SynchronousTestCase):
    def test_listenersFromEndpointDescriptions(self) -> None:
        self.assertEqual(listenedOn(["tcp:25", "tcp:2525:interface=127.0.0.1", "tcp6:port=587:interface=\\:\\:1",
                                     "ssl:465:privateKey=k.pem", "unix:/run/jsmail.sock", "tcp:0"]),
                         (("", 25), ("127.0.0.1", 2525), ("::1", 587), ("", 465)))

    def test_thisHostsAddresses(self) -> None:
        self.assertTrue(isHostAddress("127.0.0.1"))
        self.assertFalse(isHostAddress("198.51.100.77"))
        wildcard = Destinations(listeners=(("", 25),))
        self.assertTrue(wildcard.isMyself("127.0.0.1", 25))
        self.assertTrue(wildcard.isMyself("::ffff:127.0.0.1", 25))
        self.assertFalse(wildcard.isMyself("127.0.0.1", 2525))
        self.assertFalse(wildcard.isMyself("198.51.100.77", 25))

    def test_whatIsInternal(self) -> None:
        destinations = Destinations()
        self.assertEqual([destinations.internal(a) for a in ("0.0.0.0", "100.64.1.1", "169.254.1.1", "224.0.0.5",
                                                             "fd00::1", "ff02::1", "192.0.2.1", "2001:db8::1")],
                         ["unspecified", "shared (carrier-grade NAT)", "link-local", "multicast",
                          "private (unique local)", "multicast", None, None])


class AddressLiteralSenderTests(SynchronousTestCase):
    def dialog(self, clientAddress: str) -> Dialog:
        relay = RelayControl(lambda domain: domain == "localhost", [ipaddress.ip_network("10.0.0.0/8")])
        d = Dialog(ServerSettings(hostname="mx.test"), policies=(relay,), clientAddress=clientAddress)
        d.send(b"EHLO c.test\r\n")
        return d

    def test_addressLiteralSenderRefused(self) -> None:
        """Security review M-9: ``MAIL FROM:<anyone@[127.0.0.1]>`` from anyone made the
        bounce go to loopback."""
        d = self.dialog("198.51.100.7")
        self.assertEqual(d.send(b"MAIL FROM:<anyone@[127.0.0.1]>\r\n"),
                         b"553 5.7.1 Sender address <anyone@[127.0.0.1]> refused: an address literal is taken only "
                         b"from authenticated or trusted clients\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@example.org>\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_addressLiteralSenderFromTrustedClient(self) -> None:
        d = self.dialog("10.1.2.3")
        self.assertEqual(d.send(b"MAIL FROM:<app@[10.1.2.3]>\r\n"), b"250 2.1.0 Sender OK\r\n")


class EndToEndTests(RemoteTestCase):
    """A gateway with the default rules, a DNS server on loopback, the sink (an SMTP
    server on 127.0.0.1) that must never be reached."""

    BODY = b"Subject: remote\r\n\r\nline one\r\n"

    def setUp(self) -> None:
        super().setUp()
        [zone] = self.dns.factory.resolver.resolvers
        for name, record in [("victim.test", dns.Record_MX(10, b"mx.victim.test")),
                             ("mx.victim.test", dns.Record_A("127.0.0.1"))]:
            zone.records.setdefault(name.encode(), []).append(record)

    @defer.inlineCallbacks
    def test_mxPointingAtLoopbackIsRefused(self):  # type: ignore[no-untyped-def]
        """The review's MX ``mx.victim.test`` -> 127.0.0.1: the SMTP server there gets no
        connection, and the sender a bounce that names no internal address."""
        gateway = yield self.gateway(remote__allow_internal=[])
        yield self.send(gateway, ["x@victim.test"], self.BODY)
        _, status = yield self.bounceFor(gateway)
        group = status[1]
        self.assertEqual((group["Action"], group["Status"]), ("failed", "5.4.4"))
        self.assertIn("550 5.4.4 Mail for victim.test is not sent to internal addresses", group["Diagnostic-Code"])
        self.assertEqual(self.sink.sessions, 0)

    @defer.inlineCallbacks
    def test_mxPointingAtMyselfIs546(self):  # type: ignore[no-untyped-def]
        """An MX that is this gateway (its address and SMTP port) bounces at once with
        5.4.6, even where loopback is allowed, instead of looping until
        max_received_headers."""
        port = freePort()
        gateway = yield self.gateway(smtp__listen=f"tcp:{port}:interface=127.0.0.1", remote__port=port)
        yield self.send(gateway, ["x@victim.test"], self.BODY)
        _, status = yield self.bounceFor(gateway)
        group = status[1]
        self.assertEqual((group["Action"], group["Status"]), ("failed", "5.4.6"))
        self.assertIn("550 5.4.6 Mail for victim.test loops back to myself", group["Diagnostic-Code"])
        self.assertEqual(len(self.mailbox(gateway, "a")), 1, "the bounce only")

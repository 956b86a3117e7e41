"""Remote delivery end to end: a real DNS server on loopback answers MX and address
queries; real peers (aiosmtpd, and jsmail itself over STARTTLS) receive."""

from __future__ import annotations

import email
import glob
import io
import ipaddress
import os
import smtplib
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.trial.unittest import TestCase

from jsmail._dns import isNonexistent, makeResolver
from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.queue.memory import MemoryQueue
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.dane import DANE_EE, TLSA, TLSARecord
from jsmail.remote.destinations import Destinations
from jsmail.remote.mtasts import PolicyFetcher
from jsmail.remote.mx import MailExchangers
from jsmail.remote.settings import RemoteSettings
from jsmail.route import Route
from jsmail.service import MailGateway
from jsmail.smtp.server import ESMTPServerFactory, Listener, ServerSettings
from jsmail.smtp.tls import ServerTLS
from jsmail.testing import DNSServer, freePort
from tests.test_dane import tlsa

NONE: tuple[str, ...] = ()
LOOPBACK = ["127.0.0.0/8"]
ALLOWED = (ipaddress.ip_network("127.0.0.0/8"),)  # the test peers' network: remote delivery refuses it by default


def zone(port: int) -> dict[str, list[tuple[str, Any]]]:
    return {"example.test": [
        ("example.test", dns.Record_MX(10, b"mx1.example.test")),
        ("mx1.example.test", dns.Record_A("127.0.0.1")),
        ("backup.example.test", dns.Record_MX(10, b"down.example.test")),
        ("backup.example.test", dns.Record_MX(20, b"mx1.example.test")),
        ("down.example.test", dns.Record_A("127.0.0.2")),
        ("nomx.example.test", dns.Record_A("127.0.0.1")),
        ("null.example.test", dns.Record_MX(0, b"")),
        ("sts.example.test", dns.Record_MX(10, b"mx1.example.test")),
        ("_mta-sts.sts.example.test", dns.Record_TXT(b"v=STSv1; id=1")),
        ("mta-sts.sts.example.test", dns.Record_A("127.0.0.1")),
    ]}


class Sink:
    """aiosmtpd handler: keeps what it receives; refuses recipients starting "bad"
    with 550 and those starting "later" with 451."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.sessions = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list) -> list:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 No such user here"
        if address.startswith("later"):
            return "451 4.2.0 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Received"


class RemoteTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.peerPort = freePort()
        self.sink = Sink()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.peerPort, decode_data=False)
        self.controller.start()
        self.addCleanup(self.controller.stop)
        self.dns = DNSServer(zone(self.peerPort))
        self.dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)

    @defer.inlineCallbacks
    def gateway(self, **overrides: Any):  # type: ignore[no-untyped-def]
        """A started gateway whose remote deliveries go to the sink's port;
        ``overrides`` are settings named as in TOML, with "__" for the "."."""
        data = os.path.abspath(self.mktemp())
        settings: dict[str, Any] = {
            "server.hostname": "a.test", "server.data": data, "smtp.listen": "tcp:0:interface=127.0.0.1",
            "smtp.submission": NONE, "smtp.smtps": NONE, "server.trusted_networks": LOOPBACK,
            "remote.dns_server": self.dnsAddress, "remote.port": self.peerPort, "queue.delivery_process": False,
            "remote.connect_timeout": 5.0, "local.catch_all": True, "remote.allow_internal": LOOPBACK,
        }
        settings.update({name.replace("__", "."): value for name, value in overrides.items()})
        gateway = MailGateway(loadConfig(overrides=settings))
        gateway.privilegedStartService()
        gateway.startService()
        self.addCleanup(gateway.stopService)
        port = yield gateway.listeners[0].whenListening()
        gateway.smtpPort = port.getHost().port
        gateway.data = data
        return gateway

    def send(self, gateway: Any, recipients: list[str], body: bytes, sender: str = "a@localhost") -> defer.Deferred:
        def sendmail() -> dict:
            with smtplib.SMTP("127.0.0.1", gateway.smtpPort, timeout=10) as client:
                return client.sendmail(sender, recipients, body)

        return deferToThread(sendmail)

    @defer.inlineCallbacks
    def waitFor(self, predicate: Any, what: str, seconds: float = 20):  # type: ignore[no-untyped-def]
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def mailbox(self, gateway: Any, local: str, domain: str = "localhost") -> list[bytes]:
        contents = []
        for name in sorted(glob.glob(os.path.join(gateway.data, "mail", domain, local, "new", "*"))):
            with open(name, "rb") as f:
                contents.append(f.read())
        return contents

    @defer.inlineCallbacks
    def bounceFor(self, gateway: Any, local: str = "a"):  # type: ignore[no-untyped-def]
        yield self.waitFor(lambda: self.mailbox(gateway, local), "the bounce")
        [bounce] = self.mailbox(gateway, local)
        report = email.message_from_bytes(bounce)
        self.assertEqual(report.get_content_type(), "multipart/report")
        return report, report.get_payload()[1].get_payload()


class MailExchangerTests(RemoteTestCase):
    @defer.inlineCallbacks
    def test_lookups(self):  # type: ignore[no-untyped-def]
        mx = MailExchangers(makeResolver(self.dnsAddress, reactor))
        self.assertEqual((yield mx.hostsFor("backup.example.test")), ["down.example.test", "mx1.example.test"])
        self.assertEqual((yield mx.hostsFor("nomx.example.test")), ["nomx.example.test"])
        self.assertEqual((yield mx.addressesOf("mx1.example.test")), ["127.0.0.1"])
        null = yield self.assertFailure(mx.hostsFor("null.example.test"), DeliveryError)
        self.assertEqual((str(null.reply), null.permanent),
                         ("556 5.1.10 Domain null.example.test accepts no mail (null MX, RFC 7505)", True))
        missing = yield self.assertFailure(mx.hostsFor("missing.example.test"), DeliveryError)
        self.assertEqual((str(missing.reply), missing.permanent), ("550 5.1.2 Domain missing.example.test does not exist", True))


class DeliveryTests(RemoteTestCase):
    BODY = b"Subject: remote\r\n\r\nline one\r\n.leading dot\r\n"

    @defer.inlineCallbacks
    def test_mx_delivery_body_intact(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway()
        yield self.send(gateway, ["bob@example.test"], self.BODY)
        yield self.waitFor(lambda: self.sink.received, "the sink")
        [(sender, recipients, content)] = self.sink.received
        self.assertEqual((sender, recipients), ("a@localhost", ["bob@example.test"]))
        received, rest = content.split(b"\r\n\t", 1)
        self.assertTrue(received.startswith(b"Received: from "))
        self.assertTrue(content.endswith(b"\r\n" + self.BODY), content)

    @defer.inlineCallbacks
    def test_next_mx_when_first_is_down(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway()
        yield self.send(gateway, ["bob@backup.example.test"], self.BODY)
        yield self.waitFor(lambda: self.sink.received, "the sink")
        self.assertEqual(self.sink.received[0][1], ["bob@backup.example.test"])

    @defer.inlineCallbacks
    def test_null_mx_bounces_at_once(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway()
        yield self.send(gateway, ["bob@null.example.test"], self.BODY)
        _, status = yield self.bounceFor(gateway)
        self.assertEqual(status[1]["Status"], "5.1.10")
        self.assertEqual(status[1]["Final-Recipient"], "rfc822; bob@null.example.test")

    @defer.inlineCallbacks
    def test_refused_recipient_bounces_with_remote_mta(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway()
        yield self.send(gateway, ["good@example.test", "bad@example.test"], self.BODY)
        report, status = yield self.bounceFor(gateway)
        self.assertEqual([r for _, r, _ in self.sink.received], [["good@example.test"]])
        group = status[1]
        self.assertEqual((group["Final-Recipient"], group["Action"], group["Status"]),
                         ("rfc822; bad@example.test", "failed", "5.1.1"))
        self.assertEqual(group["Remote-MTA"], "dns; mx1.example.test")
        self.assertIn("550 5.1.1 No such user here", group["Diagnostic-Code"])
        self.assertEqual(status[0]["Reporting-MTA"], "dns; a.test")
        self.assertIn(b"Subject: remote", report.get_payload()[2].as_bytes())

    @defer.inlineCallbacks
    def test_smarthost_down_retried_then_one_bounce(self):  # type: ignore[no-untyped-def]
        """The issue's "done when": with the sink stopped the message is retried, and
        after the give-up age the sender gets one RFC 3464 bounce in its Maildir."""
        closed = freePort()
        gateway = yield self.gateway(remote__smarthost=f"127.0.0.1:{closed}", queue__retry_first=0.2,
                                     queue__retry_factor=1.0, queue__give_up=1.5)
        yield self.send(gateway, ["someone@example.org"], self.BODY)
        _, status = yield self.bounceFor(gateway)
        self.assertEqual(status[1]["Action"], "failed")
        self.assertTrue(status[1]["Status"].startswith("4.4."), status[1]["Status"])
        self.assertIn("gave up", status[1]["Diagnostic-Code"])
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(self.mailbox(gateway, "a")), 1, "exactly one bounce")

    @defer.inlineCallbacks
    def test_smarthost_delivery(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway(remote__smarthost=f"127.0.0.1:{self.peerPort}", remote__dns_server="127.0.0.1:9")
        yield self.send(gateway, ["someone@example.org"], self.BODY)
        yield self.waitFor(lambda: self.sink.received, "the smarthost")
        self.assertTrue(self.sink.received[0][2].endswith(self.BODY))

    @defer.inlineCallbacks
    def test_connection_reused_for_the_next_message(self):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway()
        for n in range(3):
            yield self.send(gateway, [f"r{n}@example.test"], self.BODY)
            yield self.waitFor(lambda n=n: len(self.sink.received) == n + 1, "a delivery")
        self.assertEqual(self.sink.sessions, 1, "all three messages in one SMTP session")


class TwoGatewaysTests(RemoteTestCase):
    @defer.inlineCallbacks
    def test_relay_between_gateways_over_starttls(self):  # type: ignore[no-untyped-def]
        """Two jsmail gateways: A relays to B (its MX) over STARTTLS; B's Maildir holds
        the body byte for byte."""
        receiver = yield self.gateway(server__hostname="b.test", server__domains=["example.test"])
        sender = yield self.gateway(remote__port=receiver.smtpPort, remote__tls="opportunistic")
        body = b"Subject: relay\r\n\r\n" + bytes(range(32, 127)) + b"\r\n\xc3\xa9t\xc3\xa9\r\n"
        yield self.send(sender, ["bob@example.test"], body)
        yield self.waitFor(lambda: self.mailbox(receiver, "bob", "example.test"), "the relayed message")
        [delivered] = self.mailbox(receiver, "bob", "example.test")
        self.assertTrue(delivered.endswith(body.replace(b"\r\n", b"\n")), delivered)
        self.assertRegex(delivered, rb"\(using TLSv1\.[23] with cipher \S+\)\n\tby b\.test \(jsmail\) with ESMTPS id ")
        self.assertEqual(delivered.count(b"Received: "), 2)


class SubmitTests(RemoteTestCase):
    """The embedding API: queue a message, get each recipient's final outcome."""

    @defer.inlineCallbacks
    def check(self, deliveryProcess: bool):  # type: ignore[no-untyped-def]
        gateway = yield self.gateway(queue__delivery_process=deliveryProcess)
        results = yield gateway.submit("a@localhost", ["good@example.test", "bad@example.test", "me@localhost"],
                                       b"Subject: api\r\n\r\nfrom an application\r\n")
        outcome = {r.recipient: (r.status.value, str(r.reply)[:9]) for r in results}
        self.assertEqual(outcome["good@example.test"][0], "delivered")
        self.assertEqual(outcome["bad@example.test"], ("permanent", "550 5.1.1"))
        self.assertEqual(outcome["me@localhost"][0], "delivered")
        self.assertEqual([r for _, r, _ in self.sink.received], [["good@example.test"]])

    def test_in_process(self):  # type: ignore[no-untyped-def]
        return self.check(deliveryProcess=False)

    def test_with_delivery_process(self):  # type: ignore[no-untyped-def]
        return self.check(deliveryProcess=True)

    @defer.inlineCallbacks
    def test_lf_only_message_is_delivered_with_crlf(self):  # type: ignore[no-untyped-def]
        """``EmailMessage.as_bytes()`` ends lines with LF: such a message used to be
        queued, refused by the next hop ("bare CR or LF") and bounced."""
        gateway = yield self.gateway(queue__delivery_process=False)
        [result] = yield gateway.submit("a@localhost", ["good@example.test"], b"Subject: lf\n\nbare LF body\n")
        self.assertEqual(result.status.value, "delivered")
        [(_, _, data)] = self.sink.received
        self.assertTrue(data.endswith(b"Subject: lf\r\n\r\nbare LF body\r\n"), data)


class BackoffTests(RemoteTestCase):
    @defer.inlineCallbacks
    def test_unreachable_host_is_backed_off(self):  # type: ignore[no-untyped-def]
        """A host that drops connections is tried once; within its back-off the next
        messages wait without a new connection."""
        from twisted.internet.protocol import Factory, Protocol

        attempts = []

        class Drop(Protocol):
            def connectionMade(self) -> None:
                attempts.append(1)
                self.transport.loseConnection()

        listening = reactor.listenTCP(0, Factory.forProtocol(Drop), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        gateway = yield self.gateway(remote__smarthost=f"127.0.0.1:{listening.getHost().port}", remote__host_backoff=30.0)
        for n in range(3):
            yield self.send(gateway, [f"r{n}@example.org"], b"Subject: x\r\n\r\nx\r\n")
        queue = gateway.delivery.scheduler
        yield self.waitFor(lambda: all(e.attempts for e in queue._envelopes.values()) and len(queue._envelopes) == 3,
                           "three deferred messages")
        self.assertEqual(len(attempts), 1)
        details = [e.recipients[0].lastReply for e in queue._envelopes.values()]
        self.assertEqual(sum("not tried again" in d for d in details), 2, details)


class MTASTSTests(RemoteTestCase):
    """RFC 8461 in delivery: an enforced policy that does not list the MX defers the
    mail; a policy in testing mode only logs."""

    def remote(self, mode: bytes) -> RemoteDelivery:
        from twisted.internet.ssl import Certificate, PrivateCertificate
        from twisted.web.resource import Resource
        from twisted.web.server import Site
        from twisted.web.static import Data

        ca = trustme.CA()
        certificate = ca.issue_cert("mta-sts.sts.example.test")
        wellKnown = Resource()
        wellKnown.putChild(b"mta-sts.txt", Data(b"version: STSv1\nmode: " + mode +
                                                 b"\nmx: elsewhere.example.test\nmax_age: 86400\n", "text/plain"))
        root = Resource()
        root.putChild(b".well-known", wellKnown)
        tls = PrivateCertificate.loadPEM(certificate.private_key_and_cert_chain_pem.bytes()).options()
        https = reactor.listenSSL(0, Site(root), tls, interface="127.0.0.1")
        self.addCleanup(https.stopListening)
        resolver = makeResolver(self.dnsAddress, reactor)
        fetcher = PolicyFetcher(reactor, resolver, trustRoot=Certificate.loadPEM(ca.cert_pem.bytes()),
                                httpsPort=https.getHost().port, timeout=5.0, destinations=Destinations(ALLOWED))
        return RemoteDelivery(reactor, deferToThread, resolver,
                              RemoteSettings(heloHost="a.test", port=self.peerPort, allowInternal=ALLOWED), mtaSts=fetcher)

    def deliver(self, remote: RemoteDelivery) -> defer.Deferred:
        envelope = Envelope("a@a.test", (Recipient("bob@sts.example.test"),))
        data = b"Subject: sts\r\n\r\nx\r\n"
        return remote.deliver(QueuedMessage("Q1", envelope, lambda: io.BytesIO(data)), envelope.recipients)

    @defer.inlineCallbacks
    def test_enforce_defers_when_no_mx_matches(self):  # type: ignore[no-untyped-def]
        [result] = yield self.deliver(self.remote(b"enforce"))
        self.assertEqual((result.status, str(result.reply)),
                         (DeliveryStatus.TEMPORARY, "451 4.7.5 No MX host of sts.example.test matches its MTA-STS policy"))
        self.assertEqual(self.sink.received, [])

    @defer.inlineCallbacks
    def test_testing_mode_delivers(self):  # type: ignore[no-untyped-def]
        remote = self.remote(b"testing")
        [result] = yield self.deliver(remote)
        yield remote.close()
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)


class SignedZone(DatagramProtocol):
    """A validating resolver on loopback as far as these tests need: answers from
    ``records`` (name and type to payloads) over UDP, every one with the AD bit set."""

    def __init__(self, records: dict[tuple[bytes, int], list[Any]]) -> None:
        self.records = records

    def datagramReceived(self, data: bytes, address: Any) -> None:
        query = dns.Message()
        query.fromStr(data)
        response = dns.Message(id=query.id, answer=1, recDes=query.recDes, recAv=1, authenticData=1)
        response.queries = query.queries
        response.answers = [dns.RRHeader(q.name.name, q.type, dns.IN, 300, payload)
                            for q in query.queries for payload in self.records.get((q.name.name, q.type), [])]
        self.transport.write(response.toStr(), address)


class DANETests(TestCase):
    """RFC 7672 in delivery, end to end: a resolver that vouches for the records, and
    jsmail's server with a certificate from a CA nobody trusts."""

    timeout = 30

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.leaf = trustme.CA().issue_cert("mx1.dane.test")
        certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        self.leaf.private_key_and_cert_chain_pem.write_to_path(certPath)
        self.leaf.private_key_pem.write_to_path(keyPath)
        self.queue = MemoryQueue()
        factory = ESMTPServerFactory(Listener(ServerSettings(hostname="mx1.dane.test"), self.queue, reactor,
                                              tls=ServerTLS(certPath, keyPath)))
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port

    def remote(self, *records: TLSARecord, tls: str = "opportunistic") -> RemoteDelivery:
        tlsa = [dns.UnknownRecord(bytes([r.usage, r.selector, r.matchingType]) + r.data) for r in records]
        zone = SignedZone({
            (b"dane.test", dns.MX): [dns.Record_MX(10, b"mx1.dane.test")],
            (b"mx1.dane.test", dns.A): [dns.Record_A("127.0.0.1")],
            (f"_{self.port}._tcp.mx1.dane.test".encode(), TLSA): tlsa,
        })
        udp = reactor.listenUDP(0, zone, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        resolver = makeResolver(f"127.0.0.1:{udp.getHost().port}", reactor)
        remote = RemoteDelivery(reactor, deferToThread, resolver,
                                RemoteSettings(heloHost="a.test", port=self.port, tls=tls, allowInternal=ALLOWED))
        self.addCleanup(remote.close)
        return remote

    def deliver(self, remote: RemoteDelivery) -> defer.Deferred:
        envelope = Envelope("a@a.test", (Recipient("bob@dane.test"),))
        data = b"Subject: dane\r\n\r\nx\r\n"
        return remote.deliver(QueuedMessage("Q1", envelope, lambda: io.BytesIO(data)), envelope.recipients)

    @defer.inlineCallbacks
    def test_matching_records_replace_the_ca_store(self):  # type: ignore[no-untyped-def]
        """``verify`` would refuse this CA; the TLSA records vouch for the key instead."""
        [result] = yield self.deliver(self.remote(tlsa(DANE_EE, 1, 1, self.leaf.cert_chain_pems[0]), tls="verify"))
        self.assertEqual((result.status, result.remoteMTA), (DeliveryStatus.DELIVERED, "dns; mx1.dane.test"))
        [(_, body)] = self.queue.messages.values()
        self.assertIn(b" with ESMTPS id ", body)

    @defer.inlineCallbacks
    def test_other_records_defer_without_plaintext(self):  # type: ignore[no-untyped-def]
        """Opportunistic TLS would try again in plaintext after a TLS failure; DANE never does."""
        other = trustme.CA().issue_cert("mx1.dane.test")
        [result] = yield self.deliver(self.remote(tlsa(DANE_EE, 1, 1, other.cert_chain_pems[0])))
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertEqual(result.describe(), "454 4.7.5 The mail exchanger's certificate does not match its TLSA records "
                                            "(certificate of mx1.dane.test does not match its TLSA records "
                                            "(mx1.dane.test [127.0.0.1]))")
        self.assertEqual(self.queue.messages, {})

    def test_pool_keeps_dane_sessions_apart(self) -> None:
        route = Route("mx1.dane.test")
        record = tlsa(DANE_EE, 1, 1, self.leaf.cert_chain_pems[0])
        keys = {RemoteDelivery._poolKey(route, "127.0.0.1", records) for records in [(), (record,)]}
        keys.add(RemoteDelivery._poolKey(Route("mx2.dane.test"), "127.0.0.1", (record,)))
        self.assertEqual(len(keys), 3)


class ServerFailureTests(TestCase):
    """SERVFAIL is a DomainError subclass in twisted.names, but it is no NXDOMAIN: the
    MX lookup must fail temporarily, not bounce."""

    def test_servfail_is_temporary(self) -> None:
        self.assertFalse(isNonexistent(dnserror.DNSServerError("servfail")))
        self.assertFalse(isNonexistent(dnserror.DNSQueryRefusedError("refused")))
        self.assertTrue(isNonexistent(dnserror.DNSNameError("nxdomain")))
        self.assertTrue(isNonexistent(dnserror.DomainError("not here")))

    def test_mx_lookup_servfail_is_temporary(self) -> Any:
        class Failing:
            def lookupMailExchange(self, name: str) -> Any:
                return defer.fail(dnserror.DNSServerError("servfail"))

        d = MailExchangers(Failing()).hostsFor("example.org")
        failure = self.failureResultOf(d, DeliveryError)
        self.assertFalse(failure.value.permanent)
        self.assertEqual(str(failure.value.reply), "451 4.4.3 DNS lookup for example.org failed")

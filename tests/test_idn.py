"""Internationalised domain names end to end (RFC 5890, 6531): a domain configured in
either form takes mail addressed in either form, and DKIM signs a From domain written
as a U-label with its A-label, which a verifier finds in the DNS."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._dns import makeResolver
from jsmail.config import loadConfig
from jsmail.headers import fromDomain
from jsmail.policy.dkim import DKIMResult, DKIMSigner, DKIMVerifier, SigningKey, keyRecord, zoneEntry
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, DNSServer
from tests.test_dkim import keyData, served, writeKey

A_LABEL = "xn--bcher-kva.test"


class DomainFormTests(SynchronousTestCase):
    def test_configuredULabelIsKeptAsTheALabel(self) -> None:
        self.assertEqual(loadConfig(settings={"server": {"domains": ["Bücher.test"]}}).server.domains, (A_LABEL,))

    def test_recipientInEitherFormIsLocal(self) -> None:
        queue = MemoryQueue()
        d = Dialog(ServerSettings(hostname="mx.test"), queue, policies=(RelayControl(lambda domain: domain == A_LABEL),))
        d.read()
        d.send(b"EHLO client.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n"), b"250 2.1.0 Sender OK\r\n")
        self.assertEqual(d.send("RCPT TO:<jörg@bücher.test>\r\n".encode()), b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send(f"RCPT TO:<anna@{A_LABEL}>\r\n".encode()), b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send("RCPT TO:<x@bücher.example>\r\n".encode())[:10], b"550 5.7.1 ")  # not ours: relaying
        d.send(b"DATA\r\n")
        self.assertTrue(d.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n").startswith(b"250 "))
        (envelope, _), = queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], [f"jörg@{A_LABEL}", f"anna@{A_LABEL}"])


class SigningTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_uLabelFromIsSignedWithTheALabel(self) -> Any:
        key = SigningKey.load("bücher.test", "s", writeKey(self, keyData("ed25519")))
        dnsServer = DNSServer({A_LABEL: [served(zoneEntry("s", key.domain, keyRecord(keyData("ed25519"))))]})
        self.addCleanup(dnsServer.stop)
        resolver = makeResolver(dnsServer.start(), reactor)
        message = "From: Jörg <jörg@bücher.test>\r\nTo: a@example.org\r\nSubject: grüße\r\n\r\nHallo\r\n".encode()
        domain = fromDomain(message)
        self.assertEqual(domain, A_LABEL)
        signature = yield DKIMSigner(reactor, [key]).sign(message, domain)
        self.assertIn(f"d={A_LABEL};".encode(), signature)
        results = yield DKIMVerifier(reactor, resolver, timeout=5).verify(signature + message)
        self.assertEqual([(r.result, r.domain) for r in results], [("pass", A_LABEL)])
        self.assertIsInstance(results[0], DKIMResult)

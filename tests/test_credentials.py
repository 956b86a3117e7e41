"""Relay credentials go only to a peer whose certificate was verified (security review
M-3): against a real TLS peer on loopback that presents a certificate for another name
and records every line it is sent, as the review's evilsmtp.py did."""

from __future__ import annotations

import base64
import io
from typing import Any

import trustme
from twisted.internet import defer, ssl
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.remote.agent import RemoteDelivery
from jsmail.smtp.client import ClientSettings
from jsmail.smtp.commands import OutgoingMessage
from jsmail.smtp.connect import sendmail

USER, PASSWORD = "relayuser", "RelayPassw0rd"


class RecordingRelay(LineReceiver):
    """A relay offering STARTTLS and AUTH; ``factory.lines`` gets every line it is sent,
    read after TLS is undone (what a man in the middle would read)."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.tls = False
        self.inData = False
        self.sendLine(b"220 relay.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(line)
        if self.inData:
            if line == b".":
                self.inData = False
                self.sendLine(b"250 2.0.0 taken")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-relay.test" + (b"" if self.tls else b"\r\n250-STARTTLS") + b"\r\n250 AUTH PLAIN LOGIN")
        elif line.upper() == b"STARTTLS":
            self.sendLine(b"220 go ahead")
            self.transport.startTLS(self.factory.tlsOptions)
            self.tls = True
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 ok")
        elif verb == b"DATA":
            self.inData = True
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed.callback(None)


class CredentialsTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.trustRoot = ssl.Certificate.loadPEM(self.ca.cert_pem.bytes())

    def relay(self, certifiedName: str) -> int:
        """A recording relay on loopback whose certificate (from the test CA) is for
        ``certifiedName``; its port."""
        certificate = self.ca.issue_cert(certifiedName)
        factory = Factory.forProtocol(RecordingRelay)
        pem = certificate.private_key_and_cert_chain_pem.bytes()
        factory.tlsOptions = ssl.PrivateCertificate.loadPEM(pem).options()
        factory.lines = self.lines = []
        factory.closed = self.closed = defer.Deferred()  # one connection per test
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def assertNoSecretSent(self) -> None:
        sent = b"\n".join(self.lines)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        self.assertFalse([line for line in self.lines if line[:4].upper() == b"AUTH"], self.lines)
        for secret in (PASSWORD.encode(), plain, base64.b64encode(PASSWORD.encode())):
            self.assertNotIn(secret, sent)

    @defer.inlineCallbacks
    def test_credentialsNotSentToUnverifiedPeer(self) -> Any:
        """Defence in depth: even told to use opportunistic TLS, the client does not send
        AUTH to a peer whose certificate is for another name; the mail waits (454 4.7.0)."""
        port = self.relay("wrong.test")
        message = OutgoingMessage("a@example.org", (Recipient("b@example.net"),), {}, 3, lambda: io.BytesIO(b"x\r\n"))
        settings = ClientSettings(heloName="client.test", tls="opportunistic", tlsHostname="relay.test",
                                  trustRoot=self.trustRoot, username=USER, password=PASSWORD)
        [result] = yield sendmail(_reactor, "127.0.0.1", port, message, settings)
        yield self.closed
        self.assertEqual((result.status, str(result.reply)), (DeliveryStatus.TEMPORARY, "454 4.7.0 Not sending "
                         "credentials to a relay whose certificate was not verified"))
        self.assertEqual(self.lines[:3], [b"EHLO client.test", b"STARTTLS", b"EHLO client.test"])
        self.assertNoSecretSent()

    def deliverThroughRoute(self, port: int) -> defer.Deferred[list[Any]]:
        """Deliver to x@b.test along a route configured with credentials and no tls key."""
        config = loadConfig(None, {"remote.routes": [{"domain": "b.test", "host": "127.0.0.1", "port": port,
                                                      "username": USER, "password": PASSWORD}]})
        remote = RemoteDelivery(_reactor, defer.maybeDeferred, None, config.remote, trustRoot=self.trustRoot)
        self.addCleanup(remote.close)
        envelope = Envelope("a@example.org", (Recipient("x@b.test"),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"))
        return remote.deliver(message, envelope.recipients)

    @defer.inlineCallbacks
    def test_routeCredentialsNotSentToWrongCertificate(self) -> Any:
        """A route with credentials verifies by default: the peer with a certificate
        for another name never gets past the handshake, and the mail is deferred."""
        port = self.relay("wrong.test")
        [result] = yield self.deliverThroughRoute(port)
        yield self.closed
        self.assertEqual((result.status, str(result.reply)),
                         (DeliveryStatus.TEMPORARY, "454 4.7.5 TLS with the mail exchanger failed"))
        self.assertEqual(self.lines, [b"EHLO " + loadConfig().remote.heloHost.encode(), b"STARTTLS"])
        self.assertNoSecretSent()

    @defer.inlineCallbacks
    def test_routeCredentialsSentToVerifiedPeer(self) -> Any:
        """The same relay with a certificate for the name it is reached by gets AUTH."""
        port = self.relay("127.0.0.1")
        [result] = yield self.deliverThroughRoute(port)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        self.assertIn(b"AUTH PLAIN " + plain, self.lines)

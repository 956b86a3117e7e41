"""SPF, DKIM, DMARC and Authentication-Results through the running gateway, with every
record served by a real DNS server on loopback and smtplib as the client.

The issue's "done when": a message sent through the submission port leaves DKIM-signed;
a message from a host that fails SPF for a domain with p=reject is refused with a clear
reply; one that passes carries one Authentication-Results field with spf=, dkim= and
dmarc= results.
"""

from __future__ import annotations

import email
import os
import re
import smtplib
import ssl
from typing import Any

import trustme
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial.unittest import TestCase

from jsmail._dns import makeResolver
from jsmail.auth import setPassword
from jsmail.config import loadConfig
from jsmail.policy.dkim import DKIMSigner, DKIMVerifier, SigningKey, generateKey, keyRecord
from jsmail.service import MailGateway
from jsmail.testing import DNSServer, delivered

CLIENT_TIMEOUT = 10


def txt(text: str) -> Any:
    """A TXT record, cut into strings of at most 255 octets."""
    data = text.encode("ascii")
    return dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)], ttl=60)


def message(author: str, subject: str = "hello") -> bytes:
    return (f"From: {author}\r\nTo: x@localhost\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@client.test>\r\n\r\nHello there.\r\n").encode("ascii")


class EmailAuthenticationTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        keyPEM = generateKey("rsa", 2048)
        self.keyPath = os.path.join(self.data, "example.test.sel.key")
        with open(self.keyPath, "wb") as f:
            f.write(keyPEM)
        self.key = SigningKey.load("example.test", "sel", self.keyPath)
        zones = {
            "example.test": [
                ("example.test", txt("v=spf1 ip4:127.0.0.1 -all")),
                ("_dmarc.example.test", txt("v=DMARC1; p=reject")),
                ("sel._domainkey.example.test", txt(keyRecord(keyPEM))),
            ],
            "forged.test": [
                ("forged.test", txt("v=spf1 ip4:192.0.2.1 -all")),
                ("_dmarc.forged.test", txt("v=DMARC1; p=reject")),
            ],
            "soft.test": [
                ("soft.test", txt("v=spf1 ~all")),
                ("_dmarc.soft.test", txt("v=DMARC1; p=reject")),
            ],
        }
        self.dnsServer = DNSServer(zones)
        self.dns = self.dnsServer.start()
        self.addCleanup(self.dnsServer.stop)
        self.ca = trustme.CA()
        certificate = self.ca.issue_cert("mx.test", "127.0.0.1")
        certPath = os.path.join(self.data, "cert.pem")
        certificate.private_key_and_cert_chain_pem.write_to_path(certPath)
        setPassword(os.path.join(self.data, "passwd"), "u@example.test", "secret")
        ephemeral = ["tcp:0:interface=127.0.0.1"]
        config = loadConfig(settings={
            "server": {"hostname": "mx.test", "data": self.data, "tls_certificate": certPath, "domains": ["localhost"]},
            "smtp": {"listen": ephemeral, "submission": ephemeral, "smtps": []},
            "remote": {"dns_server": self.dns}, "queue": {"delivery_process": False},
            "policy": {"authserv_id": "mx.test", "smtp": ["spf", "dkim", "dmarc"], "submission": ["dkim-sign"]},
            "plugins": {"dkim-sign": {"keys": [{"domain": "example.test", "selector": "sel", "key": self.keyPath}]}},
        })
        self.gateway = MailGateway(config)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.ports = {}
        for listener in self.gateway.listeners:
            port = yield listener.whenListening()
            self.ports[listener.kind] = port.getHost().port

    def send(self, sender: str, data: bytes) -> defer.Deferred[list[tuple[int, bytes]]]:
        """MAIL, RCPT and (if both are accepted) DATA on port 25, from 127.0.0.1."""

        def session() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT) as client:
                client.ehlo()
                replies = [client.mail(sender), client.rcpt("x@localhost")]
                if all(code == 250 for code, _ in replies):
                    replies.append(client.data(data))
                return replies

        return deferToThread(session)

    @defer.inlineCallbacks
    def delivered(self) -> Any:
        """The one message delivered to x@localhost (a bounded wait)."""
        [message] = yield delivered(os.path.join(self.data, "mail", "localhost", "x"))
        return message

    @defer.inlineCallbacks
    def test_passing_message_carries_one_authentication_results_field(self) -> Any:
        signer = DKIMSigner(reactor, [self.key])
        original = message("a@example.test")
        signature = yield signer.sign(original, "example.test")
        replies = yield self.send("a@example.test", signature + original)
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        delivered = yield self.delivered()
        parsed = email.message_from_bytes(delivered)
        fields = parsed.get_all("Authentication-Results")
        self.assertEqual(len(fields), 1)
        value = " ".join(fields[0].split())
        self.assertTrue(value.startswith("mx.test;"), value)
        self.assertIn("spf=pass smtp.mailfrom=a@example.test", value)
        self.assertIn("dkim=pass header.d=example.test", value)
        self.assertIn("dmarc=pass header.from=example.test", value)
        self.assertIn("Pass (mx.test: domain of a@example.test designates 127.0.0.1 as permitted sender)".lower(),
                      " ".join(parsed["Received-SPF"].split()).lower())

    @defer.inlineCallbacks
    def test_spf_fail_for_a_reject_domain_is_refused_at_mail(self) -> Any:
        replies = yield self.send("a@forged.test", message("a@forged.test"))
        code, text = replies[0]
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.7.23 SPF validation failed"), text)

    @defer.inlineCallbacks
    def test_dmarc_reject_refuses_an_unaligned_message_at_the_end_of_data(self) -> Any:
        replies = yield self.send("a@soft.test", message("a@soft.test"))
        self.assertEqual(replies[:2], [(250, b"2.1.0 Sender OK"), (250, b"2.1.5 Recipient OK")])
        self.assertEqual(replies[2], (550, b"5.7.1 Message rejected by the DMARC policy of soft.test"))

    @defer.inlineCallbacks
    def test_a_forged_authentication_results_field_is_removed(self) -> Any:
        forged = b"Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n" + message("a@example.test")
        replies = yield self.send("a@example.test", forged)
        self.assertEqual(replies[-1][0], 250)
        delivered = yield self.delivered()
        self.assertNotIn(b"bank.test", delivered)
        self.assertEqual(email.message_from_bytes(delivered).get_all("Authentication-Results")[0].count("dkim=none"),
                         1)

    @defer.inlineCallbacks
    def test_submission_leaves_dkim_signed(self) -> Any:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)

        def submit() -> Any:
            with smtplib.SMTP("127.0.0.1", self.ports["submission"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT) as client:
                client.starttls(context=context)
                client.login("u@example.test", "secret")
                bare = b"From: u@example.test\r\nTo: x@localhost\r\nSubject: hi\r\n\r\nHello there.\r\n"
                return client.sendmail("u@example.test", ["x@localhost"], bare)  # no Date, no Message-ID

        refused = yield deferToThread(submit)
        self.assertEqual(refused, {})
        delivered = yield self.delivered()
        self.assertTrue(delivered.startswith(b"Return-Path: <u@example.test>\nDelivered-To: x@localhost\n"
                                             b"DKIM-Signature: "), delivered[:200])
        self.assertNotIn(b"Authentication-Results", delivered)  # submission runs no checks
        verifier = DKIMVerifier(reactor, makeResolver(self.dns, reactor))
        asQueued = delivered.split(b"\n", 2)[2].replace(b"\n", b"\r\n")
        [result] = yield verifier.verify(asQueued)
        self.assertEqual((result.result, result.domain, result.selector), ("pass", "example.test", "sel"))
        # RFC 6409 section 8: the submission server adds Date and Message-ID where they
        # are missing, before signing (newcomer review 15: the signer signed their
        # absence, and a next hop that added them broke the signature).
        header = asQueued.split(b"\r\n\r\n", 1)[0]
        self.assertEqual(len(re.findall(rb"(?im)^Date: ", header)), 1)
        self.assertEqual(len(re.findall(rb"(?im)^Message-ID: <\d{14}\.\w+\.jsmail@mx\.test>", header)), 1)
        signed = re.search(rb"(?is)^DKIM-Signature:.*?\bh=([^;]+);", header).group(1)
        self.assertIn(b"date", signed.lower())
        self.assertIn(b"message-id", signed.lower())

"""ARC: seal and validate against a real DNS server on loopback through a real
twisted.names resolver, one hop and two; tampering; forged Authentication-Results."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from jsmail._dns import makeResolver
from jsmail.policy.arc import ARCResult, ARCSealer, ARCVerifier
from jsmail.policy.dkim import SigningError, SigningKey, keyRecord, zoneEntry
from jsmail.testing import DNSServer
from tests.test_dkim import MESSAGE, dkimpyCommand, keyData, served, writeKey


def unfolded(fields: bytes) -> bytes:
    return re.sub(rb"\r\n[ \t]+", b" ", fields)


class ARCTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        keyFile = writeKey(self, keyData("rsa"))
        self.first = SigningKey.load("forwarder.test", "arc", keyFile)
        self.second = SigningKey.load("list.test", "arc", keyFile)
        record = keyRecord(keyData("rsa"))
        self.dns = DNSServer({"forwarder.test": [served(zoneEntry("arc", "forwarder.test", record))],
                              "list.test": [served(zoneEntry("arc", "list.test", record))]})
        self.dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)
        self.verifier = ARCVerifier(reactor, makeResolver(self.dnsAddress, reactor), timeout=5)

    @defer.inlineCallbacks
    def hop(self, key: SigningKey, message: bytes, authservId: str, arc: str) -> Any:
        """What one ADMD does: validate, add Authentication-Results, seal."""
        authResults = f"Authentication-Results: {authservId}; dkim=none; arc={arc}\r\n".encode()
        sealed = yield ARCSealer(reactor, key, authservId).seal(message, authResults)
        return sealed + authResults + message

    @defer.inlineCallbacks
    def test_no_arc_headers(self) -> Any:
        result = yield self.verifier.verify(MESSAGE)
        self.assertEqual(result, ARCResult("none", "", 0))

    @defer.inlineCallbacks
    def test_one_hop_passes(self) -> Any:
        message = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        fields = unfolded(message)
        self.assertRegex(fields, rb"^ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.test; s=arc; t=\d+; b=")
        self.assertIn(b"\r\nARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=forwarder.test;", fields)
        self.assertIn(b"\r\nARC-Authentication-Results: i=1; mx.forwarder.test; dkim=none; arc=none\r\n", fields)
        result = yield self.verifier.verify(message)
        self.assertEqual(result, ARCResult("pass", "", 1))

    @defer.inlineCallbacks
    def test_two_hops_pass(self) -> Any:
        once = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        first = yield self.verifier.verify(once)
        twice = yield self.hop(self.second, once, "mx.list.test", first.result)
        self.assertRegex(unfolded(twice), rb"^ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=list.test;")
        result = yield self.verifier.verify(twice)
        self.assertEqual(result, ARCResult("pass", "", 2))

    @defer.inlineCallbacks
    def test_dkimpy_arcverify_passes(self) -> Any:
        """dkimpy's own arcverify command, with dnspython for DNS, agrees."""
        once = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        twice = yield self.hop(self.second, once, "mx.list.test", "pass")
        out, err, code = yield dkimpyCommand(self, "dkim.arcverify", self.dns.port, twice)
        self.assertEqual((out, code), (b"arc verification: cv=b'pass' success\n", 0), err)
        out, err, code = yield dkimpyCommand(self, "dkim.arcverify", self.dns.port, twice.replace(b"see", b"saw"))
        self.assertEqual(out, b"arc verification: cv=b'fail' Most recent ARC-Message-Signature did not validate\n")

    @defer.inlineCallbacks
    def test_tampered_body_fails(self) -> Any:
        message = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        result = yield self.verifier.verify(message.replace(b"see you", b"pay me"))
        self.assertEqual(result, ARCResult("fail", "Most recent ARC-Message-Signature did not validate", 1))

    @defer.inlineCallbacks
    def test_tampered_seal_fails(self) -> Any:
        """The second hop's seal covers the first set: changing the first AAR breaks it."""
        once = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        twice = yield self.hop(self.second, once, "mx.list.test", "pass")
        aar = b" dkim=none;\r\n arc=none\r\nAuthentication-Results: mx.forwarder.test"
        self.assertEqual(twice.count(aar), 1)
        result = yield self.verifier.verify(twice.replace(aar, aar.replace(b"dkim=none", b"dkim=pass")))
        self.assertEqual(result, ARCResult("fail", "ARC-Seal[2] did not validate", 2))

    @defer.inlineCallbacks
    def test_missing_set_fails(self) -> Any:
        message = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        withoutSeal = re.sub(rb"^ARC-Seal:.*?\r\n(?=\S)", b"", message, flags=re.S)
        result = yield self.verifier.verify(withoutSeal)
        self.assertEqual(result.result, "fail")
        self.assertIn("Incomplete ARC set for instance 1", result.reason)

    @defer.inlineCallbacks
    def test_dns_not_answering(self) -> Any:
        message = yield self.hop(self.first, MESSAGE, "mx.forwarder.test", "none")
        silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        verifier = ARCVerifier(reactor, makeResolver(f"127.0.0.1:{silent.getHost().port}", reactor), timeout=0.5)
        result = yield verifier.verify(message)
        self.assertEqual(result.result, "fail")
        self.assertIn("DNS lookup of arc._domainkey.forwarder.test. failed", result.reason)

    @defer.inlineCallbacks
    def test_forged_authentication_results_not_copied(self) -> Any:
        """An Authentication-Results claiming to be ours, already in the message, stays
        out of the ARC-Authentication-Results."""
        forged = b"Authentication-Results: mx.forwarder.test;\r\n dkim=pass header.d=bank.test\r\n" + MESSAGE
        message = yield self.hop(self.first, forged, "mx.forwarder.test", "none")
        [aar] = re.findall(rb"ARC-Authentication-Results: [^\r]*", unfolded(message))
        self.assertEqual(aar, b"ARC-Authentication-Results: i=1; mx.forwarder.test; dkim=none; arc=none")
        result = yield self.verifier.verify(message)
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_refusals(self) -> Any:
        sealer = ARCSealer(reactor, self.first, "mx.forwarder.test")
        for authResults, why in [
            (b"", "no Authentication-Results to seal"),
            (b"Authentication-Results: other.test; arc=none", "no Authentication-Results from mx.forwarder.test"),
            (b"mx.forwarder.test; arc=pass", "No existing chain found on message, cv should be none"),
        ]:
            error = yield self.assertFailure(sealer.seal(MESSAGE, authResults), SigningError)
            self.assertIn(why, str(error))

    def test_ed25519_key_refused(self) -> None:
        ed = SigningKey.load("forwarder.test", "ed", writeKey(self, keyData("ed25519")))
        e = self.assertRaises(ValueError, ARCSealer, reactor, ed, "mx.forwarder.test")
        self.assertIn("ARC seals with RSA keys only", str(e))

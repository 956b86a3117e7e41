"""DKIM: keys, signing and verifying against a real DNS server on loopback through a real
twisted.names resolver; jsmail's signatures checked by dkimpy's own dkimverify in a
subprocess; the keygen command run as a subprocess."""

from __future__ import annotations

import base64
import os
import re
import sys
import threading
from typing import Any

from dkim.util import parse_tag_value
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._dns import makeResolver
from jsmail._threads import reactorThreads
from jsmail.policy.dkim import (
    DKIMResult,
    DKIMSigner,
    DKIMVerifier,
    SigningError,
    SigningKey,
    generateKey,
    keyRecord,
    oversigned,
    zoneEntry,
)
from jsmail.testing import DNSServer

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n"
           b"Hello Bob,\r\nsee you.\r\n")

DATA = os.path.join(os.path.dirname(__file__), "data", "dkim")

_keys: dict[str, bytes] = {}


def keyData(kind: str) -> bytes:
    """One key of each kind per test run (RSA generation is slow)."""
    if kind not in _keys:
        _keys[kind] = generateKey(kind, 2048)
    return _keys[kind]


def writeKey(testCase: SynchronousTestCase, data: bytes) -> str:
    path = testCase.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path


def served(zoneLine: str) -> tuple[str, dns.Record_TXT]:
    """The (name, record) a zone file line from :func:`zoneEntry` or keygen publishes."""
    name, _, text = zoneLine.partition(" IN TXT ")
    return name.rstrip("."), dns.Record_TXT(*[s.encode() for s in re.findall(r'"([^"]*)"', text)], ttl=60)


def signatureB(field: bytes) -> str:
    value = field.partition(b":")[2]
    return re.sub(rb"\s+", b"", parse_tag_value(value)[b"b"]).decode()[:8]


class KeyTests(SynchronousTestCase):
    def test_load_formats(self) -> None:
        """PKCS#1 and PKCS#8 PEM, RSA and Ed25519, and dknewkey's base64 Ed25519 seed."""
        from cryptography.hazmat.primitives import serialization

        rsaKey = serialization.load_pem_private_key(keyData("rsa"), None)
        pkcs8 = rsaKey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        edKey = serialization.load_pem_private_key(keyData("ed25519"), None)
        seed = base64.b64encode(edKey.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption()))
        for data, algorithm in [(keyData("rsa"), "rsa-sha256"), (pkcs8, "rsa-sha256"),
                                (keyData("ed25519"), "ed25519-sha256"), (seed + b"\n", "ed25519-sha256")]:
            key = SigningKey.load("Example.Test.", "s", writeKey(self, data))
            self.assertEqual((key.domain, key.algorithm), ("example.test", algorithm))
        self.assertEqual(SigningKey.load("example.test", "s", writeKey(self, seed)).privateKey, seed)
        self.assertEqual(keyRecord(seed), keyRecord(keyData("ed25519")))

    def test_bad_key_files(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        with open(os.path.join(DATA, "rsa-512.pem"), "rb") as f:
            short = f.read()  # cryptography makes no key this short
        ecKey = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        encrypted = serialization.load_pem_private_key(keyData("rsa"), None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
        for data, why in [(short, "512-bit RSA key is too short"), (ecKey, "DKIM signs with RSA or Ed25519"),
                          (encrypted, "not an unencrypted PEM private key"), (b"hello", "neither PEM nor"),
                          (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an unencrypted")]:
            path = writeKey(self, data)
            e = self.assertRaises(ValueError, SigningKey.load, "example.test", "s", path)
            self.assertTrue(str(e).startswith(f"DKIM key {path}: "), str(e))
            self.assertIn(why, str(e))
        e = self.assertRaises(ValueError, SigningKey.load, "example.test", "s", "/nonexistent/key")
        self.assertEqual(str(e), "DKIM key /nonexistent/key: No such file or directory")

    def test_generate_refuses(self) -> None:
        for kind, bits in [("rsa", 512), ("rsa", 8192), ("dsa", 2048)]:
            self.assertRaises(ValueError, generateKey, kind, bits)

    def test_zone_entry_splits_strings(self) -> None:
        record = keyRecord(generateKey("rsa", 4096))
        line = zoneEntry("s1", "example.test.", record)
        self.assertTrue(line.startswith('s1._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p='), line)
        name, txt = served(line)
        self.assertEqual(name, "s1._domainkey.example.test")
        self.assertGreater(len(txt.data), 1)
        self.assertTrue(all(len(s) <= 255 for s in txt.data))
        self.assertEqual(b"".join(txt.data).decode(), record)

    def test_key_for_parent_domains(self) -> None:
        keys = [SigningKey.load(d, "s", writeKey(self, keyData("ed25519"))) for d in ("example.test", "a.b.test")]
        signer = DKIMSigner(reactor, keys)
        for domain, expected in [("example.test", "example.test"), ("Mail.Example.Test.", "example.test"),
                                 ("x.a.b.test", "a.b.test"), ("b.test", None), ("example.testx", None)]:
            key = signer.keyFor(domain)
            self.assertEqual(key and key.domain, expected, domain)

    def test_oversigned(self) -> None:
        message = b"From: a@x\r\nReceived: 1\r\nto: b@y\r\nTo: c@z\r\nSubject: s\r\n\r\nFrom: body\r\n"
        self.assertEqual(oversigned(message, (b"from", b"to", b"cc")), [b"from", b"from", b"to", b"to", b"to", b"cc"])

    def test_signer_needs_from(self) -> None:
        self.assertRaises(ValueError, DKIMSigner, reactor, [], [b"subject"])


class DNSTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.rsa = SigningKey.load("example.test", "rsa", writeKey(self, keyData("rsa")))
        self.ed = SigningKey.load("example.test", "ed", writeKey(self, keyData("ed25519")))
        self.dns = DNSServer({"example.test": [
            served(zoneEntry("rsa", "example.test", keyRecord(keyData("rsa")))),
            served(zoneEntry("ed", "example.test", keyRecord(keyData("ed25519")))),
            ("bad._domainkey.example.test", dns.Record_TXT(b"v=DKIM1; k=rsa; p=AAAA", ttl=60)),
        ]})
        self.dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)
        self.verifier = DKIMVerifier(reactor, makeResolver(self.dnsAddress, reactor), timeout=5)

    @defer.inlineCallbacks
    def signed(self, key: SigningKey, message: bytes = MESSAGE, domain: str = "example.test") -> Any:
        signature = yield DKIMSigner(reactor, [key]).sign(message, domain)
        return signature + message


class VerifyTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_rsa_pass(self) -> Any:
        message = yield self.signed(self.rsa)
        self.assertTrue(message.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;"))
        results = yield self.verifier.verify(message)
        self.assertEqual(results, [DKIMResult("pass", "example.test", "rsa", "@example.test", signatureB(message),
                                              "", "rsa-sha256")])

    @defer.inlineCallbacks
    def test_ed25519_pass(self) -> Any:
        message = yield self.signed(self.ed)
        results = yield self.verifier.verify(message)
        self.assertEqual(results, [DKIMResult("pass", "example.test", "ed", "@example.test", signatureB(message),
                                              "", "ed25519-sha256")])

    @defer.inlineCallbacks
    def test_signature_ends_with_crlf_and_is_folded(self) -> Any:
        signature = yield DKIMSigner(reactor, [self.rsa]).sign(MESSAGE, "example.test")
        self.assertTrue(signature.endswith(b"\r\n"))
        self.assertTrue(all(len(line) <= 78 for line in signature.split(b"\r\n")), signature)
        self.assertIn(b"h=from : from : sender : reply-to : subject : subject : date : date", re.sub(rb"\r\n\s+", b" ", signature))

    @defer.inlineCallbacks
    def test_subdomain_signed_by_parent_key(self) -> Any:
        message = yield self.signed(self.rsa, domain="lists.example.test")
        [result] = yield self.verifier.verify(message)
        self.assertEqual((result.result, result.domain), ("pass", "example.test"))

    @defer.inlineCallbacks
    def test_body_modified(self) -> Any:
        message = yield self.signed(self.rsa)
        [result] = yield self.verifier.verify(message.replace(b"see you", b"pay me"))
        self.assertEqual((result.result, result.reason), ("fail", "body hash did not verify"))

    @defer.inlineCallbacks
    def test_header_modified(self) -> Any:
        for key in (self.rsa, self.ed):
            message = yield self.signed(key)
            [result] = yield self.verifier.verify(message.replace(b"Subject: hello", b"Subject: HELLO"))
            self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))

    @defer.inlineCallbacks
    def test_header_added_breaks_oversigned(self) -> Any:
        """A second Subject, or a first Reply-To, added above the signed ones."""
        message = yield self.signed(self.rsa)
        signature, _, rest = message.partition(b"From: Alice")
        for added in (b"Subject: urgent\r\n", b"Reply-To: mallory@evil.test\r\n"):
            [result] = yield self.verifier.verify(signature + added + b"From: Alice" + rest)
            self.assertEqual(result.result, "fail", added)

    @defer.inlineCallbacks
    def test_relaxed_survives_refolding(self) -> Any:
        message = yield self.signed(self.rsa)
        refolded = message.replace(b"Subject: hello", b"Subject:   hello\r\n\t").replace(b"see you.", b"see   you.  ")
        [result] = yield self.verifier.verify(refolded)
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_no_key_record(self) -> Any:
        missing = SigningKey.load("example.test", "gone", self.rsa.keyFile)
        message = yield self.signed(missing)
        [result] = yield self.verifier.verify(message)
        self.assertEqual((result.result, result.reason),
                         ("permerror", "no key record at gone._domainkey.example.test."))

    @defer.inlineCallbacks
    def test_no_such_domain(self) -> Any:
        elsewhere = SigningKey.load("nowhere.test", "s", self.rsa.keyFile)
        message = yield self.signed(elsewhere, domain="nowhere.test")
        [result] = yield self.verifier.verify(message)
        self.assertEqual((result.result, result.reason), ("permerror", "no key record at s._domainkey.nowhere.test."))

    @defer.inlineCallbacks
    def test_bad_key_record(self) -> Any:
        bad = SigningKey.load("example.test", "bad", self.rsa.keyFile)
        message = yield self.signed(bad)
        [result] = yield self.verifier.verify(message)
        self.assertEqual(result.result, "permerror")
        self.assertTrue(result.reason.startswith("bad key record at bad._domainkey.example.test.: "), result.reason)

    @defer.inlineCallbacks
    def test_dns_not_answering(self) -> Any:
        """A DNS server that never answers: temperror once the timeout has passed."""
        silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        verifier = DKIMVerifier(reactor, makeResolver(f"127.0.0.1:{silent.getHost().port}", reactor), timeout=0.5)
        message = yield self.signed(self.rsa)
        [result] = yield verifier.verify(message)
        self.assertEqual(result.result, "temperror")
        self.assertTrue(result.reason.startswith("DNS lookup of rsa._domainkey.example.test. failed: "), result.reason)

    @defer.inlineCallbacks
    def test_unsigned(self) -> Any:
        results = yield self.verifier.verify(MESSAGE)
        self.assertEqual(results, [])
        results = yield self.verifier.verify(b"not a message at all\x00\xff")
        self.assertEqual(results, [])

    @defer.inlineCallbacks
    def test_two_signatures_top_first(self) -> Any:
        once = yield self.signed(self.rsa)
        twice = yield self.signed(self.ed, once)
        results = yield self.verifier.verify(twice)
        self.assertEqual([(r.result, r.selector) for r in results], [("pass", "ed"), ("pass", "rsa")])

    @defer.inlineCallbacks
    def test_at_most_max_signatures(self) -> Any:
        message = MESSAGE
        for _ in range(3):
            message = yield self.signed(self.ed, message)
        verifier = DKIMVerifier(reactor, makeResolver(self.dnsAddress, reactor), maxSignatures=2)
        results = yield verifier.verify(message)
        self.assertEqual([r.result for r in results], ["pass", "pass"])

    @defer.inlineCallbacks
    def test_broken_signatures(self) -> Any:
        """Bad fields give neutral (RFC 8601 section 2.7.1) with the reason, never an exception."""
        message = yield self.signed(self.rsa)
        cases = {
            b"DKIM-Signature: garbage\r\n": ("neutral", "the signature's tags cannot be parsed"),
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=rsa\r\n": ("neutral", "missing"),
            message.partition(b"From:")[0].replace(b"a=rsa-sha256", b"a=rsa-md5"): ("neutral", "unknown signature"),
            message.partition(b"From:")[0].replace(b"v=1", b"v=2"): ("neutral", "v= value is not 1"),
            message.partition(b"From:")[0].replace(b"i=@example.test", b"i=@evil.test"): ("neutral", "i= domain"),
        }
        for field, (expected, reason) in cases.items():
            [result] = yield self.verifier.verify(field + MESSAGE)
            self.assertEqual(result.result, expected, field)
            self.assertIn(reason, result.reason, field)

    @defer.inlineCallbacks
    def test_unparseable_header_section(self) -> Any:
        message = yield self.signed(self.rsa)
        results = yield self.verifier.verify(message.replace(b"To: bob", b"this is no header\r\nTo: bob"))
        self.assertEqual([r.result for r in results], ["permerror"])
        self.assertIn("the header section cannot be parsed", results[0].reason)

    @defer.inlineCallbacks
    def test_large_message_off_the_reactor_thread(self) -> Any:
        """dkimpy's hashing of a 20 MB body runs in a worker thread: the Deferred has not
        fired when sign or verify returns, and the work ran outside the reactor thread."""
        large = MESSAGE + b"0123456789" * 2_000_000 + b"\r\n"
        ran: list[threading.Thread] = []

        def runInThread(f: Any, *args: Any) -> defer.Deferred[Any]:
            def recorded(*args: Any) -> Any:
                ran.append(threading.current_thread())
                return f(*args)
            return reactorThreads(reactor)(recorded, *args)

        signing = DKIMSigner(reactor, [self.rsa]).sign(large, "example.test")
        self.assertFalse(signing.called)
        signature = yield signing
        verifying = self.verifier.verify(signature + large)
        self.assertFalse(verifying.called)
        [result] = yield verifying
        self.assertEqual(result.result, "pass")
        verifier = DKIMVerifier(reactor, makeResolver(self.dnsAddress, reactor), runInThread=runInThread)
        [result] = yield verifier.verify(signature + large)
        self.assertEqual(result.result, "pass")
        self.assertEqual(len(ran), 1)
        self.assertIsNot(ran[0], threading.main_thread())

    def test_sign_without_key(self) -> None:
        failure = self.failureResultOf(DKIMSigner(reactor, [self.rsa]).sign(MESSAGE, "example.net"), SigningError)
        self.assertEqual(str(failure.value), "no DKIM key for example.net")


# dkimpy's own commands (dkim.dkimverify, dkim.arcverify), run as python -c: SCRIPT PORT
# FILE MODULE, with their DNS (dnspython's default resolver) pointed at the loopback server.
DKIMPY_COMMAND = """
import importlib, sys, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers, resolver.port = ["127.0.0.1"], int(sys.argv[1])
dns.resolver.default_resolver = resolver
sys.stdin = open(sys.argv[2])
module = importlib.import_module(sys.argv[3])
sys.argv = [sys.argv[3]]
module.main()
"""


def dkimpyCommand(testCase: SynchronousTestCase, module: str, port: int,
                  message: bytes) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run dkimpy's command ``module`` on ``message``: stdout, stderr, exit status."""
    path = writeKey(testCase, message)
    return getProcessOutputAndValue(sys.executable, ["-c", DKIMPY_COMMAND, str(port), path, module], env=os.environ)


class DkimverifyTests(DNSTestCase):
    """A message jsmail signs passes dkimpy's independent ``dkimverify`` command:
    dnspython's default resolver, not twisted.names, fetches the key."""

    def dkimverify(self, message: bytes) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return dkimpyCommand(self, "dkim.dkimverify", self.dns.port, message)

    @defer.inlineCallbacks
    def test_dkimverify_passes(self) -> Any:
        for key in (self.rsa, self.ed):
            message = yield self.signed(key)
            out, err, code = yield self.dkimverify(message)
            self.assertEqual((out, code), (b"signature ok\n", 0), (key.algorithm, err))

    @defer.inlineCallbacks
    def test_dkimverify_fails_tampered(self) -> Any:
        message = yield self.signed(self.rsa)
        out, err, code = yield self.dkimverify(message.replace(b"see you", b"pay me"))
        self.assertEqual((out, code), (b"", 1))
        self.assertIn(b"dkim.ValidationError: body hash mismatch", err)  # dkimverify does not catch it
        out, err, code = yield self.dkimverify(message.replace(b"Subject: hello", b"Subject: HELLO"))
        self.assertEqual((out, code), (b"signature verification failed\n", 1), err)


class KeygenTests(TestCase):
    """``jsmail dkim keygen`` as a subprocess: a 0600 key file and the TXT record that,
    served by DNS, verifies what the key signs."""

    timeout = 60

    def keygen(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(sys.executable, ["-m", "jsmail.cli", "dkim", "keygen", *args], env=os.environ)

    @defer.inlineCallbacks
    def test_keygen_record_verifies(self) -> Any:
        out = os.path.abspath(self.mktemp())
        for kind, selector in [("rsa", "k1"), ("ed25519", "k2")]:
            stdout, stderr, code = yield self.keygen("--domain", "Example.Test", "--selector", selector,
                                                     "--type", kind, "--out", out)
            self.assertEqual(code, 0, stderr)
            path = os.path.join(out, f"example.test.{selector}.key")
            self.assertEqual(stderr.decode(), f"jsmail dkim keygen: private key written to {path}\n")
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            [line] = stdout.decode().splitlines()
            self.assertRegex(line, rf'^{selector}\._domainkey\.example\.test\. IN TXT "v=DKIM1; k={kind}; p=')
            server = DNSServer({"example.test": [served(line)]})
            address = server.start()
            try:
                key = SigningKey.load("example.test", selector, path)
                signature = yield DKIMSigner(reactor, [key]).sign(MESSAGE, "example.test")
                [result] = yield DKIMVerifier(reactor, makeResolver(address, reactor)).verify(signature + MESSAGE)
            finally:
                yield server.stop()
            self.assertEqual((result.result, result.algorithm), ("pass", key.algorithm))

    @defer.inlineCallbacks
    def test_keygen_refuses(self) -> Any:
        out = os.path.abspath(self.mktemp())
        stdout, stderr, code = yield self.keygen("--domain", "example.test", "--selector", "s", "--bits", "512",
                                                 "--out", out)
        self.assertEqual((code, stdout), (1, b""))
        self.assertIn(b"512 bits: RSA keys for DKIM have 1024 to 4096 bits", stderr)
        self.assertFalse(os.path.exists(out))
        _, _, code = yield self.keygen("--domain", "example.test", "--selector", "s", "--out", out)
        self.assertEqual(code, 0)
        stdout, stderr, code = yield self.keygen("--domain", "example.test", "--selector", "s", "--out", out)
        self.assertEqual((code, stdout), (1, b""))
        self.assertEqual(stderr.decode(), f"jsmail dkim keygen: {out}/example.test.s.key: File exists; no key written\n")

    @defer.inlineCallbacks
    def test_keygen_refuses_what_is_not_a_dns_name(self) -> Any:
        """``--domain 'bad domain' --selector 's/../x'`` wrote keys/x.key, made a
        directory "keys/bad domain.s" and printed a record nobody can look up."""
        out = os.path.abspath(self.mktemp())
        for args, named in ((["--domain", "bad domain", "--selector", "s"], "--domain 'bad domain'"),
                            (["--domain", "example.test", "--selector", "s/../x"], "--selector 's/../x'"),
                            (["--domain", "example.test", "--selector=-s"], "--selector '-s'"),
                            (["--domain", "[192.0.2.1]", "--selector", "s"], "--domain '[192.0.2.1]'")):
            stdout, stderr, code = yield self.keygen(*args, "--out", out)
            self.assertEqual((code, stdout), (2, b""), stderr)
            self.assertTrue(stderr.decode().startswith(f"jsmail dkim keygen: {named}: "), stderr)
            self.assertTrue(stderr.decode().endswith("; no key written\n"), stderr)
        self.assertFalse(os.path.exists(out))
        stdout, stderr, code = yield self.keygen("--domain", "example.test", "--selector", "mail.2026-12",
                                                 "--type", "ed25519", "--out", out)
        self.assertEqual(code, 0, stderr)

"""Attacks on DKIM and ARC verification, against a real DNS server on loopback: keys
that would freeze the reactor, rsa-sha1, key h= tags, hostile signature fields and
bodies; and the streaming body canonicalization checked against dkimpy's own."""

from __future__ import annotations

import base64
import random
import re
import time
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed, Simple
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._dns import makeResolver
from jsmail.address import Address
from jsmail.auth import MailUser
from jsmail.policy.arc import ARCSealer, ARCVerifier
from jsmail.policy.dkim import DKIMVerifier, SigningKey, keyRecord
from jsmail.policy.dkimcheck import BodyCanonicalizer, parseKeyRecord
from jsmail.policy.emailauth import DKIMCheck, DMARCCheck
from jsmail.smtp.assembly import Spool
from jsmail.smtp.server import Session
from jsmail.testing import DNSServer, runNow
from tests.test_dkim import MESSAGE, keyData, writeKey
from tests.test_emailauth import txt

HUGE_RSA_REFUSED = ("a 16384-bit RSA key is over the 4096 bits verifiers accept (RFC 8301 section 3.2)")


def spki(n: int, e: int) -> str:
    """p= for an RSA key with modulus ``n`` and exponent ``e`` (never a real key)."""
    der = rsa.RSAPublicNumbers(e, n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 128 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes(
        (size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def pkcs1(n: int, e: int) -> str:
    """p= as a bare RSAPublicKey, built by hand: cryptography makes no key with an even e."""
    integers = b"".join(_der(0x02, x.to_bytes(x.bit_length() // 8 + 1, "big")) for x in (n, e))
    return base64.b64encode(_der(0x30, integers)).decode("ascii")


def hugeKey() -> str:
    """The review's key: a 16384-bit modulus and a 16383-bit exponent (5.5 KB of TXT)."""
    chance = random.Random(16384)
    n = chance.getrandbits(16384) | (1 << 16383) | 1
    e = chance.getrandbits(16383) | (1 << 16382) | 1
    return f"v=DKIM1; k=rsa; p={spki(n, e)}"


def refusePurePythonRSA(testCase: SynchronousTestCase) -> list[str]:
    """Make dkimpy's pure-Python RSA and key parsing record any call and fail."""
    called: list[str] = []

    def recorded(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            called.append(name)
            raise AssertionError(f"dkimpy's {name} was called")
        return refuse

    for module, name in [(dkim, "RSASSA_PKCS1_v1_5_verify"), (dkim.crypto, "RSASSA_PKCS1_v1_5_verify"),
                         (dkim.crypto, "rsa_encrypt"), (dkim, "parse_public_key"), (dkim, "evaluate_pk")]:
        testCase.patch(module, name, recorded(name))
    return called


class KeyRecordTests(SynchronousTestCase):
    """RFC 8301 section 3.2 and RFC 6376 section 3.6.1, before any use of the key."""

    def refused(self, record: str) -> str:
        return str(self.assertRaises(ValueError, parseKeyRecord, record.encode("ascii")))

    def test_hugeRsaModulusIsRefusedBeforeVerifying(self) -> None:
        started = time.perf_counter()
        self.assertEqual(self.refused(hugeKey()), HUGE_RSA_REFUSED)
        self.assertLess(time.perf_counter() - started, 0.5)

    def test_shortRsaModulusIsRefused(self) -> None:
        n = random.Random(512).getrandbits(1000) | (1 << 999) | 1
        self.assertEqual(self.refused(f"k=rsa; p={spki(n, 65537)}"),
                         "a 1000-bit RSA key is too short (RFC 8301 section 3.2)")

    def test_oddExponentsAreRefused(self) -> None:
        n = random.Random(2048).getrandbits(2048) | (1 << 2047) | 1
        for e in (1, 2, 65536, (1 << 32) + 1, (1 << 100) + 1):
            # cryptography refuses some of them itself (e < 3); jsmail the rest
            self.assertRegex(self.refused(f"v=DKIM1; p={pkcs1(n, e)}"), "RSA public exponent|cannot be parsed")
        for e in (3, 17, 65537, (1 << 32) - 1):
            self.assertEqual(parseKeyRecord(f"p={spki(n, e)}".encode()).kind, b"rsa")
            self.assertEqual(parseKeyRecord(f"p={pkcs1(n, e)}".encode()).kind, b"rsa")

    def test_otherUnusableRecords(self) -> None:
        record = keyRecord(keyData("rsa"))
        for text, why in [(record.replace("v=DKIM1", "v=DKIM2"), "v= is not DKIM1"),
                          (record + "; s=tlsrpt", "not a key for email"), ("v=DKIM1; p=", "revoked"),
                          ("v=DKIM1; p=!!!", "not base64"), ("v=DKIM1; k=dsa; p=AAAA", "unknown key type k=dsa"),
                          ("v=DKIM1; k=ed25519; p=AAAA", "32 octets"), ("v=DKIM1; p=AAAA", "cannot be parsed"),
                          ("garbage", "bad tag list")]:
            self.assertIn(why, self.refused(text), text)
        self.assertEqual(parseKeyRecord((record + "; h=sha1 : SHA256").encode()).hashes,
                         frozenset({b"sha1", b"sha256"}))


def signedWith(key: bytes, selector: bytes, domain: bytes, algorithm: bytes, message: bytes = MESSAGE) -> bytes:
    """``message`` signed by dkimpy itself (relaxed/relaxed)."""
    return dkim.sign(message, selector, domain, key, canonicalize=(b"relaxed", b"relaxed"),
                     signature_algorithm=algorithm, include_headers=[b"from", b"subject"]) + message


class VerifierAttackTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        pkcs1 = keyData("rsa")
        self.key = pkcs1
        record = keyRecord(pkcs1)
        edRecord = keyRecord(keyData("ed25519"))
        self.dns = DNSServer({
            "big.test": [(f"s{i}._domainkey.big.test", txt(hugeKey())) for i in range(5)],
            "example.test": [
                ("rsa._domainkey.example.test", txt(record)),
                ("only256._domainkey.example.test", txt(record + "; h=sha256")),
                ("ed._domainkey.example.test", txt(edRecord)),
            ],
        })
        self.resolver = makeResolver(self.dns.start(), reactor)
        self.addCleanup(self.dns.stop)

    def verifier(self, **kwargs: Any) -> DKIMVerifier:
        return DKIMVerifier(reactor, self.resolver, timeout=5, **kwargs)

    @defer.inlineCallbacks
    def test_hugeRsaKeysArePermerrorsQuicklyAndNeverReachPurePythonRSA(self) -> Any:
        """H-3: five signatures naming five 16384-bit keys (each a 5.5 KB TXT record of
        255-octet strings) froze the gateway 43 s.  Each is a permerror now, the keys
        refused before dkimpy's pure-Python RSA could see them."""
        called = refusePurePythonRSA(self)
        message = MESSAGE
        for i in range(5):
            message = signedWith(self.key, f"s{i}".encode(), b"big.test", b"rsa-sha256", message)
        started = time.perf_counter()
        results = yield self.verifier().verify(message)
        elapsed = time.perf_counter() - started
        self.assertEqual([(r.result, r.selector, r.reason) for r in results],
                         [("permerror", f"s{i}", f"bad key record at s{i}._domainkey.big.test.: {HUGE_RSA_REFUSED}")
                          for i in reversed(range(5))])
        self.assertEqual(called, [])
        self.assertLess(elapsed, 5.0)

    @defer.inlineCallbacks
    def test_hugeRsaKeyInAnArcChainFailsIt(self) -> Any:
        called = refusePurePythonRSA(self)
        key = SigningKey.load("big.test", "s0", writeKey(self, self.key))
        authResults = b"Authentication-Results: mx.big.test; arc=none\r\n"
        sealed = yield ARCSealer(reactor, key, "mx.big.test").seal(MESSAGE, authResults)
        result = yield ARCVerifier(reactor, self.resolver, timeout=5).verify(sealed + authResults + MESSAGE)
        self.assertEqual(result.result, "fail")
        self.assertIn(HUGE_RSA_REFUSED, result.reason)
        self.assertEqual(called, [])

    @defer.inlineCallbacks
    def test_rsaSha1IsNotAPass(self) -> Any:
        """RFC 8301 section 3.1: by default a fail, unverified (no key is fetched);
        with rsa_sha1 = "neutral", neutral once it verifies; never pass."""
        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha1")
        [result] = yield self.verifier().verify(message)
        self.assertEqual((result.result, result.reason, result.algorithm),
                         ("fail", "rsa-sha1 not accepted (RFC 8301)", "rsa-sha1"))
        [result] = yield self.verifier(rsaSha1="neutral").verify(message)
        self.assertEqual((result.result, result.reason), ("neutral", "rsa-sha1 not accepted (RFC 8301)"))
        [result] = yield self.verifier(rsaSha1="neutral").verify(message.replace(b"hello", b"HELLO"))
        self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))
        self.assertRaises(ValueError, self.verifier, rsaSha1="pass")

    @defer.inlineCallbacks
    def test_keyHashTagIsHonoured(self) -> Any:
        """A key record with h=sha256 does not verify an rsa-sha1 signature (RFC 6376
        section 3.6.1); dkimpy passed it."""
        message = signedWith(self.key, b"only256", b"example.test", b"rsa-sha1")
        [result] = yield self.verifier(rsaSha1="neutral").verify(message)
        self.assertEqual((result.result, result.reason),
                         ("permerror", "the key at only256._domainkey.example.test. does not allow sha1 (h=)"))
        [result] = yield self.verifier().verify(signedWith(self.key, b"only256", b"example.test", b"rsa-sha256"))
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_rsaSha1NeverSatisfiesDMARC(self) -> Any:
        """Even with rsa_sha1 = "neutral", an aligned rsa-sha1 signature is no DMARC
        pass; and a pass result that claims rsa-sha1 is not counted either."""
        server = DNSServer({"example.test": [("_dmarc.example.test", txt("v=DMARC1; p=reject")),
                                             ("rsa._domainkey.example.test", txt(keyRecord(self.key)))]})
        resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)
        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha1")
        session = Session(clientAddress="192.0.2.1", helo="client.test", sender=Address("a", "elsewhere.test"))
        spool = Spool(runNow)
        spool.write(message)
        yield DKIMCheck(DKIMVerifier(reactor, resolver, timeout=5, rsaSha1="neutral")).checkMessage(session, spool)
        self.assertEqual([r.result for r in session.transactionNotes["dkim"]], ["neutral"])
        verdict = yield DMARCCheck(resolver).checkMessage(session, spool)
        self.assertEqual(str(verdict.refusal), "550 5.7.1 Message rejected by the DMARC policy of example.test")
        forged = [r.__class__(**{**r.__dict__, "result": "pass"}) for r in session.transactionNotes["dkim"]]
        session.transactionNotes["dkim"] = forged
        verdict = yield DMARCCheck(resolver).checkMessage(session, spool)
        self.assertIsNotNone(verdict.refusal)

    @defer.inlineCallbacks
    def test_keyOfAnotherKindIsAPermerror(self) -> Any:
        message = signedWith(self.key, b"ed", b"example.test", b"rsa-sha256")
        [result] = yield self.verifier().verify(message)
        self.assertEqual((result.result, result.reason),
                         ("permerror", "the key at ed._domainkey.example.test. is k=ed25519, not for a=rsa-sha256"))

    @defer.inlineCallbacks
    def test_signatureNotCoveringFromIsAPermerror(self) -> Any:
        message = dkim.sign(MESSAGE, b"rsa", b"example.test", self.key, include_headers=[b"subject", b"from"])
        message = message.replace(b"h=subject : from", b"h=subject") + MESSAGE
        [result] = yield self.verifier().verify(message)
        self.assertEqual((result.result, result.reason),
                         ("permerror", "From is not signed (RFC 6376 section 6.1.1)"))

    @defer.inlineCallbacks
    def test_whiteSpaceRunsInASignatureFieldAreRefusedUnparsed(self) -> Any:
        """dkimpy's regular expressions over signature fields are quadratic in runs of
        white space: such fields are refused before they run."""
        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha256")
        hostile = message.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; z=a b" + b" \r\n" * 2000 + b" c;", 1)
        longField = message.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; z=" + b"x" * 9000 + b";", 1)
        started = time.perf_counter()
        [first] = yield self.verifier().verify(hostile)
        [second] = yield self.verifier().verify(longField)
        self.assertLess(time.perf_counter() - started, 2.0)
        self.assertEqual((first.result, first.reason),
                         ("neutral", "signature field with more than 64 white space octets in a row"))
        self.assertEqual((second.result, second.reason), ("neutral", "signature field over 8192 octets"))

    @defer.inlineCallbacks
    def test_whitespaceRunsInTheBodyHashInLinearTime(self) -> Any:
        """dkimpy's relaxed body canonicalization took 3 s for 2 MB of lines of 998
        spaces; streamed here it is linear."""
        body = (b" " * 998 + b"x\r\n") * 2000
        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha256", MESSAGE + body)
        started = time.perf_counter()
        [result] = yield self.verifier().verify(message)
        self.assertEqual(result.result, "pass")
        self.assertLess(time.perf_counter() - started, 2.0)

    @defer.inlineCallbacks
    def test_muchFoldedHeaderIsParsedInLinearTime(self) -> Any:
        """A field folded 50,000 times: parsed once, in linear time."""
        folded = b"X-Folded: a" + b"\r\n b" * 50_000 + b"\r\n"  # 200 KB, under MAX_HEADER
        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha256", folded + MESSAGE)
        started = time.perf_counter()
        [result] = yield self.verifier().verify(message)
        self.assertEqual(result.result, "pass")
        self.assertLess(time.perf_counter() - started, 2.0)

    @defer.inlineCallbacks
    def test_checkReadsTheSpoolInChunksNeverWhole(self) -> Any:
        """M-12: the DKIM check streams the spool; it never asks for the whole message."""
        class Unreadable(Spool):
            def read(self) -> Any:
                raise AssertionError("the whole message was read")

        message = signedWith(self.key, b"rsa", b"example.test", b"rsa-sha256", MESSAGE + b"0123456789\r\n" * 400_000)
        spool = Unreadable(runNow)
        spool.write(message)
        session = Session(clientAddress="192.0.2.1", user=None)
        yield DKIMCheck(self.verifier()).checkMessage(session, spool)
        self.assertEqual([r.result for r in session.transactionNotes["dkim"]], ["pass"])
        yield DMARCCheck(self.resolver).checkMessage(session, spool)
        self.assertNotIsInstance(session.user, MailUser)


class BodyCanonicalizerTests(SynchronousTestCase):
    def test_sameAsDkimpyWhateverTheChunks(self) -> None:
        """RFC 6376 sections 3.4.3 and 3.4.4, fed in random pieces, against dkimpy's
        canonicalization of the whole body (after its parser's bare LF to CRLF)."""
        chance = random.Random(6376)
        alphabet = [b"a", b" ", b"\t", b"\r", b"\n", b"\r\n", b"b"]
        for _ in range(3000):
            body = b"".join(chance.choice(alphabet) for _ in range(chance.randint(0, 30)))
            whole = re.sub(rb"\r?\n", b"\r\n", body)
            for relaxed, dkimpy in ((False, Simple), (True, Relaxed)):
                canonicalizer = BodyCanonicalizer(relaxed)
                cuts = sorted(chance.sample(range(len(body) + 1), min(len(body) + 1, chance.randint(0, 4))))
                out, previous = b"", 0
                for cut in cuts + [len(body)]:
                    out += canonicalizer.feed(body[previous:cut])
                    previous = cut
                out += canonicalizer.finish()
                self.assertEqual(out, dkimpy.canonicalize_body(whole), (relaxed, body, cuts))

    def test_aLineLongerThanAChunkIsPassedOnInParts(self) -> None:
        for relaxed, dkimpy in ((False, Simple), (True, Relaxed)):
            body = b"x  " * 100_000 + b"  \r\n\r\n"
            canonicalizer = BodyCanonicalizer(relaxed)
            parts = [canonicalizer.feed(body[i:i + 1000]) for i in range(0, len(body), 1000)]
            self.assertTrue(any(parts[:-1]), "nothing passed on before the line ended")
            self.assertEqual(b"".join(parts) + canonicalizer.finish(), dkimpy.canonicalize_body(body))

"""DANE: TLSA records parsed, matched against trustme certificates, and looked up over
loopback, believed only when the resolver set the AD bit."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.names import client, dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail.error import DeliveryError
from jsmail.remote.dane import DANE_EE, DANE_TA, TLSA, TLSACache, TLSARecord, _spki, lookupTLSA, matchesTLSA
from jsmail.testing import DNSServer

NAME = b"_25._tcp.mx.example.test"


def certificate(pem: Any) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.bytes())


def der(pem: Any) -> bytes:
    return certificate(pem).public_bytes(Encoding.DER)


def tlsa(usage: int, selector: int, matchingType: int, pem: Any) -> TLSARecord:
    """A record for the certificate in ``pem``, computed apart from jsmail.remote.dane."""
    cert = certificate(pem)
    content = (cert.public_bytes(Encoding.DER) if selector == 0
               else cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    digest = {0: lambda data: data, 1: lambda data: hashlib.sha256(data).digest(),
              2: lambda data: hashlib.sha512(data).digest()}[matchingType]
    return TLSARecord(usage, selector, matchingType, digest(content))


class RecordTests(SynchronousTestCase):
    def test_rdata(self) -> None:
        digest = hashlib.sha256(b"key").digest()
        self.assertEqual(TLSARecord.fromRDATA(b"\x03\x01\x01" + digest), TLSARecord(3, 1, 1, digest))
        self.assertRaises(ValueError, TLSARecord.fromRDATA, b"\x03\x01\x01")

    def test_usable(self) -> None:
        sha256, sha512 = b"x" * 32, b"x" * 64
        for record, usable in [
            (TLSARecord(3, 1, 1, sha256), True), (TLSARecord(2, 0, 2, sha512), True),
            (TLSARecord(3, 0, 0, b"a certificate"), True),
            (TLSARecord(0, 0, 1, sha256), False), (TLSARecord(1, 0, 1, sha256), False),  # PKIX-TA, PKIX-EE
            (TLSARecord(3, 2, 1, sha256), False), (TLSARecord(3, 1, 3, sha256), False),
            (TLSARecord(3, 1, 1, sha512), False), (TLSARecord(3, 1, 2, sha256), False),  # wrong digest length
        ]:
            self.assertEqual(record.usable, usable, record)


class MatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert("mx.example.test")
        self.chain = [der(self.leaf.cert_chain_pems[0]), der(self.ca.cert_pem)]

    def test_spki_as_encoded(self) -> None:
        for keyType in trustme.KeyType:
            cert = certificate(trustme.CA(key_type=keyType).cert_pem)
            encoded = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            self.assertEqual(_spki(cert), encoded)

    def test_dane_ee_every_selector_and_matching_type(self) -> None:
        for selector in (0, 1):
            for matchingType in (0, 1, 2):
                record = tlsa(DANE_EE, selector, matchingType, self.leaf.cert_chain_pems[0])
                self.assertTrue(matchesTLSA([record], self.chain[:1], "mx.example.test"), record)
                wrong = TLSARecord(DANE_EE, selector, matchingType, record.data[:-1] + bytes([record.data[-1] ^ 1]))
                self.assertFalse(matchesTLSA([wrong], self.chain[:1], "mx.example.test"), wrong)

    def test_dane_ee_ignores_names_and_dates(self) -> None:
        """RFC 7672 section 3.1.1: the key is what counts."""
        old = self.ca.issue_cert("elsewhere.test", not_before=datetime.datetime(2000, 1, 1),
                                 not_after=datetime.datetime(2001, 1, 1))
        record = tlsa(DANE_EE, 1, 1, old.cert_chain_pems[0])
        self.assertTrue(matchesTLSA([record], [der(old.cert_chain_pems[0])], "mx.example.test"))

    def test_dane_ee_other_certificate(self) -> None:
        other = trustme.CA().issue_cert("mx.example.test")
        record = tlsa(DANE_EE, 1, 1, other.cert_chain_pems[0])
        self.assertFalse(matchesTLSA([record], self.chain, "mx.example.test"))

    def test_dane_ta_every_selector(self) -> None:
        for selector in (0, 1):
            record = tlsa(DANE_TA, selector, 1, self.ca.cert_pem)
            self.assertTrue(matchesTLSA([record], self.chain, "mx.example.test"), record)

    def test_dane_ta_intermediate(self) -> None:
        intermediate = self.ca.create_child_ca()
        leaf = intermediate.issue_cert("mx.example.test")
        chain = [der(pem) for pem in leaf.cert_chain_pems]  # leaf, intermediate
        self.assertTrue(matchesTLSA([tlsa(DANE_TA, 1, 1, intermediate.cert_pem)], chain, "mx.example.test"))

    def test_dane_ta_checks_the_name(self) -> None:
        record = tlsa(DANE_TA, 1, 1, self.ca.cert_pem)
        self.assertFalse(matchesTLSA([record], self.chain, "other.example.test"))

    def test_dane_ta_checks_dates(self) -> None:
        old = self.ca.issue_cert("mx.example.test", not_before=datetime.datetime(2000, 1, 1),
                                 not_after=datetime.datetime(2001, 1, 1))
        chain = [der(old.cert_chain_pems[0]), der(self.ca.cert_pem)]
        self.assertFalse(matchesTLSA([tlsa(DANE_TA, 1, 1, self.ca.cert_pem)], chain, "mx.example.test"))

    def test_dane_ta_anchor_must_be_sent(self) -> None:
        record = tlsa(DANE_TA, 1, 1, self.ca.cert_pem)
        self.assertFalse(matchesTLSA([record], self.chain[:1], "mx.example.test"))

    def test_dane_ta_anchor_beside_a_leaf_it_did_not_issue(self) -> None:
        """An attacker can send the anchor along with a leaf of its own."""
        forged = trustme.CA().issue_cert("mx.example.test")
        chain = [der(forged.cert_chain_pems[0]), der(self.ca.cert_pem)]
        self.assertFalse(matchesTLSA([tlsa(DANE_TA, 1, 1, self.ca.cert_pem)], chain, "mx.example.test"))

    def test_dane_ta_record_does_not_match_the_leaf(self) -> None:
        record = tlsa(DANE_TA, 1, 1, self.leaf.cert_chain_pems[0])
        self.assertFalse(matchesTLSA([record], self.chain, "mx.example.test"))

    def test_unusable_records_match_nothing(self) -> None:
        pkix = [tlsa(usage, 1, 1, self.leaf.cert_chain_pems[0]) for usage in (0, 1)]
        self.assertFalse(matchesTLSA(pkix, self.chain, "mx.example.test"))
        self.assertFalse(matchesTLSA([tlsa(DANE_EE, 1, 1, self.leaf.cert_chain_pems[0])], [], "mx.example.test"))


RDATA = b"\x03\x01\x01" + hashlib.sha256(b"key").digest()


class ValidatingResolver:
    """Answers like a validating resolver for a signed zone: AD set, ``rCode``, a TLSA
    record for every query; with ``truncate``, UDP answers are empty and truncated,
    so the client must ask over TCP.  :meth:`udp` and :meth:`tcp` make its protocols."""

    def __init__(self, rCode: int = dns.OK, truncate: bool = False, authenticData: int = 1, ttl: int = 300,
                 negativeTTL: tuple[int, int] | None = None) -> None:
        self.rCode = rCode
        self.truncate = truncate
        self.authenticData = authenticData
        self.ttl = ttl
        self.negativeTTL = negativeTTL  # a denial's SOA: (its TTL, its minimum)
        self.queries: list[tuple[str, dns.Message]] = []

    def answer(self, data: bytes, transport: str) -> bytes:
        query = dns.Message()
        query.fromStr(data)
        self.queries.append((transport, query))
        truncated = self.truncate and transport == "udp"
        response = dns.Message(id=query.id, answer=1, recDes=query.recDes, recAv=1, rCode=self.rCode,
                               authenticData=self.authenticData, trunc=int(truncated))
        response.queries = query.queries
        if self.rCode == dns.OK and not truncated:
            response.answers = [dns.RRHeader(q.name.name, TLSA, dns.IN, self.ttl, dns.UnknownRecord(RDATA))
                                for q in query.queries]
        if self.rCode == dns.ENAME and self.negativeTTL is not None:
            ttl, minimum = self.negativeTTL
            soa = dns.Record_SOA(mname=b"ns.example.test", rname=b"hostmaster.example.test", minimum=minimum, ttl=ttl)
            response.authority = [dns.RRHeader(b"example.test", dns.SOA, dns.IN, ttl, soa)]
        return response.toStr()

    def udp(self) -> DatagramProtocol:
        resolver = self

        class Datagrams(DatagramProtocol):
            def datagramReceived(self, data: bytes, address: Any) -> None:
                self.transport.write(resolver.answer(data, "udp"), address)

        return Datagrams()

    def tcp(self) -> Factory:
        resolver = self

        class Stream(Int16StringReceiver):
            def stringReceived(self, data: bytes) -> None:
                self.sendString(resolver.answer(data, "tcp"))

        return Factory.forProtocol(Stream)


class LookupTests(TestCase):
    timeout = 10

    def serve(self, responder: ValidatingResolver) -> client.Resolver:
        """Listen on one port number for UDP and TCP; a resolver that asks there."""
        for _ in range(20):
            udp = reactor.listenUDP(0, responder.udp(), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, responder.tcp(), interface="127.0.0.1")
            except CannotListenError:  # the number is taken for TCP: try another
                udp.stopListening()
                continue
            self.addCleanup(udp.stopListening)
            self.addCleanup(tcp.stopListening)
            return client.Resolver(servers=[("127.0.0.1", port)], reactor=reactor)
        self.fail("no port number free for both UDP and TCP")

    @defer.inlineCallbacks
    def test_without_ad_bit_no_records(self):  # type: ignore[no-untyped-def]
        """jsmail.testing.DNSServer serves the record but does not validate: no DANE."""

        class Record_TLSA(dns.UnknownRecord):
            TYPE = TLSA

        server = DNSServer({"example.test": [(NAME.decode(), Record_TLSA(RDATA))]})
        server.start()
        self.addCleanup(server.stop)
        resolver = client.Resolver(servers=[("127.0.0.1", server.port)], reactor=reactor)
        served = yield resolver.queryUDP([dns.Query(NAME, TLSA, dns.IN)])
        self.assertEqual([a.payload.data for a in served.answers], [RDATA])  # the record is there
        self.assertIsNone((yield lookupTLSA(reactor, resolver, "mx.example.test")))

    @defer.inlineCallbacks
    def test_with_ad_bit_records(self):  # type: ignore[no-untyped-def]
        responder = ValidatingResolver()
        records = yield lookupTLSA(reactor, self.serve(responder), "mx.example.test.")
        self.assertEqual(records, [TLSARecord.fromRDATA(RDATA)])
        [(transport, query)] = responder.queries
        self.assertEqual((transport, query.queries[0].name.name, query.queries[0].type, query.authenticData),
                         ("udp", NAME, TLSA, 1))

    @defer.inlineCallbacks
    def test_other_port(self):  # type: ignore[no-untyped-def]
        responder = ValidatingResolver()
        yield lookupTLSA(reactor, self.serve(responder), "mx.example.test", port=465)
        self.assertEqual(responder.queries[0][1].queries[0].name.name, b"_465._tcp.mx.example.test")

    @defer.inlineCallbacks
    def test_truncated_answer_asked_again_over_tcp(self):  # type: ignore[no-untyped-def]
        responder = ValidatingResolver(truncate=True)
        records = yield lookupTLSA(reactor, self.serve(responder), "mx.example.test")
        self.assertEqual(records, [TLSARecord.fromRDATA(RDATA)])
        self.assertEqual([(t, q.authenticData) for t, q in responder.queries], [("udp", 1), ("tcp", 1)])

    @defer.inlineCallbacks
    def test_validated_nxdomain_no_records(self):  # type: ignore[no-untyped-def]
        self.assertIsNone((yield lookupTLSA(reactor, self.serve(ValidatingResolver(rCode=dns.ENAME)),
                                            "mx.example.test")))

    @defer.inlineCallbacks
    def test_ad_bit_clear_no_records(self):  # type: ignore[no-untyped-def]
        self.assertIsNone((yield lookupTLSA(reactor, self.serve(ValidatingResolver(authenticData=0)),
                                            "mx.example.test")))

    @defer.inlineCallbacks
    def test_silentResolverDefersInsteadOfDowngrading(self):  # type: ignore[no-untyped-def]
        """Security review M-7: a TLSA lookup that times out is no evidence of "no
        DANE"; the host must not be used now (RFC 7672 section 2.1)."""
        silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", silent.getHost().port)], reactor=reactor)
        error = yield self.assertFailure(lookupTLSA(reactor, resolver, "mx.example.test", timeout=0.2), DeliveryError)
        self.assertEqual((str(error.reply), error.permanent),
                         ("451 4.7.5 The mail exchanger's TLSA records could not be looked up", False))

    @defer.inlineCallbacks
    def test_servfailDefersInsteadOfDowngrading(self):  # type: ignore[no-untyped-def]
        """Security review M-7: SERVFAIL is what a validating resolver answers when an
        attacker tampers with a signed TLSA answer: it used to mean "no DANE", and the
        mail went out in plaintext."""
        yield self.assertFailure(lookupTLSA(reactor, self.serve(ValidatingResolver(rCode=dns.ESERVER)),
                                            "mx.example.test"), DeliveryError)

    @defer.inlineCallbacks
    def test_resolver_off_loopback_not_trusted(self):  # type: ignore[no-untyped-def]
        """Nothing protects the AD bit from a resolver elsewhere: nothing is even sent."""
        resolver = client.Resolver(servers=[("192.0.2.1", 53)], reactor=reactor)
        self.assertIsNone((yield lookupTLSA(reactor, resolver, "mx.example.test")))


class CacheTests(TestCase):
    """TLSA answers kept for their TTL, against the validating resolver on loopback."""

    timeout = 10
    serve = LookupTests.serve

    def cache(self, responder: ValidatingResolver, **settings: Any) -> TLSACache:
        self.clock = task.Clock()
        return TLSACache(reactor, self.serve(responder), clock=self.clock, **settings)

    @defer.inlineCallbacks
    def test_answerKeptForItsTTL(self):  # type: ignore[no-untyped-def]
        responder = ValidatingResolver(ttl=300)
        cache = self.cache(responder)
        first = yield cache.lookup("mx.example.test")
        self.clock.advance(299)
        self.assertEqual((yield cache.lookup("MX.example.test.")), first)
        self.assertEqual(len(responder.queries), 1)
        self.clock.advance(1)
        self.assertEqual((yield cache.lookup("mx.example.test")), first)
        self.assertEqual(len(responder.queries), 2)

    @defer.inlineCallbacks
    def test_hugeTTLCapped(self):  # type: ignore[no-untyped-def]
        """A TTL of 68 years (2**31 - 1) keeps an answer a day, no longer."""
        responder = ValidatingResolver(ttl=2**31 - 1)
        cache = self.cache(responder)
        yield cache.lookup("mx.example.test")
        self.clock.advance(86400)
        yield cache.lookup("mx.example.test")
        self.assertEqual(len(responder.queries), 2)

    @defer.inlineCallbacks
    def test_denialKeptForItsNegativeTTL(self):  # type: ignore[no-untyped-def]
        """RFC 2308 section 5: the lesser of the SOA's TTL and its minimum."""
        responder = ValidatingResolver(rCode=dns.ENAME, negativeTTL=(3600, 60))
        cache = self.cache(responder)
        self.assertIsNone((yield cache.lookup("mx.example.test")))
        self.clock.advance(59)
        self.assertIsNone((yield cache.lookup("mx.example.test")))
        self.clock.advance(1)
        yield cache.lookup("mx.example.test")
        self.assertEqual(len(responder.queries), 2)

    @defer.inlineCallbacks
    def test_tamperedAnswerIsNotKeptAsNoDANE(self):  # type: ignore[no-untyped-def]
        """A SERVFAIL (an attacker tampering with the signed answer) defers the host
        each time it is asked, never turning into a kept "no DANE"."""
        responder = ValidatingResolver(rCode=dns.ESERVER)
        cache = self.cache(responder)
        for _ in range(2):
            yield self.assertFailure(cache.lookup("mx.example.test"), DeliveryError)
        self.assertEqual((len(responder.queries), len(cache)), (2, 0))

    @defer.inlineCallbacks
    def test_concurrentLookupsShareOneQuery(self):  # type: ignore[no-untyped-def]
        responder = ValidatingResolver()
        cache = self.cache(responder)
        answers = yield defer.gatherResults([cache.lookup("mx.example.test") for _ in range(3)])
        self.assertEqual((answers, len(responder.queries)), ([[TLSARecord.fromRDATA(RDATA)]] * 3, 1))

    @defer.inlineCallbacks
    def test_manyHostsKeepTheCacheBounded(self):  # type: ignore[no-untyped-def]
        """The host used least lately goes first."""
        responder = ValidatingResolver()
        cache = self.cache(responder, maxEntries=2)
        for host in ["a.example.test", "b.example.test", "a.example.test", "c.example.test", "a.example.test"]:
            yield cache.lookup(host)
        self.assertEqual(len(responder.queries), 3)
        yield cache.lookup("b.example.test")
        self.assertEqual((len(responder.queries), len(cache)), (4, 2))

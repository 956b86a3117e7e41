"""DANE for SMTP (RFC 7672): an MX host's TLSA records, and whether a certificate
chain matches them.

DANE is only as good as the DNSSEC behind it, and twisted.names does not validate
DNSSEC.  So :func:`lookupTLSA` believes TLSA records only when a validating resolver
says it validated them (the AD bit, RFC 4035 section 3.2.3), and only a resolver on
loopback, since nothing protects the AD bit on the way from anywhere else (RFC 4035
section 4.9.3).  Anything less is "no usable DANE", and remote delivery falls back to
MTA-STS or its configured TLS mode.

Decisions, and why:

- The query is made here rather than with the resolver's ``queryUDP``, which would
  return the dns.Message (and so its AD bit) but asks without setting AD: validating
  resolvers (BIND, Unbound) then leave AD clear (RFC 6840 section 5.7), and DANE would
  never apply.  A truncated answer is asked again over TCP.
- A lookup that fails (a SERVFAIL, REFUSED or other error code, a time-out) is not
  "no DANE": it is what a validating resolver says when an attacker tampers with a
  signed answer, so delivery to that host is deferred (RFC 7672 section 2.1), never
  downgraded.  Only an answer (NOERROR or NXDOMAIN) without usable records means no
  DANE: an authenticated denial, or an insecure (unsigned) zone.
- Only DANE-TA(2) and DANE-EE(3) count (RFC 7672 section 3.1.3).  A DANE-EE match
  ignores names and dates (section 3.1.1).  A DANE-TA match needs the server to send
  the trust anchor in its chain (section 3.1.2); the chain must then pass OpenSSL's
  check with that anchor (signatures, dates, CA flags; the anchor need not be
  self-signed) and the leaf must name the MX host (sections 3.2.2 and 3.2.3), as with
  an MTA built on OpenSSL.  ``cryptography``'s verifier is not used: its web PKI
  profile refuses certificates RFC 5280 allows (trustme's among them).
- :class:`TLSACache` keeps each answer for its TTL (a denial for its SOA's negative
  TTL, RFC 2308 section 5), at most a day, for at most 10,000 names, the least used
  lately going first: a busy MX host is not asked about for every message.  A failed
  lookup is never kept: the next delivery asks again.  Lookups of one name under way
  are shared.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from jsmail import reply
from jsmail.error import DeliveryError

__all__ = ["DANE_EE", "DANE_TA", "TLSA", "TLSACache", "TLSARecord", "lookupTLSA", "matchesTLSA"]

_log = Logger()

TLSA = 52  # the record type (RFC 6698 section 7.1)
DANE_TA = 2
DANE_EE = 3
_DIGESTS = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}  # matching types (RFC 6698 section 2.1.3)


@dataclass(frozen=True)
class TLSARecord:
    """One TLSA record (RFC 6698 section 2.1)."""

    usage: int
    selector: int  # 0: the whole certificate, 1: its SubjectPublicKeyInfo
    matchingType: int  # 0: exact, 1: SHA-256, 2: SHA-512
    data: bytes

    @classmethod
    def fromRDATA(cls, rdata: bytes) -> TLSARecord:
        """Parse the wire form (RFC 6698 section 2.1); ValueError if it is too short."""
        if len(rdata) < 4:
            raise ValueError(f"TLSA RDATA of {len(rdata)} octets: it needs at least 4")
        return cls(rdata[0], rdata[1], rdata[2], bytes(rdata[3:]))

    @property
    def usable(self) -> bool:
        """Whether SMTP may use it (RFC 7672 section 3.1.3): DANE-TA or DANE-EE, a known
        selector and matching type, and a digest of the right length."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1) or self.matchingType not in _DIGESTS:
            return False
        digest = _DIGESTS[self.matchingType]
        return digest is None or len(self.data) == digest().digest_size

    def associates(self, certificate: x509.Certificate) -> bool:
        """Whether the record's data is this certificate's (RFC 6698 section 2.1)."""
        content = certificate.public_bytes(Encoding.DER) if self.selector == 0 else _spki(certificate)
        digest = _DIGESTS.get(self.matchingType)
        return (digest(content).digest() if digest else content) == self.data


def lookupTLSA(reactor: Any, resolver: Any, host: str, port: int = 25,
               timeout: float = 10.0) -> Deferred[list[TLSARecord] | None]:
    """The TLSA records of ``_PORT._tcp.HOST`` (RFC 7672 section 2.3), or None when
    there are none that a loopback validating resolver vouched for (see the module
    docstring).  ``resolver`` is a ``twisted.names.client.Resolver``: its servers are
    asked in turn.  Fails with a temporary :class:`DeliveryError` when the lookup itself
    failed: the host must not be used now (RFC 7672 section 2.1)."""
    d = Deferred.fromCoroutine(_lookup(reactor, resolver, _name(host, port), timeout))
    return d.addCallback(lambda answer: answer[0])


class TLSACache:
    """:func:`lookupTLSA` with each answer kept for its TTL (see the module
    docstring); ``clock`` tells the time (the reactor by default)."""

    def __init__(self, reactor: Any, resolver: Any, clock: Any = None, timeout: float = 10.0,
                 maxEntries: int = 10_000, maxTTL: int = 86400) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.clock = clock or reactor
        self.timeout = timeout
        self.maxEntries = maxEntries
        self.maxTTL = maxTTL
        self._answers: OrderedDict[str, tuple[list[TLSARecord] | None, float]] = OrderedDict()
        self._waiting: dict[str, list[Deferred[list[TLSARecord] | None]]] = {}

    def lookup(self, host: str, port: int = 25) -> Deferred[list[TLSARecord] | None]:
        """As :func:`lookupTLSA`."""
        name = _name(host, port).lower()
        kept = self._answers.get(name)
        if kept is not None:
            if kept[1] > self.clock.seconds():
                self._answers.move_to_end(name)
                return succeed(kept[0])
            del self._answers[name]
        d: Deferred[list[TLSARecord] | None] = Deferred()
        if name in self._waiting:
            self._waiting[name].append(d)
            return d
        self._waiting[name] = [d]
        asked = Deferred.fromCoroutine(_lookup(self.reactor, self.resolver, name, self.timeout))
        asked.addBoth(self._answered, name)
        return d

    def __len__(self) -> int:
        return len(self._answers)

    def _answered(self, answer: tuple[list[TLSARecord] | None, int | None] | Failure, name: str) -> None:
        if not isinstance(answer, Failure) and answer[1]:
            self._answers[name] = (answer[0], self.clock.seconds() + min(answer[1], self.maxTTL))
            while len(self._answers) > self.maxEntries:
                self._answers.popitem(last=False)
        for d in self._waiting.pop(name):
            if isinstance(answer, Failure):
                d.errback(answer)
            else:
                d.callback(answer[0])


def _name(host: str, port: int) -> str:
    return f"_{port}._tcp.{host.rstrip('.')}"


async def _lookup(reactor: Any, resolver: Any, name: str,
                  timeout: float) -> tuple[list[TLSARecord] | None, int | None]:
    """The usable records (or None) and for how many seconds the answer holds (None:
    not to be kept)."""
    servers: Sequence[tuple[str, int]] = [*resolver.servers, *resolver.dynServers]
    trusted = [server for server in servers if _isLoopback(server[0])]
    if not trusted:
        _log.info("DANE: not asking for {name}: no resolver on loopback to trust the AD bit of", name=name)
        return None, None
    message, why = None, "no answer"
    for server in trusted:
        try:
            message = await _ask(reactor, server, dns.Query(name, TLSA, dns.IN), timeout)
            break
        except Exception as e:
            why = str(e) or type(e).__name__
            _log.info("DANE: asking {server} for {name} failed: {error}", server=server, name=name, error=why)
    if message is None or message.rCode not in (dns.OK, dns.ENAME):
        why = why if message is None else f"response code {message.rCode}"
        raise DeliveryError(reply.TLSA_LOOKUP_FAILED, False, f"TLSA lookup of {name}: {why}")
    ttl = _ttl(message)
    if message.rCode != dns.OK or not message.authenticData:
        return None, ttl
    records: list[TLSARecord] = []
    for answer in message.answers:
        if answer.type == TLSA and isinstance(answer.payload, dns.UnknownRecord):  # twisted.names knows no TLSA type
            try:
                records.append(TLSARecord.fromRDATA(answer.payload.data))
            except ValueError as e:
                _log.info("DANE: ignoring a TLSA record of {name}: {error}", name=name, error=e)
    return records or None, ttl


def _ttl(message: dns.Message) -> int | None:
    """How long an answer holds: its records' least TTL, or for a denial its SOA's
    negative TTL (RFC 2308 section 5); None when it does not say."""
    if message.answers:
        return min(answer.ttl for answer in message.answers)
    for authority in message.authority:
        if isinstance(authority.payload, dns.Record_SOA):
            return min(authority.ttl, authority.payload.minimum)
    return None


async def _ask(reactor: Any, server: tuple[str, int], query: dns.Query, timeout: float) -> dns.Message:
    """Ask ``server`` over UDP, then TCP if the answer was truncated, with AD set."""
    udp = _AuthenticatedDataDatagram(_Controller(), reactor=reactor)
    port = reactor.listenUDP(0, udp, interface="::1" if ":" in server[0] else "127.0.0.1")
    try:
        message: dns.Message = await udp.query(server, [query], timeout)
    finally:
        port.stopListening()
    if not message.trunc:
        return message
    endpointType = TCP6ClientEndpoint if ":" in server[0] else TCP4ClientEndpoint
    endpoint = endpointType(reactor, server[0], server[1], timeout=timeout)
    tcp = await connectProtocol(endpoint, _AuthenticatedDataStream(_Controller(), reactor=reactor))
    try:
        return await tcp.query([query], timeout)
    finally:
        tcp.transport.loseConnection()


class _Controller:
    """What twisted.names' protocols report to; one query each, nothing to track."""

    def messageReceived(self, message: dns.Message, protocol: Any, address: Any = None) -> None:
        _log.debug("DANE: unexpected DNS message from {address}", address=address)

    def connectionMade(self, protocol: Any) -> None:
        pass

    def connectionLost(self, protocol: Any) -> None:
        pass


class _AuthenticatedDataDatagram(dns.DNSDatagramProtocol):
    """Queries with the AD bit set (RFC 6840 section 5.7), over UDP."""

    def writeMessage(self, message: dns.Message, address: Any) -> None:
        message.authenticData = 1
        super().writeMessage(message, address)


class _AuthenticatedDataStream(dns.DNSProtocol):
    """Queries with the AD bit set (RFC 6840 section 5.7), over TCP."""

    def writeMessage(self, message: dns.Message) -> None:
        message.authenticData = 1
        super().writeMessage(message)


def matchesTLSA(records: Sequence[TLSARecord], certificateChainDER: Sequence[bytes], hostname: str) -> bool:
    """Whether the server's chain (leaf first, as sent) satisfies one usable record.

    DANE-EE: the leaf matches.  DANE-TA: a certificate the server sent after the leaf
    matches, and the leaf chains to it and names ``hostname`` (the MX host name)."""
    usable = [record for record in records if record.usable]
    if not usable or not certificateChainDER:
        return False
    chain = [x509.load_der_x509_certificate(der) for der in certificateChainDER]
    leaf, sent = chain[0], chain[1:]
    if any(r.usage == DANE_EE and r.associates(leaf) for r in usable):
        return True
    anchors = [c for c in sent if any(r.usage == DANE_TA and r.associates(c) for r in usable)]
    if not anchors:
        return False
    store = crypto.X509Store()
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)  # the anchor need not be self-signed
    intermediates = [crypto.X509.from_cryptography(c) for c in sent]
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf), intermediates).verify_certificate()
        verify_certificate_hostname(leaf, hostname.rstrip("."))
    except (crypto.X509StoreContextError, VerificationError, CertificateError) as e:
        _log.info("DANE-TA: the chain of {hostname} does not verify: {error}", hostname=hostname, error=e)
        return False
    return True


def _spki(certificate: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo as encoded in the certificate (RFC 6698 section 2.1.2),
    not re-encoded: the seventh element of the TBSCertificate, or the sixth without the
    optional version (RFC 5280 section 4.1)."""
    tbs = certificate.tbs_certificate_bytes
    offset, _ = _derElement(tbs, 0)  # into the TBSCertificate SEQUENCE
    if tbs[offset] == 0xA0:  # [0] version
        offset = _derElement(tbs, offset)[1]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        offset = _derElement(tbs, offset)[1]
    return tbs[offset:_derElement(tbs, offset)[1]]


def _derElement(data: bytes, offset: int) -> tuple[int, int]:
    """Where the DER element at ``offset`` has its contents, and where it ends."""
    length, start = data[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(data[start:start + count], "big"), start + count
    return start, start + length


def _isLoopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False

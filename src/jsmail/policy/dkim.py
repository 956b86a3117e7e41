"""DKIM (RFC 6376): verifying signatures on incoming mail, signing outgoing mail, and
making signing keys.

Signing is dkimpy's.  Verifying is dkimpy's parsing of the signature field with
:mod:`jsmail.policy.dkimcheck` doing what costs: keys fetched through the reactor's
resolver and refused when unsafe, the body hashed as it streams from the spool, and
signatures checked by OpenSSL.  Both run in a thread (``runInThread``, by default the
reactor's thread pool); the reactor itself never waits.

Decisions, and why:

- Results use the RFC 8601 section 2.7.1 words: ``fail`` when the signature or the
  body hash does not verify, and for rsa-sha1 (RFC 8301 section 3.1); ``neutral``
  when the signature field cannot be processed (syntax, bad tags, expiry, a field
  too long to parse safely); ``permerror`` when the key is missing or unusable (no
  record, a bad record, an RSA key outside 1024 to 4096 bits or with an odd
  exponent: RFC 8301 section 3.2; a key whose ``h=`` excludes the hash: RFC 6376
  section 3.6.1) or From is not signed (section 6.1.1); ``temperror`` when DNS did
  not answer (RFC 6376 section 6.1.2) or the message's time budget ran out.
- At most ``maxSignatures`` signatures are checked (RFC 6376 section 6.1 lets a
  verifier limit them; each one may cost a DNS lookup), all within one time budget
  (``timeout``).  A key is fetched once per message however many signatures name it.
- The waiting thread gives up shortly after the resolver's own timeout even if the
  reactor never answers (a reactor shutting down joins its pool's threads: an
  unbounded wait there would hang shutdown), so this module does not use Twisted's
  ``blockingCallFromThread``, whose wait has no bound.
- Signing is relaxed/relaxed (section 3.4: survives the header refolding and
  whitespace changes that relays do), with no ``l=`` (section 8.2), and *oversigns*
  (section 8.15): each listed header field is signed once more than it occurs, so
  adding one, or a first one, breaks the signature.
- Key files are unencrypted PEM, PKCS#1 or PKCS#8, RSA or Ed25519 (what ``jsmail dkim
  keygen`` and openssl write), or dkimpy's ``dknewkey`` Ed25519 format (the base64
  32-byte seed).  They are read and checked when loaded, at start, not per message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.internet import defer
from twisted.internet.defer import Deferred

from jsmail._disk import makeDirectories, openNew
from jsmail._threads import RunInThread, reactorThreads
from jsmail.address import normaliseDomain
from jsmail.error import SMTPReplyError
from jsmail.headers import splitHeader
from jsmail.policy.dkimcheck import RSA_SHA1_REFUSED, KeyLookup, Message, Refused, pieces, untamed, verifierFor

__all__ = ["DEFAULT_SIGNED_HEADERS", "DKIMResult", "DKIMSigner", "DKIMVerifier", "SigningError",
           "SigningKey", "generateKey", "keyRecord", "oversigned", "zoneEntry"]

#: Header fields signed by default, each oversigned (RFC 6376 sections 5.4.1 and 8.15).
DEFAULT_SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding", b"list-id", b"list-help",
    b"list-unsubscribe", b"list-unsubscribe-post", b"list-post", b"list-owner", b"list-archive",
)

_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


@dataclass(frozen=True)
class DKIMResult:
    """The outcome for one DKIM-Signature field, in Authentication-Results terms
    (RFC 8601 section 2.7.1: ``dkim=`` result, ``header.d``, ``header.s``, ``header.i``,
    ``header.b``, ``header.a``)."""

    result: str
    domain: str
    selector: str
    identity: str
    headerB: str
    reason: str
    algorithm: str


class SigningError(Exception):
    """A message could not be signed or sealed; the text says why."""


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class DKIMVerifier:
    """Verifies the DKIM signatures of a message (RFC 6376 section 6).

    ``rsaSha1`` says what an rsa-sha1 signature gets (RFC 8301 section 3.1: it must
    not be verified): "fail", without looking at it, or "neutral" once it verifies,
    for operators who still want to see legacy signers checked.  It never gives
    pass, so DMARC never rests on it."""

    def __init__(self, reactor: Any, resolver: Any, timeout: float = 10.0, maxSignatures: int = 5,
                 runInThread: RunInThread | None = None, rsaSha1: str = "fail") -> None:
        if rsaSha1 not in ("fail", "neutral"):
            raise ValueError(f"rsaSha1 is fail or neutral, not {rsaSha1!r}")
        self.reactor, self.resolver, self.timeout = reactor, resolver, timeout
        self.maxSignatures, self.rsaSha1 = maxSignatures, rsaSha1
        self._runInThread = runInThread or reactorThreads(reactor)

    def verify(self, message: bytes) -> Deferred[list[DKIMResult]]:
        """One result per DKIM-Signature field, top first (at most ``maxSignatures``);
        ``[]`` for an unsigned message.  Never fails."""
        return self.verifyChunks(pieces(message))

    def verifyChunks(self, source: Callable[[], Iterable[bytes]]) -> Deferred[list[DKIMResult]]:
        """As :meth:`verify`, for a message that ``source()`` gives in chunks from its
        first octet (called in the worker thread, once per body hash and once for the
        header section): the message is never held whole.  ``timeout`` bounds the
        key lookups and hashing of all the signatures together.  Fails only when
        ``source`` does."""
        lookup = KeyLookup(self.reactor, self.resolver, self.timeout)
        return self._runInThread(_verifyAll, source, lookup, self.maxSignatures, self.rsaSha1)


def _verifyAll(source: Callable[[], Iterable[bytes]], lookup: KeyLookup, maxSignatures: int,
               rsaSha1: str) -> list[DKIMResult]:
    """In a thread: verify each signature of the message."""
    try:
        message = Message(source, lookup.deadline)
    except dkim.MessageFormatError as e:
        header = splitHeader(iter(source())).header
        if re.search(rb"(?im)^dkim-signature[ \t]*:", header) is None:
            return []
        return [DKIMResult("permerror", "", "", "", "", f"the header section cannot be parsed: {e}", "")]
    verifier = verifierFor("dkim", message, lookup, "fail" if rsaSha1 == "fail" else "verify")
    signatures = [value for name, value in message.headers if name.lower() == b"dkim-signature"]
    return [_verifyOne(verifier, index, value, rsaSha1) for index, value in enumerate(signatures[:maxSignatures])]


def _verifyOne(verifier: dkim.DKIM, index: int, value: bytes, rsaSha1: str) -> DKIMResult:
    refused = untamed(value)
    if refused is not None:
        return DKIMResult("neutral", "", "", "", "", refused, "")
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as e:
        return DKIMResult("neutral", "", "", "", "", f"the signature's tags cannot be parsed: {e}", "")
    domain, selector = tags.get(b"d", b""), tags.get(b"s", b"")
    algorithm = tags.get(b"a", b"")
    made = functools.partial(DKIMResult, domain=_text(domain), selector=_text(selector),
                             identity=_text(tags.get(b"i") or b"@" + domain),
                             headerB=_text(re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8]),
                             algorithm=_text(algorithm))
    if b"h" in tags and b"from" not in [h.strip().lower() for h in tags[b"h"].split(b":")]:
        return made(result="permerror", reason="From is not signed (RFC 6376 section 6.1.1)")
    try:
        if not verifier.verify(index):
            return made(result="fail", reason="signature did not verify")
    except Refused as e:
        return made(result=e.result, reason=e.reason)
    except dkim.ValidationError as e:
        if str(e).startswith("body hash mismatch"):
            return made(result="fail", reason="body hash did not verify")
        return made(result="neutral", reason=str(e))
    except (dkim.MessageFormatError, dkim.ParameterError) as e:
        return made(result="neutral", reason=str(e))
    except Exception as e:  # dkimpy raises assorted errors on hostile input
        return made(result="permerror", reason=f"{type(e).__name__}: {e}")
    if algorithm == b"rsa-sha1":  # rsaSha1 is "neutral": it verified, and is still not a pass
        return made(result="neutral", reason=RSA_SHA1_REFUSED)
    return made(result="pass", reason="")


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs for ``domain`` as ``selector``, read from ``keyFile``.

    Make one with :meth:`load`, which checks the key; ``algorithm`` is ``rsa-sha256``
    or ``ed25519-sha256`` and ``privateKey`` the key in the form dkimpy takes."""

    domain: str
    selector: str
    keyFile: str
    algorithm: str = ""
    privateKey: bytes = field(default=b"", repr=False)

    @classmethod
    def load(cls, domain: str, selector: str, keyFile: str) -> SigningKey:
        """Read and check ``keyFile``; ValueError names the file and what is wrong."""
        try:
            with open(keyFile, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"DKIM key {keyFile}: {e.strerror}") from None
        try:
            kind, privateKey = _dkimpyKey(data)
        except ValueError as e:
            raise ValueError(f"DKIM key {keyFile}: {e}") from None
        try:
            domain = normaliseDomain(domain.rstrip("."))  # d= is an A-label (RFC 6376 section 3.5)
        except SMTPReplyError as e:
            raise ValueError(f"DKIM key {keyFile}: domain {domain!r}: {e.reply.text}") from None
        return cls(domain, selector, keyFile, _ALGORITHMS[kind].decode(), privateKey)


def _dkimpyKey(data: bytes) -> tuple[str, bytes]:
    """("rsa", PKCS#1 PEM) or ("ed25519", base64 seed) from a key file's bytes."""
    if b"-----BEGIN" not in data:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            seed = b""
        if len(seed) != 32:
            raise ValueError("neither PEM nor a base64 Ed25519 seed")
        return "ed25519", base64.b64encode(seed)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not an unencrypted PEM private key ({e})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return "ed25519", base64.b64encode(raw)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise ValueError(f"a {key.key_size}-bit RSA key is too short (RFC 8301 section 3.2)")
        return "rsa", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    raise ValueError(f"a {type(key).__name__}: DKIM signs with RSA or Ed25519")


def oversigned(message: bytes, names: Sequence[bytes]) -> list[bytes]:
    """``names``, each repeated once more than the message's header section has it
    (RFC 6376 section 8.15)."""
    header = message.partition(b"\r\n\r\n")[0].lower()
    return [name for name in names
            for _ in range(1 + len(re.findall(rb"(?m)^" + re.escape(name.lower()) + rb"[ \t]*:", header)))]


class DKIMSigner:
    """Signs outgoing mail with the key for the sender's domain (RFC 6376 section 5)."""

    def __init__(self, reactor: Any, keys: Sequence[SigningKey], headers: Sequence[bytes] = DEFAULT_SIGNED_HEADERS,
                 runInThread: RunInThread | None = None) -> None:
        if b"from" not in [h.lower() for h in headers]:
            raise ValueError("the signed header fields must include From (RFC 6376 section 5.4)")
        self.keys = {key.domain: key for key in keys}
        self.headers = tuple(headers)
        self._runInThread = runInThread or reactorThreads(reactor)

    def keyFor(self, domain: str) -> SigningKey | None:
        """The key for ``domain``, else for its nearest parent domain that has one."""
        labels = domain.rstrip(".").lower().split(".")
        for start in range(len(labels)):
            key = self.keys.get(".".join(labels[start:]))
            if key is not None:
                return key
        return None

    def sign(self, message: bytes, domain: str) -> Deferred[bytes]:
        """The DKIM-Signature header field (CRLF-terminated) to prepend to ``message``,
        signed with the key :meth:`keyFor` gives ``domain``.  Fails with
        :class:`SigningError` when there is no key or dkimpy refuses the message."""
        key = self.keyFor(domain)
        if key is None:
            return defer.fail(SigningError(f"no DKIM key for {domain}"))
        return self._runInThread(_sign, message, key, oversigned(message, self.headers))


def _sign(message: bytes, key: SigningKey, include: list[bytes]) -> bytes:
    """In a thread: dkimpy's signature."""
    try:
        return dkim.sign(message, key.selector.encode("ascii"), key.domain.encode("ascii"), key.privateKey,
                         canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=key.algorithm.encode("ascii"),
                         include_headers=include)
    except (dkim.DKIMException, UnicodeEncodeError) as e:
        raise SigningError(f"cannot sign for {key.domain}: {e}") from None


def generateKey(keyType: str = "rsa", bits: int = 2048) -> bytes:
    """A new private key as unencrypted PEM: PKCS#1 for RSA, PKCS#8 for Ed25519 (RFC
    8463).  RSA keys have 1024 to 4096 bits (RFC 8301 section 3.2; longer ones do not
    fit every DNS path)."""
    if keyType == "ed25519":
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if keyType != "rsa":
        raise ValueError(f"key type {keyType!r}: use rsa or ed25519")
    if not 1024 <= bits <= 4096:
        raise ValueError(f"{bits} bits: RSA keys for DKIM have 1024 to 4096 bits (RFC 8301 section 3.2)")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def writeNewKey(path: str, keyType: str = "rsa", bits: int = 2048) -> bytes:
    """Make a key and write it to ``path`` with mode 0600, never over an existing file
    (OSError then); return the key file's contents."""
    key = generateKey(keyType, bits)
    makeDirectories(os.path.dirname(path) or ".")
    with os.fdopen(openNew(path), "wb") as f:
        f.write(key)
    return key


def keyRecord(keyFileData: bytes) -> str:
    """The key record (RFC 6376 section 3.6.1) publishing the public half of a private
    key file's key: ``p=`` is the SubjectPublicKeyInfo for RSA, the raw 32 octets for
    Ed25519 (RFC 8463 section 4)."""
    kind, privateKey = _dkimpyKey(keyFileData)
    if kind == "ed25519":
        edKey = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(privateKey)).public_key()
        raw = edKey.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        rsaKey = serialization.load_pem_private_key(privateKey, password=None).public_key()
        raw = rsaKey.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k={kind}; p={base64.b64encode(raw).decode('ascii')}"


def zoneEntry(selector: str, domain: str, record: str) -> str:
    """A zone file line publishing ``record`` at ``selector._domainkey.domain``, the
    text split into strings of at most 255 octets (RFC 1035 section 3.3.14)."""
    strings = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT {strings}"


"""Checking DKIM-style signatures (DKIM-Signature, ARC-Message-Signature, ARC-Seal)
with bounded work: what :mod:`jsmail.policy.dkim` and :mod:`jsmail.policy.arc` share.

dkimpy parses the signature fields, canonicalizes header fields (RFC 6376 section
3.4) and walks ARC chains; everything that costs in proportion to what an attacker
sends is done here instead:

- Keys are fetched through the reactor's resolver (:class:`KeyLookup`), parsed with
  ``cryptography`` and refused before any use when unsafe: RSA moduli over 4096 or
  under 1024 bits (RFC 8301 section 3.2), public exponents that are even, below 3 or
  over 32 bits (dkimpy's pure-Python ``pow`` with a 16384-bit exponent held the GIL
  for seconds).  Signatures are checked by OpenSSL, never by dkimpy's RSA code.
- A key record's ``h=`` list is honoured (RFC 6376 section 3.6.1), which dkimpy ignores.
- The message is never held whole: the header section is read up to
  :data:`~jsmail.headers.MAX_HEADER` octets and split linearly (dkimpy's parser
  is quadratic in folded lines); the body is streamed and canonicalized as it goes
  (:class:`BodyCanonicalizer`), once per canonicalization, hash and ``l=``.
- Header fields are selected for hashing in linear time (dkimpy's selection is the
  number of ``h=`` names times the number of fields).  Signature fields over
  :data:`MAX_SIGNATURE_FIELD` octets, or with a run of more than
  :data:`MAX_WHITESPACE_RUN` white space octets, are refused before dkimpy's regular
  expressions (quadratic in such runs) see them.
- All of it runs against one deadline per message (:class:`KeyLookup` ``deadline``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import queue
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import dkim
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.names import dns

from jsmail._dns import isNonexistent
from jsmail.headers import MAX_HEADER, splitHeader

__all__ = ["BodyCanonicalizer", "KeyLookup", "MAX_SIGNATURE_FIELD", "MAX_WHITESPACE_RUN", "Message", "PublicKey",
           "Refused", "RSA_SHA1_REFUSED", "parseKeyRecord", "pieces", "untamed", "verifierFor"]

#: Signature fields longer than this are refused (real ones are under 2 KiB).
MAX_SIGNATURE_FIELD = 8192
#: Longest run of white space allowed in a signature field (folding makes 3).
MAX_WHITESPACE_RUN = 64
#: RFC 8301 section 3.2: verifiers must accept 1024 to 4096 bits, and must not accept less.
RSA_BITS = (1024, 4096)
RSA_SHA1_REFUSED = "rsa-sha1 not accepted (RFC 8301)"

_CHUNK = 65536
_LINE_END = re.compile(rb"\r?\n")
_WHITESPACE = re.compile(rb"[\t ]+")
# dkimpy's [\t ]+\r\n is quadratic in a run of white space (3 s for 2 MB of such
# lines); trying only where a run starts, and never giving back, is linear.
_TRAILING_WHITESPACE = re.compile(rb"(?<![\t ])[\t ]++\r\n")
_LONG_WHITESPACE = re.compile(rb"\s{%d}" % (MAX_WHITESPACE_RUN + 1))


class Refused(dkim.DKIMException):
    """A signature that is not checked, with the RFC 8601 section 2.7.1 result to
    report (``permerror``, ``temperror``, ``fail``) and why."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


def untamed(value: bytes) -> str | None:
    """Why a signature field's value is refused unread, or None if it may be parsed."""
    if len(value) > MAX_SIGNATURE_FIELD:
        return f"signature field over {MAX_SIGNATURE_FIELD} octets"
    if _LONG_WHITESPACE.search(value) is not None:
        return f"signature field with more than {MAX_WHITESPACE_RUN} white space octets in a row"
    return None


# -- keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A usable key from a key record (RFC 6376 section 3.6.1): ``kind`` is b"rsa" or
    b"ed25519"; ``hashes`` the ``h=`` names it allows (None: any)."""

    kind: bytes
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    hashes: frozenset[bytes] | None


def parseKeyRecord(text: bytes) -> PublicKey:
    """The key in a key record; ValueError says why it is unusable or unsafe."""
    try:
        tags = parse_tag_value(text)
    except InvalidTagValueList as e:
        raise ValueError(f"bad tag list: {e}") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise ValueError("v= is not DKIM1")
    services = {s.strip() for s in tags.get(b"s", b"*").split(b":")}
    if not services & {b"*", b"email"}:
        raise ValueError("not a key for email (s=)")
    allowed = frozenset(h.strip().lower() for h in tags[b"h"].split(b":")) if b"h" in tags else None
    data = re.sub(rb"\s+", b"", tags.get(b"p", b""))
    if not data:
        raise ValueError("the key is revoked (empty p=)")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError("p= is not base64") from None
    kind = tags.get(b"k", b"rsa")
    if kind == b"rsa":
        return PublicKey(kind, _rsaKey(raw), allowed)
    if kind == b"ed25519":
        if len(raw) != 32:  # RFC 8463 section 4.2: the raw 32-octet key
            raise ValueError(f"an Ed25519 key has 32 octets, not {len(raw)}")
        return PublicKey(kind, ed25519.Ed25519PublicKey.from_public_bytes(raw), allowed)
    raise ValueError(f"unknown key type k={kind.decode('ascii', 'replace')}")


def _rsaKey(raw: bytes) -> rsa.RSAPublicKey:
    """An RSA key (SubjectPublicKeyInfo or bare RSAPublicKey), checked before use."""
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("the RSA key cannot be parsed") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("k=rsa, but p= is not an RSA key")
    numbers = key.public_numbers()
    bits = numbers.n.bit_length()
    if bits < RSA_BITS[0]:
        raise ValueError(f"a {bits}-bit RSA key is too short (RFC 8301 section 3.2)")
    if bits > RSA_BITS[1]:
        raise ValueError(f"a {bits}-bit RSA key is over the {RSA_BITS[1]} bits verifiers accept (RFC 8301 section 3.2)")
    if numbers.e < 3 or numbers.e % 2 == 0 or numbers.e.bit_length() > 32:
        raise ValueError(f"an RSA public exponent of {numbers.e.bit_length()} bits is refused "
                         "(keys use 3 or 65537; at most 32 bits are accepted)")
    return key


class KeyLookup:
    """Fetches and parses the key records one message's signatures name, each once,
    in a worker thread, through the reactor's twisted.names resolver.  Every wait is
    bounded by ``deadline`` (``timeout`` seconds after this lookup is made): the time
    budget of the whole message, whatever number of signatures it carries.

    :meth:`key` raises :class:`Refused`: ``temperror`` when DNS did not answer (RFC
    6376 section 6.1.2), ``permerror`` when there is no record or it is unusable."""

    def __init__(self, reactor: Any, resolver: Any, timeout: float) -> None:
        self.reactor, self.resolver, self.timeout = reactor, resolver, timeout
        self.deadline = time.monotonic() + timeout
        self._keys: dict[bytes, PublicKey | Refused] = {}

    def key(self, name: bytes) -> PublicKey:
        """The usable key at ``name`` (e.g. b"sel._domainkey.example.org.")."""
        if name not in self._keys:
            self._keys[name] = self._find(name)
        found = self._keys[name]
        if isinstance(found, Refused):
            raise Refused(found.result, found.reason)
        return found

    def problem(self, name: bytes) -> tuple[str, str] | None:
        """(result, reason) if the key at ``name`` was looked up and is unusable."""
        found = self._keys.get(name)
        return (found.result, found.reason) if isinstance(found, Refused) else None

    def remaining(self) -> float:
        """Seconds left of the message's time budget."""
        return self.deadline - time.monotonic()

    def _find(self, name: bytes) -> PublicKey | Refused:
        shown = name.decode("ascii", "replace")
        answer = self._fetch(name)
        if isinstance(answer, str):
            return Refused("temperror", f"DNS lookup of {shown} failed: {answer}")
        if answer is None:
            return Refused("permerror", f"no key record at {shown}")
        try:
            return parseKeyRecord(answer)
        except ValueError as e:
            return Refused("permerror", f"bad key record at {shown}: {e}")

    def _fetch(self, name: bytes) -> bytes | str | None:
        """The record's strings joined (RFC 6376 section 3.6.2.2), None when there is
        none, or why DNS did not say."""
        try:
            text = name.decode("ascii").rstrip(".")
        except UnicodeDecodeError:
            return None  # d= and s= must reach DNS as A-labels (RFC 6376 section 3.5)
        remaining = self.remaining()
        if remaining <= 0:
            return f"the time budget of {self.timeout:g} s for this message is spent"
        answers: queue.Queue[object] = queue.Queue()
        self.reactor.callFromThread(lambda: self._lookup(text, remaining).addBoth(answers.put))
        try:
            answer = answers.get(timeout=remaining + 1.0)
        except queue.Empty:
            return "no answer from the reactor"
        return answer if isinstance(answer, (bytes, str)) else None

    def _lookup(self, name: str, timeout: float) -> Deferred[object]:
        """In the reactor: the TXT record, None, or why not (never fails)."""
        # twisted.names resends, then gives up before the hard bound (cancelling a
        # query leaves its own timer pending).
        tries = (timeout * 0.1, timeout * 0.3, timeout * 0.4)
        d = defer.maybeDeferred(self.resolver.lookupText, name, timeout=tries)
        d.addTimeout(timeout, self.reactor)

        def found(result: Any) -> bytes | None:
            records = [b"".join(a.payload.data) for a in result[0]
                       if a.type == dns.TXT and str(a.name).lower() == name.lower()]
            return records[0] if records else None

        def failed(reason: Any) -> str | None:
            if isNonexistent(reason):
                return None  # NXDOMAIN: no key (RFC 6376 section 6.1.2)
            return type(reason.value).__name__

        return d.addCallbacks(found, failed)


# -- the message ----------------------------------------------------------------------


class BodyCanonicalizer:
    """The "simple" or "relaxed" body canonicalization of RFC 6376 sections 3.4.3 and
    3.4.4, fed in pieces, byte for byte what dkimpy computes on the whole body (a bare
    LF counts as a line end, as in dkimpy's parser).  Empty lines are held back until
    something follows them (trailing ones are dropped); a line longer than
    :data:`_CHUNK` octets is passed on in parts, so memory stays bounded."""

    def __init__(self, relaxed: bool) -> None:
        self.relaxed = relaxed
        self._held = b""  # the unfinished last line
        self._empty = 0  # empty lines held back
        self._midLine = False  # part of a line was passed on; its line end is to come
        self._started = False  # something other than empty lines was passed on

    def _canonical(self, data: bytes) -> bytes:
        data = _LINE_END.sub(b"\r\n", data)
        if self.relaxed:
            data = _WHITESPACE.sub(b" ", _TRAILING_WHITESPACE.sub(b"\r\n", data))
        return data

    def feed(self, data: bytes) -> bytes:
        """Canonical octets that ``data`` (the next piece of the body) completes."""
        held = self._held + data
        end = held.rfind(b"\n") + 1
        if end:
            self._held = held[end:]
            return self._lines(self._canonical(held[:end]))
        if len(held) <= _CHUNK:
            self._held = held
            return b""
        cut = len(held.rstrip(b" \t\r"))  # white space and a CR may still change
        self._held = held[cut:]
        return self._part(self._canonical(held[:cut]))

    def finish(self) -> bytes:
        """The rest, once the body has ended."""
        rest = self._canonical(self._held)
        if self._midLine or rest:  # a last line without its line end gets one
            return b"\r\n" * self._empty + rest + b"\r\n"
        if self._started or self.relaxed:
            return b""
        return b"\r\n"  # simple: an empty body is one CRLF

    def _part(self, text: bytes) -> bytes:
        if not text:
            return b""
        out = b"\r\n" * self._empty + text
        self._empty, self._midLine, self._started = 0, True, True
        return out

    def _lines(self, text: bytes) -> bytes:
        """``text``: whole canonical lines (each ends in CR LF)."""
        out = b""
        if self._midLine:  # its first line end finishes a line already begun
            first = text.index(b"\r\n") + 2
            out, text, self._midLine = text[:first], text[first:], False
        end, empty = len(text), 0
        while text.endswith(b"\r\n", 0, end):
            end -= 2
            empty += 1
        if end:
            out += b"\r\n" * self._empty + text[:end + 2]
            self._empty, self._started = empty - 1, True
        else:
            self._empty += empty
        return out


class Message:
    """A message as signatures are checked on it: its header fields (dkimpy's
    ``[name, value]`` form, from at most :data:`MAX_HEADER` octets) and its body
    hashes, computed by streaming the body from ``source()`` (called again for each
    hash: it must give the message from its first octet each time)."""

    def __init__(self, source: Callable[[], Iterable[bytes]], deadline: float) -> None:
        self.source, self.deadline = source, deadline
        split = splitHeader(iter(source()))
        header, self.offset = split.header, split.bodyOffset
        if not split.whole:
            raise dkim.MessageFormatError(f"the header section is over {MAX_HEADER} octets")
        self.header = header
        self.headers = _fields(header)
        self._digests: dict[tuple[bytes, str, int | None], bytes] = {}

    def bodyHash(self, canonicalization: bytes, hashName: str, length: int | None) -> bytes:
        """The digest of the canonical body (its first ``length`` octets if given)."""
        key = (canonicalization, hashName, length)
        if key not in self._digests:
            self._digests[key] = self._hash(*key)
        return self._digests[key]

    def _hash(self, canonicalization: bytes, hashName: str, length: int | None) -> bytes:
        canonicalizer = BodyCanonicalizer(relaxed=canonicalization == b"relaxed")
        hasher = hashlib.new(hashName)
        left = length

        def put(data: bytes) -> None:
            nonlocal left
            if left is not None:
                data, left = data[:left], max(0, left - len(data))
            hasher.update(data)

        for chunk in self._body():
            if time.monotonic() > self.deadline:
                raise Refused("temperror", "the time budget for this message was spent hashing its body")
            put(canonicalizer.feed(chunk))
            if left == 0:
                return hasher.digest()
        put(canonicalizer.finish())
        return hasher.digest()

    def _body(self) -> Iterator[bytes]:
        skip = self.offset
        for chunk in self.source():
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:]
            skip = 0


def _fields(header: bytes) -> list[list[bytes]]:
    """dkimpy's header parse (``rfc822_parse``), in linear time."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in re.split(rb"\r?\n", header)[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise dkim.MessageFormatError("the header section starts with a continuation line")
            fields[-1][1].append(line + b"\r\n")
            continue
        name = re.match(rb"([\x21-\x7e]+?):", line)
        if name is not None:
            fields.append((name.group(1), [line[name.end():] + b"\r\n"]))
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line[:80]!r}")
    return [[name, b"".join(parts)] for name, parts in fields]


def pieces(message: bytes) -> Callable[[], Iterator[bytes]]:
    """A ``source`` for :class:`Message` that reads ``message`` in chunks."""
    return lambda: (message[i:i + _CHUNK] for i in range(0, len(message), _CHUNK))


# -- checking -------------------------------------------------------------------------


class _Checking:
    """dkimpy's signature checks with keys from :class:`KeyLookup`, body hashes from
    :class:`Message`, linear header selection, and OpenSSL for the cryptography.
    ``rsaSha1`` is "fail" (refused unchecked, RFC 8301 section 3.1) or "verify"."""

    message: Message
    lookup: KeyLookup
    rsaSha1: str

    def verify_sig(self, sig: dict[bytes, bytes], include_headers: list[bytes], sig_header: Any,
                   dnsfunc: Any) -> bool:
        algorithm = sig[b"a"]
        if algorithm == b"rsa-sha1" and self.rsaSha1 == "fail":
            raise Refused("fail", RSA_SHA1_REFUSED)
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        key = self.lookup.key(name)
        kind, _, hashName = algorithm.partition(b"-")
        shown = name.decode("ascii", "replace")
        if kind != key.kind:
            raise Refused("permerror", f"the key at {shown} is k={key.kind.decode()}, not for a={algorithm.decode()}")
        if key.hashes is not None and hashName not in key.hashes:
            raise Refused("permerror", f"the key at {shown} does not allow {hashName.decode()} (h=)")
        return self._check(sig, include_headers, sig_header, key, hashName.decode())

    def _check(self, sig: dict[bytes, bytes], include: list[bytes], sigHeader: Any, key: PublicKey,
               hashName: str) -> bool:
        try:
            canonicalization = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as e:
            raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]!r}") from None
        if b"bh" in sig:
            length = int(sig[b"l"]) if sig.get(b"l") else None
            computed = self.message.bodyHash(canonicalization.body_algorithm.name, hashName, length)
            try:
                expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except binascii.Error as e:
                raise dkim.MessageFormatError(str(e)) from None
            if computed != expected:
                raise dkim.ValidationError("body hash mismatch")
        if b"from" in include:
            include = include + [b"from"]  # an added From breaks it (dkimpy bug #644046)
        hasher = hashlib.new(hashName)
        headers = canonicalization.canonicalize_headers(self.message.headers)
        positions: dict[bytes, list[int]] = {}
        for index, (field, _) in enumerate(headers):
            positions.setdefault(field.lower(), []).append(index)
        signed = [headers[stack.pop()] for stack in (positions.get(h) for h in include) if stack]
        own = canonicalization.canonicalize_headers([(sigHeader[0], dkim.RE_BTAG.sub(b"\\1", sigHeader[1]))])
        for field, value in signed + [(x, y.rstrip()) for x, y in own]:
            hasher.update(field + b":" + value)
        try:
            signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
        except binascii.Error as e:
            raise dkim.MessageFormatError(str(e)) from None
        return _signatureValid(key, hashName, hasher.digest(), signature)


def _signatureValid(key: PublicKey, hashName: str, digest: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            algorithm = hashes.SHA1() if hashName == "sha1" else hashes.SHA256()
            key.key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
        else:
            key.key.verify(signature, digest)  # RFC 8463 section 3: Ed25519 signs the SHA-256 hash
    except InvalidSignature:
        return False
    return True


class _DKIMChecking(_Checking, dkim.DKIM):
    pass


class _ARCChecking(_Checking, dkim.ARC):
    pass


def verifierFor(kind: str, message: Message, lookup: KeyLookup, rsaSha1: str = "fail") -> Any:
    """A dkimpy ``DKIM`` (``kind`` "dkim") or ``ARC`` ("arc") object that checks
    ``message`` the bounded way this module describes."""
    checking: Any = _DKIMChecking() if kind == "dkim" else _ARCChecking()
    checking.headers, checking.message, checking.lookup, checking.rsaSha1 = message.headers, message, lookup, rsaSha1
    return checking

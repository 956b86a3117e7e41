"""ARC (RFC 8617): validating the chain of custody a message arrives with, and sealing
it before passing it on, so that a receiver after a forwarder or a list can see what
jsmail's checks found.

dkimpy walks the chain and seals, in a thread; signatures are checked as
:mod:`jsmail.policy.dkimcheck` checks them (keys refused when unsafe, the body
streamed, OpenSSL for the cryptography), within one time budget per message.

Decisions, and why:

- The chain validation status is ``none``, ``pass`` or ``fail`` (RFC 8617 section
  4.4).  A seal that reports ``cv=fail`` ends the chain: dkimpy calls that "no result";
  it is ``fail`` here, as section 5.2 says.  A key that cannot be fetched makes the chain
  ``fail`` too (ARC has no temperror); the reason says it was DNS.
- :meth:`ARCSealer.seal` takes the Authentication-Results this host is adding and
  ignores every Authentication-Results field already in the message: dkimpy would
  otherwise copy a forged one that claims this host's authserv-id into the new
  ARC-Authentication-Results (RFC 8601 section 5 says such fields are not to be
  trusted).  Its ``arc=`` result gives the seal's ``cv=``, so run
  :class:`ARCVerifier` first and put its result there (section 5.1.1).
- ARC signs with rsa-sha256 only (section 4.1.3, and dkimpy).
- A chain of more than 50 sets fails unchecked (section 5.2, step 1 of the
  validator), as does one with an ARC field too long to parse safely
  (:func:`~jsmail.policy.dkimcheck.untamed`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import dkim
from twisted.internet import defer
from twisted.internet.defer import Deferred

from jsmail._threads import RunInThread, reactorThreads
from jsmail.headers import splitHeader
from jsmail.policy.dkim import DEFAULT_SIGNED_HEADERS, SigningError, SigningKey, oversigned
from jsmail.policy.dkimcheck import KeyLookup, Message, pieces, untamed, verifierFor

__all__ = ["ARCResult", "ARCSealer", "ARCVerifier"]


@dataclass(frozen=True)
class ARCResult:
    """The chain validation status (``cv``: "none", "pass" or "fail"), why, and how many
    ARC sets the message carries."""

    result: str
    reason: str
    instances: int


class ARCVerifier:
    """Validates a message's ARC chain (RFC 8617 section 5.2)."""

    def __init__(self, reactor: Any, resolver: Any, timeout: float = 10.0,
                 runInThread: RunInThread | None = None) -> None:
        self.reactor, self.resolver, self.timeout = reactor, resolver, timeout
        self._runInThread = runInThread or reactorThreads(reactor)

    def verify(self, message: bytes) -> Deferred[ARCResult]:
        """The chain's status; never fails."""
        return self.verifyChunks(pieces(message))

    def verifyChunks(self, source: Callable[[], Iterable[bytes]]) -> Deferred[ARCResult]:
        """As :meth:`verify`, for a message that ``source()`` gives in chunks from its
        first octet (see :meth:`jsmail.policy.dkim.DKIMVerifier.verifyChunks`)."""
        return self._runInThread(_verify, source, KeyLookup(self.reactor, self.resolver, self.timeout))


#: RFC 8617 section 5.2: more ARC sets than this and the chain fails.
MAX_SETS = 50


def _verify(source: Callable[[], Iterable[bytes]], lookup: KeyLookup) -> ARCResult:
    """In a thread: dkimpy's chain validation, in RFC 8617 words."""
    try:
        message = Message(source, lookup.deadline)
    except dkim.MessageFormatError as e:
        return ARCResult("fail", str(e), _countSets(splitHeader(iter(source())).header))
    arcFields = [value for name, value in message.headers if name.lower() in dkim.ARC.ARC_HEADERS]
    sets = _countSets(message.header)
    if not arcFields:
        return ARCResult("none", "", 0)
    if sets > MAX_SETS:
        return ARCResult("fail", f"more than {MAX_SETS} ARC sets (RFC 8617 section 5.2)", sets)
    refused = next(filter(None, map(untamed, arcFields)), None)
    if refused is not None:
        return ARCResult("fail", refused, sets)
    try:
        arc = verifierFor("arc", message, lookup)
        instances, _ = arc.sorted_arc_headers()
        cv, results, reason = arc.verify(dnsfunc=None)
    except Exception as e:  # dkimpy raises assorted errors on hostile input
        return ARCResult("fail", f"{type(e).__name__}: {e}", sets)
    if cv == dkim.CV_Pass:
        return ARCResult("pass", "", instances)
    if cv == dkim.CV_None:
        return ARCResult("none", "", 0)
    for result in results:  # a key that could not be fetched says more than "did not validate"
        for kind in ("ams", "as"):
            name = result.get(f"{kind}-selector", b"") + b"._domainkey." + result.get(f"{kind}-domain", b"") + b"."
            problem = lookup.problem(name)
            if problem is not None:
                return ARCResult("fail", f"{reason}: {problem[1]}", instances)
    return ARCResult("fail", str(reason), instances)


def _countSets(header: bytes) -> int:
    return len(re.findall(rb"(?im)^arc-seal[ \t]*:", header))


_AUTHENTICATION_RESULTS = re.compile(rb"(?im)^authentication-results[ \t]*:(?:.*\r?\n)(?:[ \t].*\r?\n)*")


class ARCSealer:
    """Adds this host's ARC set (RFC 8617 section 5.1) with ``key`` (RSA), naming itself
    ``authservId`` in the ARC-Authentication-Results."""

    def __init__(self, reactor: Any, key: SigningKey, authservId: str,
                 headers: Sequence[bytes] = DEFAULT_SIGNED_HEADERS, runInThread: RunInThread | None = None) -> None:
        if key.algorithm != "rsa-sha256":
            raise ValueError(f"DKIM key {key.keyFile}: ARC seals with RSA keys only (RFC 8617 section 4.1.3)")
        self.key, self.authservId, self.headers = key, authservId, tuple(headers)
        self._runInThread = runInThread or reactorThreads(reactor)

    def seal(self, message: bytes, authResults: bytes) -> Deferred[bytes]:
        """ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results, CRLF-terminated,
        to prepend to ``message``.  ``authResults`` is the Authentication-Results field
        (or its value) this host adds, with authserv-id ``authservId`` and an ``arc=``
        result.  Fails with :class:`~jsmail.policy.dkim.SigningError` saying why when dkimpy
        will not seal."""
        value = re.sub(rb"(?i)^authentication-results[ \t]*:", b"", authResults.strip()).strip()
        if not value:
            return defer.fail(SigningError("no Authentication-Results to seal"))
        header, separator, body = message.partition(b"\r\n\r\n")
        header = _AUTHENTICATION_RESULTS.sub(b"", header + b"\r\n")
        ours = b"Authentication-Results: " + value + b"\r\n" + header + separator.removeprefix(b"\r\n") + body
        return self._runInThread(_seal, ours, self.key, self.authservId, oversigned(message, self.headers))


def _seal(message: bytes, key: SigningKey, authservId: str, include: list[bytes]) -> bytes:
    """In a thread: dkimpy's ARC set, top first."""
    try:
        fields = dkim.arc_sign(message, key.selector.encode("ascii"), key.domain.encode("ascii"), key.privateKey,
                               authservId.encode("ascii"), include_headers=include)
    except Exception as e:  # DKIMException, or authres's own errors on a bad field
        raise SigningError(f"cannot seal for {key.domain}: {type(e).__name__}: {e}") from None
    if not fields:
        raise SigningError(f"cannot seal for {key.domain}: no Authentication-Results from {authservId} "
                           "with an arc= result for the chain")
    return b"".join(fields)

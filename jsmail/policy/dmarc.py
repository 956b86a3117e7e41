"""DMARC (RFC 7489): does the author's domain stand behind this message?

The author domain is the domain of the one address in the message's From field
(section 3.1.1).  Its policy record is looked up at ``_dmarc.<domain>``, else at
``_dmarc.<organizational domain>`` (section 6.6.3), the organizational domain coming
from the public suffix list (section 3.2, the ``publicsuffixlist`` package).  DMARC
passes when SPF or DKIM passed for a domain aligned with the author domain: the same
domain (strict) or the same organizational domain (relaxed, the default).
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from typing import Any, Iterable

from publicsuffixlist import PublicSuffixList
from twisted.internet import defer
from twisted.names import dns, error as dnserror
from jsmail._dns import isNonexistent
from jsmail.address import normaliseDomain
from jsmail.error import SMTPReplyError
from jsmail.policy.header import MAX_HEADER, fieldValues, splitHeader

_suffixes: PublicSuffixList | None = None


def organizationalDomain(domain: str) -> str:
    """The registered domain: one label below the public suffix (section 3.2)."""
    global _suffixes
    if _suffixes is None:
        _suffixes = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    return _suffixes.privatesuffix(domain) or domain


def aligned(domain: str, authorDomain: str, mode: str) -> bool:
    """Identifier alignment (section 3.1): ``mode`` "s" (strict) or "r" (relaxed)."""
    domain, authorDomain = domain.lower().rstrip("."), authorDomain.lower().rstrip(".")
    if mode == "s":
        return domain == authorDomain
    return organizationalDomain(domain) == organizationalDomain(authorDomain)


@dataclass(frozen=True)
class Record:
    """A DMARC policy record's tags that decide what to do (section 6.3)."""

    policy: str  # none | quarantine | reject
    subdomainPolicy: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parseRecord(text: str) -> Record | None:
    """The record, or None when ``text`` is not a valid DMARC record (section 6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if text.partition("=")[0].strip().lower() != "v" or tags.get("v") != "DMARC1":
        return None  # v=DMARC1 must be the first tag (section 6.3)
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        if "rua" not in tags:
            return None
        policy = "none"  # section 6.6.3: an invalid p with a rua is taken as none
    sub = tags.get("sp", "").lower()
    pct = tags.get("pct", "100")
    return Record(
        policy=policy,
        subdomainPolicy=sub if sub in ("none", "quarantine", "reject") else policy,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=min(100, int(pct)) if pct.isdigit() else 100,
    )


class DMARCTemporaryError(Exception):
    """The policy could not be fetched for now (section 6.6.3: temperror)."""


def _txtStrings(answers: Iterable[Any]) -> list[str]:
    return [b"".join(a.payload.data).decode("utf-8", "replace") for a in answers if a.type == dns.TXT]


@defer.inlineCallbacks
def _recordAt(resolver: Any, domain: str, timeout: float) -> Any:
    try:
        answers, _, _ = yield resolver.lookupText(f"_dmarc.{domain}", timeout=(timeout,))
    except (dnserror.DomainError, dnserror.AuthoritativeDomainError, dnserror.DNSQueryTimeoutError,
            defer.TimeoutError) as e:
        if isNonexistent(e):
            return None
        raise DMARCTemporaryError(f"_dmarc.{domain}: {type(e).__name__}") from None
    records = [r for r in (parseRecord(t) for t in _txtStrings(answers)) if r is not None]
    return records[0] if len(records) == 1 else None  # several records: none (section 6.6.3)


@defer.inlineCallbacks
def fetchRecord(resolver: Any, authorDomain: str, timeout: float = 5.0) -> Any:
    """Fire with (record, domain it was found at) or None; fail with
    :class:`DMARCTemporaryError` on DNS trouble."""
    record = yield _recordAt(resolver, authorDomain, timeout)
    if record is not None:
        return record, authorDomain
    organizational = organizationalDomain(authorDomain)
    if organizational != authorDomain.lower().rstrip("."):
        record = yield _recordAt(resolver, organizational, timeout)
        if record is not None:
            return record, organizational
    return None


def authorDomain(message: bytes) -> str | None:
    """The author domain (RFC 9989 section 4.4; RFC 7489 section 3.1.1) as an A-label:
    the domain of the addresses in the message's one From field (RFC 5322 section
    3.6 allows exactly one).  None when there is not exactly one From field, it holds
    no address, its addresses have different domains, or the domain is no usable
    domain name.  ``message`` is the message or just its header section.

    Both checking (DMARC) and signing (DKIM) use this rule.  The field is read
    linearly and at most :data:`MAX_FROM` octets of it: nested comments are removed
    by a scanner with a depth counter before the address parser sees the text (the
    standard library's parser recurses once per nesting level)."""
    found = splitHeader(message[:MAX_HEADER + 2])
    values = fieldValues(found[0] if found is not None else message[:MAX_HEADER], b"from")
    if len(values) != 1 or len(values[0]) > MAX_FROM:
        return None
    text = _withoutComments(values[0].decode("utf-8", "replace").replace("\r\n", " ").replace("\n", " "))
    if text is None:
        return None
    try:
        addresses = email.utils.getaddresses([text])
    except (RecursionError, ValueError):
        return None
    domains = set()
    for _, address in addresses:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return None
        try:
            domains.add(normaliseDomain(domain.strip().rstrip(".")))
        except SMTPReplyError:  # octets that are not UTF-8, an empty or over-long label
            return None
    if len(domains) != 1:
        return None
    [domain] = domains
    return None if domain.startswith("[") else domain


#: The longest From field value read (RFC 5322 section 2.1.1 allows 998-octet lines,
#: folded as often as one likes; no real From comes near this).
MAX_FROM = 8192


def _withoutComments(text: str) -> str | None:
    """``text`` with each comment (RFC 5322 section 3.2.2: they nest, and a backslash
    quotes the next character) replaced by a space, outside quoted strings; None when
    the parentheses or quotes do not balance."""
    kept: list[str] = []
    depth, quoted, escaped = 0, False, False
    for character in text:
        if escaped:
            escaped = False
            if not depth:
                kept.append(character)
        elif character == "\\":
            escaped = True
            if not depth:
                kept.append(character)
        elif depth:
            depth += {"(": 1, ")": -1}.get(character, 0)
            if not depth:
                kept.append(" ")
        elif quoted:
            quoted = character != '"'
            kept.append(character)
        elif character == '"':
            quoted = True
            kept.append(character)
        elif character == "(":
            depth = 1
        elif character == ")":
            return None
        else:
            kept.append(character)
    return None if depth or quoted or escaped else "".join(kept)


@dataclass(frozen=True)
class Evaluation:
    """The DMARC result for one message (section 6.6.2)."""

    result: str  # pass | fail | none | temperror | permerror
    authorDomain: str
    policy: str = "none"  # the policy that applies: p=, or sp= for a subdomain
    applied: bool = False  # the policy is to be applied (pct sampling said so)
    reason: str = ""


def evaluate(record: Record | None, foundAt: str, author: str, spfResult: str, spfDomain: str,
             dkimPasses: Iterable[str], sample: float | None = None) -> Evaluation:
    """Alignment of SPF and DKIM with the author domain under ``record``."""
    if record is None:
        return Evaluation("none", author, reason="no DMARC record")
    policy = record.policy if foundAt == author else record.subdomainPolicy
    if spfResult == "pass" and spfDomain and aligned(spfDomain, author, record.aspf):
        return Evaluation("pass", author, policy, reason=f"SPF aligned ({spfDomain})")
    for domain in dkimPasses:
        if aligned(domain, author, record.adkim):
            return Evaluation("pass", author, policy, reason=f"DKIM aligned ({domain})")
    sample = random.uniform(0, 100) if sample is None else sample
    return Evaluation("fail", author, policy, applied=sample < record.pct,
                      reason="neither SPF nor DKIM passed for an aligned domain")

"""DMARC (RFC 7489): does the author's domain stand behind this message?

The author domain is the domain of the one address in the message's From field
(section 3.1.1).  Its policy record is looked up at ``_dmarc.<domain>``, else at
``_dmarc.<organizational domain>`` (section 6.6.3), the organizational domain coming
from the public suffix list (section 3.2, the ``publicsuffixlist`` package).  DMARC
passes when SPF or DKIM passed for a domain aligned with the author domain: the same
domain (strict) or the same organizational domain (relaxed, the default).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import random
from dataclasses import dataclass
from typing import Any, Iterable

from publicsuffixlist import PublicSuffixList
from twisted.internet import defer
from twisted.names import dns, error as dnserror
from jsmail._dns import isNonexistent

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
    """The domain of the From field's one address (as an A-label, RFC 5890), or None
    when there is not exactly one From field with exactly one address, or its domain is
    no usable domain name (section 6.6.1)."""
    header = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")  # RFC 6532 allows UTF-8
    parsed = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(header + "\r\n\r\n")
    fields = parsed.get_all("From") or []
    if len(fields) != 1:
        return None
    addresses = email.utils.getaddresses([str(fields[0])])
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        return None
    domain = addresses[0][1].rpartition("@")[2].strip().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:  # octets that are not UTF-8, an empty or over-long label: no domain to look up
        return None
    return domain.lower() or None


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

"""DMARC (RFC 9989, which obsoletes RFC 7489 and RFC 9091): does the author's domain
stand behind this message?

The author domain is the domain of the message's one From field (:func:`jsmail.headers.fromDomain`).
Its policy record and every Organizational Domain are found by the DNS Tree Walk of
RFC 9989 section 4.10 (:class:`Discovery`), not by a public suffix list: ``_dmarc``
at the domain, then at its parents, jumping to the last seven labels of a longer name,
at most eight queries.  DMARC passes when SPF or DKIM passed for a domain aligned with
the author domain: the same domain (strict) or the same Organizational Domain
(relaxed, the default).

Records are read as RFC 9989 says: a record without ``p`` is ``p=none``; ``np``
gives the policy for subdomains that do not exist, ``psd`` marks Public Suffix
Domains, and ``t=y`` asks receivers to test rather than apply the policy.  Of the
removed ``pct`` tag only 0 still means something: like ``t=y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dnserror

from jsmail._dns import isNonexistent

_POLICIES = ("none", "quarantine", "reject")
#: RFC 9989 section 4.10: a walk makes at most this many queries.
MAX_WALK = 8


@dataclass(frozen=True)
class Record:
    """A DMARC policy record's tags that decide what to do (RFC 9989 section 4.7)."""

    policy: str  # none | quarantine | reject
    subdomainPolicy: str
    nonexistentPolicy: str
    adkim: str = "r"
    aspf: str = "r"
    psd: str = "u"  # y: a Public Suffix Domain; n: an Organizational Domain; u: unsaid
    testing: bool = False  # t=y (or the legacy pct=0): do not apply the policy


def parseRecord(text: str) -> Record | None:
    """The record, or None when ``text`` is not a valid DMARC record."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if text.partition("=")[0].strip().lower() != "v" or tags.get("v") != "DMARC1":
        return None  # v=DMARC1 must be the first tag
    policy = tags.get("p", "none").lower()  # a record without p is p=none
    if policy not in _POLICIES:
        if "rua" not in tags:
            return None
        policy = "none"  # an invalid p with a rua is taken as none (RFC 7489 section 6.6.3 too)
    sub = tags.get("sp", "").lower()
    sub = sub if sub in _POLICIES else policy
    nonexistent = tags.get("np", "").lower()
    psd = tags.get("psd", "u").lower()
    testing = tags.get("t", "").lower() == "y" if "t" in tags else tags.get("pct", "").strip() == "0"
    return Record(
        policy=policy,
        subdomainPolicy=sub,
        nonexistentPolicy=nonexistent if nonexistent in _POLICIES else sub,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        psd=psd if psd in ("y", "n") else "u",
        testing=testing,
    )


class DMARCTemporaryError(Exception):
    """A record could not be fetched for now: temperror."""


def _txtStrings(answers: Iterable[Any]) -> list[str]:
    return [b"".join(a.payload.data).decode("utf-8", "replace") for a in answers if a.type == dns.TXT]


def walk(domain: str) -> list[str]:
    """The names whose ``_dmarc`` records a DNS Tree Walk from ``domain`` reads, in
    order (RFC 9989 section 4.10): the domain, then, below eight labels, each parent;
    from eight labels on, the last seven labels and then each parent: at most eight."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels)] + [".".join(labels[-count:])
                                 for count in range(min(len(labels) - 1, MAX_WALK - 1), 0, -1)]


class Discovery:
    """The DMARC lookups for one message (RFC 9989 section 4.10), each ``_dmarc`` name
    asked at most once however many walks pass it.  Each query waits at most
    ``timeout`` seconds; a failed one fails the walk with
    :class:`DMARCTemporaryError`."""

    def __init__(self, resolver: Any, timeout: float = 5.0) -> None:
        self.resolver, self.timeout = resolver, timeout
        self._records: dict[str, Record | None] = {}
        self._organizational: dict[str, str] = {}

    @defer.inlineCallbacks
    def recordAt(self, domain: str) -> Any:
        """The one valid DMARC record at ``_dmarc.<domain>``, or None (none, or several)."""
        if domain not in self._records:
            self._records[domain] = yield self._fetch(domain)
        return self._records[domain]

    @defer.inlineCallbacks
    def _fetch(self, domain: str) -> Any:
        try:
            answers, _, _ = yield self.resolver.lookupText(f"_dmarc.{domain}", timeout=(self.timeout,))
        except (dnserror.DomainError, dnserror.AuthoritativeDomainError, dnserror.DNSQueryTimeoutError,
                defer.TimeoutError) as e:
            if isNonexistent(e):
                return None
            raise DMARCTemporaryError(f"_dmarc.{domain}: {type(e).__name__}") from None
        records = [r for r in (parseRecord(t) for t in _txtStrings(answers)) if r is not None]
        return records[0] if len(records) == 1 else None

    @defer.inlineCallbacks
    def policyRecord(self, author: str) -> Any:
        """(record, the domain it was found at) for ``author``: the first record the
        walk finds (policy discovery, RFC 9989 section 4.10); or None."""
        for target in walk(author):
            record = yield self.recordAt(target)
            if record is not None:
                return record, target
        return None

    @defer.inlineCallbacks
    def organizationalDomain(self, domain: str) -> Any:
        """The Organizational Domain of ``domain`` (RFC 9989 section 4.10): where the
        walk finds ``psd=n``; one label below where it finds ``psd=y`` (above the
        domain itself); else where it found a record with the fewest labels; else the
        domain itself."""
        domain = domain.lower().rstrip(".")
        if domain not in self._organizational:
            self._organizational[domain] = yield self._organization(domain)
        return self._organizational[domain]

    @defer.inlineCallbacks
    def _organization(self, domain: str) -> Any:
        labels, fewest = domain.split("."), domain
        for target in walk(domain):
            record = yield self.recordAt(target)
            if record is None:
                continue
            if record.psd == "n":
                return target
            if record.psd == "y" and target != domain:
                return ".".join(labels[-(target.count(".") + 2):])
            fewest = target
        return fewest

    @defer.inlineCallbacks
    def aligned(self, domain: str, author: str, mode: str) -> Any:
        """Identifier alignment (RFC 9989 section 4.4): ``mode`` "s" (the same domain)
        or "r" (the same Organizational Domain)."""
        domain, author = domain.lower().rstrip("."), author.lower().rstrip(".")
        if domain == author:
            return True
        if mode == "s":
            return False
        organization = yield self.organizationalDomain(author)
        if domain != organization and not domain.endswith("." + organization):
            return False  # an Organizational Domain is always the domain or a parent of it
        return (yield self.organizationalDomain(domain)) == organization

    @defer.inlineCallbacks
    def exists(self, domain: str) -> Any:
        """False when ``domain`` is a non-existent domain in RFC 9989's sense (section
        3.2: NXDOMAIN or no data for A, AAAA and MX)."""
        for lookup in (self.resolver.lookupAddress, self.resolver.lookupIPV6Address,
                       self.resolver.lookupMailExchange):
            try:
                answers, _, _ = yield lookup(domain, timeout=(self.timeout,))
            except (dnserror.DomainError, dnserror.AuthoritativeDomainError, dnserror.DNSQueryTimeoutError,
                    defer.TimeoutError) as e:
                if isNonexistent(e):
                    return False  # NXDOMAIN holds for every type
                raise DMARCTemporaryError(f"{domain}: {type(e).__name__}") from None
            if answers:
                return True
        return False


def fetchRecord(resolver: Any, authorDomain: str, timeout: float = 5.0) -> Any:
    """Fire with (record, domain it was found at) or None; fail with
    :class:`DMARCTemporaryError` on DNS trouble."""
    return Discovery(resolver, timeout).policyRecord(authorDomain)


@dataclass(frozen=True)
class Evaluation:
    """The DMARC result for one message."""

    result: str  # pass | fail | none | temperror | permerror
    authorDomain: str
    policy: str = "none"  # the policy that applies: p=, sp= or np=
    applied: bool = False  # a failing message gets the policy (no t=y)
    reason: str = ""


@defer.inlineCallbacks
def evaluate(discovery: Discovery, author: str, spfResult: str, spfDomain: str, dkimPasses: Iterable[str]) -> Any:
    """Fire with the :class:`Evaluation` of SPF and DKIM results against the author
    domain's policy; fail with :class:`DMARCTemporaryError` on DNS trouble."""
    found = yield discovery.policyRecord(author)
    if found is None:
        return Evaluation("none", author, reason="no DMARC record")
    record, foundAt = found
    policy = record.policy
    if foundAt != author:  # a subdomain's policy: np when it does not exist, else sp
        policy = record.subdomainPolicy
        if record.nonexistentPolicy != policy and not (yield discovery.exists(author)):
            policy = record.nonexistentPolicy
    if spfResult == "pass" and spfDomain and (yield discovery.aligned(spfDomain, author, record.aspf)):
        return Evaluation("pass", author, policy, reason=f"SPF aligned ({spfDomain})")
    for domain in dkimPasses:
        if (yield discovery.aligned(domain, author, record.adkim)):
            return Evaluation("pass", author, policy, reason=f"DKIM aligned ({domain})")
    return Evaluation("fail", author, policy, applied=not record.testing,
                      reason="neither SPF nor DKIM passed for an aligned domain"
                             + (" (t=y: testing, not applied)" if record.testing else ""))

"""MTA-STS (RFC 8461), the sending side: whether a domain wants its mail only over
verified TLS to MX hosts it names, and what that means for remote delivery.

:class:`PolicyFetcher` discovers a domain's policy: the ``_mta-sts`` TXT record gives
the current policy id (section 3.1); the policy comes over HTTPS from
``mta-sts.<domain>`` (section 3.3); it is cached, keyed by that id, for its
``max_age`` (section 5.1).  :func:`applyPolicy` turns a policy and the MX hosts into
the hosts to try, each with its TLS mode (sections 4 and 5).

Decisions, and why:

- Every lookup, the policy host's addresses included, goes through the twisted.names
  resolver remote delivery uses, never the system's: one DNS view for MX and policy.
- The policy host is connected to only at public addresses (or networks
  ``remote.allow_internal`` names): the domain is the sender's choice, and so is where
  its ``mta-sts`` name points (security review I-6; :mod:`jsmail.remote.destinations`).
- The fetch follows no redirect (section 3.3), takes at most 64 KiB, wants status 200
  and ``text/plain``, and checks the certificate against ``mta-sts.<domain>`` with
  Twisted's browser-like policy.
- A policy in force is used at once; its refresh (a new id in the TXT record, or the
  policy nearing its end) runs in the background, one at a time per domain, so no
  delivery waits for DNS or HTTPS to a domain it already knows.
- A policy that cannot be refreshed (no TXT record, a DNS or HTTPS failure, an invalid
  policy) leaves the cached one in force while it is unexpired (section 5.1), so
  whoever blocks the lookups does not switch enforcement off.
- The cache survives restarts (:mod:`jsmail.remote.stsstore`, ``<data>/mta-sts/``): a
  restart does not reopen the trust-on-first-use window that section 10 accepts once,
  for as long as each policy's ``max_age`` runs.  At most 10,000 domains are kept, the
  least used lately going first.  Concurrent discoveries for one domain share one
  lookup.
- In ``testing`` mode delivery uses the configured TLS mode, so what is logged is MX
  hosts outside the policy, not certificate failures (there is no TLSRPT, RFC 8460).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from jsmail import reply
from jsmail._threads import RunInThread, reactorThreads
from jsmail.error import DeliveryError
from jsmail.remote.destinations import Destinations
from jsmail.remote.stsstore import PolicyStore

__all__ = ["MAX_AGE", "Policy", "PolicyFetcher", "applyPolicy", "parsePolicy", "parseTXT"]

_log = Logger()

MAX_AGE = 31557600  # the largest max_age, in seconds (RFC 8461 section 3.2)
MAX_POLICY = 64 * 1024  # octets a policy body may take; real ones take a few hundred
MODES = ("enforce", "testing", "none")

_STS_TXT = re.compile(r"v=STSv1[ \t]*;")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)\Z")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_MX_PATTERN = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}\Z")


@dataclass(frozen=True)
class Policy:
    """One domain's policy (RFC 8461 section 3.2) and the id its TXT record gave it.

    ``mxPatterns`` are lower case, without a trailing dot."""

    id: str
    mode: str
    mxPatterns: tuple[str, ...]
    maxAge: int

    def matches(self, mxHost: str) -> bool:
        """Whether the policy names ``mxHost``: exactly, or through a wildcard standing
        for its one left-most label (RFC 8461 section 4.1); case and a trailing dot do
        not count."""
        host = mxHost.rstrip(".").lower()
        label, _, parent = host.partition(".")
        return any(host == pattern or (pattern[:2] == "*." and label != "" and parent == pattern[2:])
                   for pattern in self.mxPatterns)


def parseTXT(text: str) -> str:
    """The policy id in a ``v=STSv1`` TXT record (RFC 8461 section 3.1).  Raises
    ValueError saying what is wrong."""
    fields = [field.strip(" \t") for field in text.split(";")]
    if fields[-1] == "":
        fields.pop()  # a trailing delimiter
    if fields[0] != "v=STSv1":
        raise ValueError("the record does not start with v=STSv1")
    policyId = None
    for field in fields[1:]:
        match = _TXT_FIELD.match(field)
        if match is None:
            raise ValueError(f"bad field {field[:40]!r}")
        if match[1] == "id" and policyId is None:
            if not _ID.match(match[2]):
                raise ValueError(f"bad id {match[2][:40]!r}")
            policyId = match[2]
    if policyId is None:
        raise ValueError("the record has no id")
    return policyId


def parsePolicy(body: bytes, policyId: str) -> Policy:
    """Parse a policy file (RFC 8461 section 3.2).  Raises ValueError saying what is
    wrong.

    Unknown fields are ignored; of a repeated field other than ``mx`` the first counts;
    ``mx`` may be absent only in mode ``none``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the policy is not UTF-8") from None
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for line in text.split("\n"):  # a field ends with LF or CR LF
        line = line.removesuffix("\r").rstrip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"line without a colon: {line[:40]!r}")
        value = value.lstrip(" \t")
        if key == "mx":
            pattern = value.lower()
            if not _MX_PATTERN.match(pattern):
                raise ValueError(f"bad mx pattern {value[:80]!r}")
            patterns.append(pattern)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise ValueError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}, not one of {', '.join(MODES)}")
    maxAge = fields.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", maxAge) or int(maxAge) > MAX_AGE:
        raise ValueError(f"max_age {maxAge!r} is not a number of seconds up to {MAX_AGE}")
    if not patterns and mode != "none":
        raise ValueError("the policy has no mx field")
    return Policy(id=policyId, mode=mode, mxPatterns=tuple(patterns), maxAge=int(maxAge))


def applyPolicy(policy: Policy | None, domain: str, hosts: Sequence[str], tls: str) -> list[tuple[str, str]]:
    """The MX hosts to try for ``domain``, best first, each with its TLS mode.

    ``tls`` is the configured mode.  Under an ``enforce`` policy only the hosts it
    names are tried, each with ``verify`` (``implicit`` stays, as it verifies too)
    against the MX host name (RFC 8461 section 4.2); if it names none, raises
    :class:`~jsmail.error.DeliveryError` (temporary: the mail waits, RFC 8461 section 5.1).
    ``testing`` logs the hosts it does not name and changes nothing; ``none``, or no
    policy, changes nothing (section 5)."""
    if policy is None or policy.mode == "none":
        return [(host, tls) for host in hosts]
    outside = [host for host in hosts if not policy.matches(host)]
    for host in outside:
        _log.warn("MX {host} of {domain} is not in its MTA-STS policy (id {id}, mode {mode})",
                  host=host, domain=domain, id=policy.id, mode=policy.mode)
    if policy.mode == "testing":
        return [(host, tls) for host in hosts]
    enforced = "implicit" if tls == "implicit" else "verify"
    plan = [(host, enforced) for host in hosts if host not in outside]
    if not plan:
        raise DeliveryError(reply.MTA_STS_NO_HOST.format(domain), False,
                            f"MX hosts {', '.join(hosts)}; policy id {policy.id}")
    return plan


class PolicyFetcher:
    """Finds and caches domains' MTA-STS policies (RFC 8461 sections 3 and 5.1).

    ``resolver`` is a twisted.names resolver, for the TXT record and the policy host's
    addresses; ``clock`` times the cache (the reactor's by default); ``trustRoot``
    checks the policy host's certificate (the platform's by default); ``httpsPort``
    and ``timeout`` (for the whole fetch) are there for tests and slow hosts;
    ``maxCacheAge`` caps how long a policy is kept whatever its ``max_age``;
    ``destinations`` says which addresses policy hosts may have (public ones by default).
    ``directory`` keeps the policies across restarts (see
    :mod:`jsmail.remote.stsstore`; None: memory only), at most ``maxPolicies`` of
    them, read and written with ``runInThread`` (the reactor's pool by default).
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        clock: Any = None,
        trustRoot: Any = None,
        httpsPort: int = 443,
        timeout: float = 60.0,
        maxCacheAge: int = MAX_AGE,
        destinations: Destinations | None = None,
        directory: str | None = None,
        runInThread: RunInThread | None = None,
        maxPolicies: int = 10_000,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.clock = clock if clock is not None else reactor
        self.httpsPort = httpsPort
        self.timeout = timeout
        self.maxCacheAge = maxCacheAge
        hosts = _PolicyHosts(reactor, resolver, BrowserLikePolicyForHTTPS(trustRoot), timeout,
                             destinations or Destinations())
        self._agent = Agent.usingEndpointFactory(reactor, hosts)
        self._store: PolicyStore[Policy] = PolicyStore(directory, runInThread or reactorThreads(reactor),
                                                       _policyAsJSON, _policyFromJSON, maxPolicies, maxCacheAge)
        self._loaded: Deferred[None] | None = None
        self._waiting: dict[str, list[Deferred[Policy | None]]] = {}
        self._refreshing: dict[str, Deferred[None]] = {}

    def policyFor(self, domain: str) -> Deferred[Policy | None]:
        """The policy in force for ``domain``, or None if it has none; never fails."""
        domain = domain.rstrip(".").lower()
        d: Deferred[Policy | None] = Deferred()
        if domain in self._waiting:
            self._waiting[domain].append(d)
            return d
        self._waiting[domain] = [d]
        Deferred.fromCoroutine(self._discover(domain)).addBoth(self._answer, domain)
        return d

    def settled(self) -> Deferred[Any]:
        """Fires once the refreshes and stored-policy writes under way are done."""
        return DeferredList(list(self._refreshing.values())).addCallback(lambda _: self._store.settled())

    def close(self) -> Deferred[Any]:
        """Call off the refreshes under way (the policies in force stay stored); fires
        once the stored-policy writes are done.  No refresh keeps a shutdown waiting
        for a slow policy host."""
        for refresh in list(self._refreshing.values()):
            refresh.cancel()
        return self._store.settled()

    def _answer(self, result: Policy | None | Failure, domain: str) -> None:
        if isinstance(result, Failure):
            _log.failure("MTA-STS discovery for {domain} failed", result, domain=domain)
            result = None
        for d in self._waiting.pop(domain):
            d.callback(result)

    async def _discover(self, domain: str) -> Policy | None:
        """A policy in force is answered at once (and refreshed in the background if
        need be); without one, the domain is asked now."""
        if self._loaded is None:
            self._loaded = self._store.load(self.clock.seconds())
            self._loaded.addErrback(lambda f: _log.failure("MTA-STS: cannot load the stored policies", f))
        await self._loaded
        cached = self._cached(domain)
        if cached is not None:
            if domain not in self._refreshing:
                refresh = Deferred.fromCoroutine(self._refresh(domain, *cached))
                self._refreshing[domain] = refresh
                refresh.addErrback(self._refreshFailed, domain)
                refresh.addBoth(lambda _: self._refreshing.pop(domain, None) and None)
            return cached[0]
        try:
            return await self._fetchPolicy(domain, await self._policyId(domain))
        except Exception as e:
            _log.info("MTA-STS: no policy for {domain}: {reason}", domain=domain, reason=_why(e))
            return None

    def _refreshFailed(self, failure: Failure, domain: str) -> None:
        if not failure.check(CancelledError):  # called off by close()
            _log.failure("MTA-STS refresh for {domain} failed", failure, domain=domain)

    def _cached(self, domain: str) -> tuple[Policy, float] | None:
        """The unexpired policy kept for ``domain`` and when it expires."""
        entry = self._store.get(domain)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            self._store.drop(domain)
            return None
        return entry

    async def _refresh(self, domain: str, policy: Policy, expires: float) -> None:
        """Fetch the policy again when its TXT record names a new id (RFC 8461 section
        3.1), or when it nears its end (a quarter of its life or a day left, whichever
        is less), so that it never lapses while mail goes to the domain.  A failure
        leaves the policy in force until it expires (section 5.1): whoever blocks the
        lookups does not switch enforcement off."""
        try:
            policyId = await self._policyId(domain)
            lifetime = min(policy.maxAge, self.maxCacheAge)
            if policyId == policy.id and expires - self.clock.seconds() > min(lifetime / 4, 86400):
                return
            await self._fetchPolicy(domain, policyId)
        except Exception as e:
            _log.info("MTA-STS: keeping the cached policy of {domain} (id {id}): {reason}",
                      domain=domain, id=policy.id, reason=_why(e))

    async def _fetchPolicy(self, domain: str, policyId: str) -> Policy:
        """Fetch, parse and keep the domain's policy with id ``policyId``."""
        fetch = Deferred.fromCoroutine(self._fetch(domain))
        policy = parsePolicy(await fetch.addTimeout(self.timeout, self.reactor, _timedOut), policyId)
        expires = self.clock.seconds() + min(policy.maxAge, self.maxCacheAge)
        self._store.put(domain, policy, expires)
        _log.info("MTA-STS: policy of {domain} (id {id}) is {mode}", domain=domain, id=policy.id, mode=policy.mode)
        return policy

    async def _policyId(self, domain: str) -> str:
        """The id in the domain's one ``v=STSv1`` TXT record (RFC 8461 section 3.1)."""
        name = f"_mta-sts.{domain}"
        try:
            answers, _, _ = await self.resolver.lookupText(name)
        except dnserror.DNSNameError:
            raise ValueError(f"no TXT record at {name}") from None
        except (dnserror.DomainError, dnserror.DNSQueryTimeoutError, defer.TimeoutError) as e:
            raise ValueError(f"TXT lookup of {name} failed: {type(e).__name__}") from None
        texts = [b"".join(a.payload.data).decode("latin-1") for a in answers if a.type == dns.TXT]
        records = [text for text in texts if _STS_TXT.match(text)]
        if len(records) != 1:
            raise ValueError(f"{len(records)} v=STSv1 TXT records at {name}")
        return parseTXT(records[0])

    async def _fetch(self, domain: str) -> bytes:
        """The policy body from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
        host = f"mta-sts.{domain}".encode("idna")
        netloc = host if self.httpsPort == 443 else b"%s:%d" % (host, self.httpsPort)
        url = b"https://" + netloc + b"/.well-known/mta-sts.txt"
        response: IResponse = await self._agent.request(b"GET", url, Headers({b"User-Agent": [b"jsmail"]}))
        reader = _Body(MAX_POLICY)
        response.deliverBody(reader)
        body = await reader.done
        if response.code != 200:  # a redirect too: it is not followed (section 3.3)
            raise ValueError(f"{url.decode()} answered HTTP {response.code}")
        contentType = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if contentType.split(b";")[0].strip().lower() != b"text/plain":
            raise ValueError(f"{url.decode()} is {contentType.decode('latin-1')!r}, not text/plain")
        return body


def _policyAsJSON(policy: Policy) -> dict[str, Any]:
    return {"id": policy.id, "mode": policy.mode, "mx": list(policy.mxPatterns), "max_age": policy.maxAge}


def _policyFromJSON(data: dict[str, Any]) -> Policy:
    """A stored policy, checked as a fetched one is (a file is input too)."""
    policy = Policy(id=data["id"], mode=data["mode"], mxPatterns=tuple(data["mx"]), maxAge=data["max_age"])
    if not (isinstance(policy.id, str) and _ID.match(policy.id) and policy.mode in MODES
            and isinstance(policy.maxAge, int) and 0 <= policy.maxAge <= MAX_AGE
            and all(isinstance(p, str) and _MX_PATTERN.match(p) for p in policy.mxPatterns)):
        raise ValueError("not a valid policy")
    return policy


def _timedOut(result: object, timeout: float) -> NoReturn:
    raise ValueError(f"no policy within {timeout} seconds")


def _why(error: Exception) -> str:
    """What went wrong, for the log: the web client wraps its reasons in a list."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return str(error) or type(error).__name__


class _Body(Protocol):
    """Collects a response body of at most ``limit`` octets; past that, or when
    ``done`` is cancelled, the connection is dropped."""

    transport: IPushProducer  # type: ignore[assignment]  # Response.deliverBody connects a producer, not an ITransport

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(ValueError(f"the policy is larger than {self.limit} octets"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IAgentEndpointFactory)
class _PolicyHosts:
    """Endpoints for policy hosts: TLS checked against the host name, addresses from
    the twisted.names resolver."""

    def __init__(self, reactor: Any, resolver: Any, tls: BrowserLikePolicyForHTTPS, timeout: float,
                 destinations: Destinations) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.tls = tls
        self.timeout = timeout
        self.destinations = destinations

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        address = _ResolvedEndpoint(self.reactor, self.resolver, uri.host.decode("ascii"), uri.port, self.timeout,
                                    self.destinations)
        return wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), address)


@implementer(IStreamClientEndpoint)
class _ResolvedEndpoint:
    """TCP to a host name's IPv6 then IPv4 addresses, looked up through twisted.names,
    trying each in turn, but none that ``destinations`` calls internal."""

    def __init__(self, reactor: Any, resolver: Any, host: str, port: int, timeout: float,
                 destinations: Destinations) -> None:
        self.destinations = destinations
        self.reactor = reactor
        self.resolver = resolver
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> Any:
        lookups = await DeferredList([self.resolver.lookupIPV6Address(self.host),
                                      self.resolver.lookupAddress(self.host)], consumeErrors=True)
        addresses = [socket.inet_ntop(socket.AF_INET6, a.payload.address) if a.type == dns.AAAA
                     else a.payload.dottedQuad()
                     for ok, result in lookups if ok for a in result[0] if a.type in (dns.A, dns.AAAA)]
        error: Exception = ConnectError(string=f"{self.host} has no address")
        internal = [f"{a} is {what}" for a in addresses if (what := self.destinations.internal(a))]
        if internal:
            addresses = [a for a in addresses if self.destinations.internal(a) is None]
            error = ConnectError(string=f"{self.host} has internal addresses only: {', '.join(internal)}")
        for address in addresses:
            endpointType = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            try:
                return await endpointType(self.reactor, address, self.port, timeout=self.timeout).connect(
                    protocolFactory)
            except ConnectError as e:
                error = e
        raise error

"""SPF (RFC 7208): may this client send mail for the MAIL FROM (or HELO) domain?

pyspf evaluates the records.  It is blocking code, so each check runs in a worker thread;
every DNS question it asks is answered by the reactor's twisted.names resolver through a
:class:`~jsmail.policy.spfdns.ThreadResolver`, bounded by the checker's time budget.

pyspf looks up DNS through its module global ``spf.DNSLookup``.  Importing this module
replaces it, once, with a function that answers through the ThreadResolver of the calling
thread (kept in a thread-local, so concurrent checks never share one) and that refuses
lookups from any other thread with a temperror: pyspf never queries a resolver of its own.

Decisions: results are RFC 7208 section 2.6's; DNS timeouts and error RCODEs are
temperror (section 2.6.6), the processing limits and bad records permerror (sections
4.6.4, 2.6.7); the explanation is kept only for fail (section 6.2), with the reason for
temperror and permerror.  Which result rejects mail is the policy layer's decision.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

import spf as pyspf
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolver
from twisted.internet.threads import deferToThreadPool
from twisted.names import dns
from twisted.python import log

from jsmail.policy.spfdns import DNSLookupError, ThreadResolver, wireName

__all__ = ["RESULTS", "SPFChecker", "SPFResult"]

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_QTYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT, "SPF": dns.SPF,
           "CNAME": dns.CNAME}
_local = threading.local()


def _nameText(name: dns.Name) -> str:
    """A name from an answer as text; pyspf keeps A-labels ("xn--...") as they are."""
    return name.name.decode("utf-8", "replace")


def _forPyspf(record: dns.RRHeader, asked: str) -> tuple[tuple[str, str], Any]:
    """One answer record in the form pyspf's DNS hook returns: ((name, type), value),
    named as pyspf asked if it answers that name (so a U-label question finds its answer)."""
    payload: Any = record.payload
    if record.type == dns.A:
        value: Any = payload.dottedQuad()
    elif record.type == dns.AAAA:
        value = socket.inet_ntop(socket.AF_INET6, payload.address)
    elif record.type == dns.MX:
        value = (payload.preference, _nameText(payload.name))
    elif record.type in (dns.PTR, dns.CNAME):
        value = _nameText(payload.name)
    else:  # TXT, SPF: the character-strings, still bytes (pyspf checks them for ASCII)
        value = tuple(payload.data)
    name = asked if record.name.name.lower() == (wireName(asked) or b"").lower() else _nameText(record.name)
    return (name, dns.QUERY_TYPES[record.type]), value


def _lookup(name: str, qtype: str, strict: object = True, timeout: object = None) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNS hook: answer through this thread's ThreadResolver (RFC 7208 section 4.4)."""
    resolver: ThreadResolver | None = getattr(_local, "resolver", None)
    if resolver is None:
        raise pyspf.TempError("DNS lookups are only made for jsmail.policy.spf.SPFChecker")
    try:
        records = resolver.lookup(name, _QTYPES[qtype])
    except DNSLookupError as e:
        raise pyspf.TempError(f"DNS {e}") from None
    return [_forPyspf(r, name) for r in records if r.type in _QTYPES.values()]


pyspf.DNSLookup = _lookup

# RFC 5322 section 3.2.3 dot-atom; anything else is written as a quoted-string.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _value(text: str) -> str:
    """A key-value-pair's value (RFC 7208 section 9.1): a dot-atom or a quoted-string;
    control characters (a CR LF from a client's HELO, say) become "?"."""
    text = _CONTROL.sub("?", text)
    if _DOT_ATOM.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    """A comment (RFC 5322 section 3.2.2), its parentheses and backslashes quoted."""
    return "(" + re.sub(r"([()\\])", r"\\\1", _CONTROL.sub("?", text)) + ")"


@dataclass(frozen=True)
class SPFResult:
    """The outcome of one check_host() (RFC 7208 section 4)."""

    result: str  # one of RESULTS
    identity: str  # "mailfrom" | "helo"
    domain: str  # the domain whose record was evaluated
    sender: str  # the MAIL FROM address checked ("postmaster@<helo>" for the helo identity)
    clientIP: str
    helo: str
    explanation: str  # text for a fail (exp= or default), or the reason for temperror/permerror
    mechanism: str = ""  # the mechanism that matched, if any

    def receivedSPF(self, receiver: str) -> str:
        """The Received-SPF header field (RFC 7208 section 9.1), one logical line, no CRLF."""
        who, ip = self.sender, self.clientIP
        comments = {
            "pass": f"domain of {who} designates {ip} as permitted sender",
            "fail": f"domain of {who} does not designate {ip} as permitted sender",
            "softfail": f"domain of transitioning {who} does not designate {ip} as permitted sender",
            "neutral": f"{ip} is neither permitted nor denied by domain of {who}",
            "none": f"domain of {who} does not designate permitted sender hosts",
            "temperror": f"error in processing during lookup of {who}: {self.explanation}",
            "permerror": f"permanent error in processing domain of {who}: {self.explanation}",
        }
        pairs = [("client-ip", ip)]
        if self.identity == "mailfrom":
            pairs.append(("envelope-from", self.sender))
        pairs += [("helo", self.helo), ("receiver", receiver)]
        if self.mechanism:
            pairs.append(("mechanism", self.mechanism))
        pairs.append(("identity", self.identity))
        fields = " ".join(f"{key}={_value(value)};" for key, value in pairs)
        return f"Received-SPF: {self.result} {_comment(f'{receiver}: {comments[self.result]}')} {fields}"


class SPFChecker:
    """Runs SPF checks in ``threadpool`` (the reactor's by default) with DNS through
    ``resolver``; ``timeout`` bounds each check's DNS lookups together (RFC 7208 section
    4.6.4 allows a limit of at least 20 seconds).

    ``receiver`` is the %{r} macro (RFC 7208 section 7.3) and ``defaultExplanation``
    the explanation of a fail whose record gives none (section 6.2).
    """

    def __init__(self, reactor: Any, resolver: IResolver, timeout: float = 20.0, *, threadpool: Any = None,
                 receiver: str = "unknown",
                 defaultExplanation: str = "SPF fail - not authorized") -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._timeout = timeout
        self._threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._receiver = receiver
        self._defaultExplanation = defaultExplanation

    def check(self, clientIP: str, sender: str, helo: str) -> Deferred[SPFResult]:
        """check_host() for the MAIL FROM identity, or for the HELO identity when
        ``sender`` is null (RFC 7208 section 2.4).  Never fails: DNS trouble gives
        temperror, a bad record permerror."""
        return deferToThreadPool(self._reactor, self._threadpool, self._evaluate, clientIP, sender, helo)

    def checkHelo(self, clientIP: str, helo: str) -> Deferred[SPFResult]:
        """check_host() for the HELO identity (RFC 7208 section 2.3), which a receiver
        may check before MAIL FROM.  A HELO that is an address literal or a single label
        is not a domain to check: none, without DNS."""
        if helo.startswith("[") or "." not in helo.strip("."):
            return succeed(SPFResult("none", "helo", helo, f"postmaster@{helo}", clientIP, helo, ""))
        return self.check(clientIP, "", helo)

    def _evaluate(self, clientIP: str, sender: str, helo: str) -> SPFResult:
        """In a worker thread: run pyspf with this thread's lookups bound to the reactor."""
        identity = "mailfrom" if sender else "helo"
        local, domain = pyspf.split_email(sender, helo)
        checked = f"{local}@{domain}"
        try:
            ipaddress.ip_address(clientIP)
        except ValueError:
            return SPFResult("permerror", identity, domain, checked, clientIP, helo,
                             f"not an IP address: {clientIP!r}")
        _local.resolver = ThreadResolver(self._reactor, self._resolver, self._timeout)
        try:
            query = pyspf.query(i=clientIP, s=sender, h=helo, receiver=self._receiver)
            query.set_default_explanation(self._defaultExplanation)
            result, _, text = query.check()
        except Exception:  # a pyspf bug on some record: try again later, not a rejection
            log.err(None, f"SPF check of {checked} from {clientIP} failed")
            return SPFResult("temperror", identity, domain, checked, clientIP, helo, "internal error in SPF check")
        finally:
            del _local.resolver
        if result in ("temperror", "permerror"):
            text = text.split(": ", 1)[-1]  # the reason, without pyspf's "SPF Temporary Error: "
        elif result != "fail":
            text = ""
        return SPFResult(result, identity, domain, checked, clientIP, helo, text, query.mechanism or "")

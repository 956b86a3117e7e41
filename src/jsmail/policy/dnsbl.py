"""DNS block and allow lists (RFC 5782), the way rblsmtpd uses them.

The client's address is looked up in each allow list (DNSWL) and then each block list
(DNSBL) when it connects, through twisted.names.  A hit in an allow list ends the
search: the client is not blocked.  A block list hit (an A record in 127.0.0.0/8, RFC
5782 section 2.1) is then either refused at RCPT with 554 5.7.1 and the list's TXT
text, as rblsmtpd does (mail to postmaster is still taken, RFC 5321 section 4.5.1), or
only tagged with a header field.  A lookup that fails decides nothing (fail open, as
rblsmtpd's default ``-C``) unless ``on_error = "tempfail"``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror

from jsmail import reply
from jsmail._dns import isNonexistent
from jsmail.address import Address
from jsmail.policy.base import Policy
from jsmail.policy.plugin import Options, PolicyContext
from jsmail.policy.verdict import Verdict

_log = Logger()

_NOT_LISTINGS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("127.255.255.0/24"))  # test, errors


def reversedName(clientAddress: str, zone: str) -> str | None:
    """``d.c.b.a.zone`` for IPv4, reversed nibbles for IPv6 (RFC 5782 sections 2.1,
    2.4); None for an address that cannot be looked up (a UNIX socket peer)."""
    try:
        ip = ipaddress.ip_address(clientAddress)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    labels = str(ip).split(".") if ip.version == 4 else list(ip.packed.hex())  # packed: no "%scope" suffix
    return ".".join(reversed(labels)) + "." + zone


@dataclass(frozen=True)
class Listing:
    zone: str
    text: str


class _LookupFailed(Exception):
    pass


class DNSBL(Policy):
    """See the module docstring.  ``action`` is "reject" or "tag"."""

    def __init__(self, resolver: Any, zones: Sequence[str], allowZones: Sequence[str] = (), action: str = "reject",
                 onError: str = "accept", timeout: float = 5.0) -> None:
        self.resolver = resolver
        self.zones, self.allowZones = tuple(zones), tuple(allowZones)
        self.action, self.onError, self.timeout = action, onError, timeout

    @defer.inlineCallbacks
    def checkConnect(self, session: Any) -> Any:
        try:
            listing = yield self._search(session.clientAddress)
        except _LookupFailed as e:
            _log.info("DNS list lookup for {client} failed: {error}", client=session.client, error=str(e))
            session.notes["dnsbl"] = e
            return None
        session.notes["dnsbl"] = listing
        if listing is None or self.action != "tag":
            return None
        text = _printable(listing.text)
        return Verdict.accept([f"X-DNSBL: {session.clientAddress} listed in {listing.zone}: {text}"])

    def checkRecipient(self, session: Any, address: Address, params: dict) -> Verdict | None:
        found = session.notes.get("dnsbl")
        if found is None or address.local.lower() == "postmaster":
            return None
        if isinstance(found, _LookupFailed):
            return Verdict.tempfail(reply.DNSBL_LOOKUP_FAILED, str(found)) if self.onError == "tempfail" else None
        if self.action == "reject":
            return Verdict.reject(reply.DNSBL_BLOCKED.format(_printable(found.text)),
                                  f"{session.clientAddress} is listed in {found.zone}")
        return None

    @defer.inlineCallbacks
    def _search(self, clientAddress: str) -> Any:
        for zone in self.allowZones:
            if (yield self._listed(clientAddress, zone)):
                return None
        for zone in self.zones:
            if (yield self._listed(clientAddress, zone)):
                text = yield self._text(reversedName(clientAddress, zone) or "")
                return Listing(zone, text or f"{clientAddress} is listed in {zone}")
        return None

    @defer.inlineCallbacks
    def _listed(self, clientAddress: str, zone: str) -> Any:
        name = reversedName(clientAddress, zone)
        if name is None:
            return False
        try:
            answers, _, _ = yield self.resolver.lookupAddress(name, timeout=(self.timeout,))
        except (dnserror.DomainError, dnserror.AuthoritativeDomainError, defer.TimeoutError) as e:
            if isNonexistent(e):
                return False  # NXDOMAIN: not listed
            raise _LookupFailed(f"{name}: {type(e).__name__}") from None
        for answer in answers:
            if answer.type == dns.A:
                ip = ipaddress.ip_address(answer.payload.dottedQuad())
                if ip in ipaddress.ip_network("127.0.0.0/8") and not any(ip in n for n in _NOT_LISTINGS):
                    return True
        return False

    @defer.inlineCallbacks
    def _text(self, name: str) -> Any:
        try:
            answers, _, _ = yield self.resolver.lookupText(name, timeout=(self.timeout,))
        except Exception:
            return ""  # the listing stands without its text
        return " ".join(b"".join(a.payload.data).decode("utf-8", "replace") for a in answers if a.type == dns.TXT)


def _printable(text: str) -> str:
    """At most 200 printable ASCII characters, as rblsmtpd sends."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]


def build(options: Mapping[str, Any], context: PolicyContext) -> DNSBL:
    o = Options(options)
    policy = DNSBL(context.resolver, o.strings("zones"), o.strings("allow_zones"),
                   o.choice("action", "reject", "reject", "tag"), o.choice("on_error", "accept", "accept", "tempfail"),
                   o.get("timeout", 5.0))
    o.done()
    if not policy.zones and not policy.allowZones:
        raise ValueError("zones: name at least one block list zone")
    return policy

"""Where mail for a domain goes (RFC 5321 section 5.1): its mail exchangers in
preference order, equal preferences in random order; no MX means the domain itself
(implicit MX); a null MX (RFC 7505) fails at once; a domain that does not exist fails
for good, a lookup that fails (SERVFAIL, a timeout) only for now.  Each host's IPv6
and IPv4 addresses are tried in turn.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dnserror

from jsmail import reply
from jsmail._dns import isNonexistent
from jsmail.error import DeliveryError


class MailExchangers:
    """MX and address lookups through a twisted.names resolver."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver

    @defer.inlineCallbacks
    def hostsFor(self, domain: str) -> Any:
        """The hosts to try for ``domain``, best first (RFC 5321 section 5.1)."""
        if domain.startswith("["):
            return [domain]
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(domain)
        except (dnserror.DomainError, dnserror.AuthoritativeDomainError, dnserror.DNSQueryTimeoutError,
                defer.TimeoutError) as e:
            if isNonexistent(e):
                raise DeliveryError(reply.NO_SUCH_DOMAIN.format(domain), True, "NXDOMAIN for its MX") from None
            raise DeliveryError(reply.DNS_FAILED.format(domain), False, f"MX lookup: {type(e).__name__}") from None
        exchangers = [(a.payload.preference, str(a.payload.name)) for a in answers
                      if a.type == dns.MX and str(a.name).lower() == domain.lower()]
        if not exchangers:
            return [domain]  # implicit MX (RFC 5321 section 5.1)
        if any(name in ("", ".") for _, name in exchangers):
            raise DeliveryError(reply.NULL_MX.format(domain), True)
        random.shuffle(exchangers)
        return [name for _, name in sorted(exchangers, key=lambda e: e[0])]

    @defer.inlineCallbacks
    def addressesOf(self, host: str, domain: str = "") -> Any:
        """IPv6 then IPv4 addresses of ``host`` (an address, or address literal, is its
        own), an MX of ``domain``."""
        if host.startswith("["):
            literal = host[1:-1]
            return [literal[5:]] if literal[:5].lower() == "ipv6:" else [literal]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        lookups = yield defer.DeferredList(
            [self.resolver.lookupIPV6Address(host), self.resolver.lookupAddress(host)], consumeErrors=True
        )
        addresses = []
        for ok, result in lookups:
            if ok:
                answers = result[0]
                addresses += [a.payload.dottedQuad() if a.type == dns.A else _ipv6(a.payload)
                              for a in answers if a.type in (dns.A, dns.AAAA)]
        if not addresses:
            raise DeliveryError(reply.HOST_WITHOUT_ADDRESS.format(domain), False, f"{host} has no address")
        return addresses


def _ipv6(record: Any) -> str:
    return socket.inet_ntop(socket.AF_INET6, record.address)

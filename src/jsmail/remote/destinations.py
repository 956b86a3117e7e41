"""Which addresses remote delivery connects to: no mail to this host itself, and none
into internal networks because a DNS answer said so (security review M-9 and I-6).

Whoever controls a domain's DNS chooses where its MX and address records point, and
bounces let anyone choose the domain.  Without this check an unauthenticated sender can
make the gateway carry content to SMTP services on loopback or the internal network,
which often trust it, and make MTA-STS fetch from internal web servers.

The rules, applied to mail exchangers and address literals, never to routes or the
smarthost (the operator named those hosts):

- An address and port this host's own SMTP listeners take mail on is a loop: mail for
  the domain "loops back to myself" and fails for good (550 5.4.6), as in qmail and
  Postfix.  As in Postfix, an MX that is this host cuts the list there: the hosts
  preferred after it are not tried (this host would be their backup, not they its);
  if better hosts were tried and failed, the mail waits for them.  The port counts
  as well as the address, so a gateway listening on 127.0.0.1:2525 still delivers to
  another server on 127.0.0.1:25 when that network is allowed.
- Any other address in the networks of :data:`INTERNAL` is refused, unless
  ``remote.allow_internal`` lists a network holding it.  When every mail exchanger
  has only such addresses the mail fails for good (550 5.4.4, "unable to route",
  RFC 3463): a public DNS answer pointing into private space does not mend itself on
  retry, and waiting would only keep an attacker's bounce in the queue for days.
  Postfix's usual defence (a CIDR table of such networks in ``check_*_mx_access``)
  refuses at once too.
- MTA-STS policy hosts (:mod:`jsmail.remote.mtasts`) get the same address check.

"This host's addresses" for a listener bound to a wildcard address are found by
asking the kernel's routing table (:func:`isHostAddress`, system calls that do not
wait).  Not covered: addresses this host answers on through NAT (Postfix's
``proxy_interfaces``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from twisted.logger import Logger

from jsmail import reply
from jsmail.error import DeliveryError

__all__ = ["INTERNAL", "Destinations", "Sieve", "isHostAddress", "listenedOn"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Networks no public DNS answer should send mail into, with what each is.
INTERNAL: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(network), what) for network, what in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

_log = Logger()

_WILDCARDS = ("", "0.0.0.0", "::")


def isHostAddress(address: str) -> bool:
    """Whether ``address`` is one of this host's own: the kernel routes a datagram to
    one of its own addresses from that very address.  (Connecting a UDP socket sends
    nothing and does not wait; binding would say yes to any address where
    ``ip_nonlocal_bind`` is on, as on many load-balanced hosts.)"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            source = probe.getsockname()[0]
    except OSError:  # no route, or no IPv6 here: then the internal check still applies
        return False
    return ipaddress.ip_address(source) == ipaddress.ip_address(address)


def listenedOn(descriptions: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """The (address, port) pairs of TCP listener endpoint descriptions, such as
    ``tcp:25:interface=192.0.2.1``; an empty address is any of this host's."""
    found = []
    for description in descriptions:
        fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", description)]
        if fields[0].lower() not in ("tcp", "tcp6", "ssl"):
            continue  # a UNIX socket is no destination
        positional = [f for f in fields[1:] if "=" not in f]
        keywords = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        port = keywords.get("port") or (positional[0] if positional else "0")
        interface = keywords.get("interface") or (positional[2] if len(positional) > 2 else "")
        if port.isdigit() and int(port) > 0:
            found.append((interface, int(port)))
    return tuple(found)


def _plain(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 goes where 10.0.0.1 goes
    return ip


@dataclass(frozen=True)
class Destinations:
    """The rules of the module docstring: ``allowed`` networks (``remote.allow_internal``),
    where this host's SMTP listeners listen (``listeners``, see :func:`listenedOn`),
    and ``isMine``, which says whether an address is this host's."""

    allowed: tuple[Network, ...] = ()
    listeners: tuple[tuple[str, int], ...] = ()
    isMine: Callable[[str], bool] = field(default=isHostAddress, compare=False)

    def internal(self, address: str) -> str | None:
        """What internal network ``address`` is in ("private", "loopback", ...), or None
        if it is public or allowed."""
        ip = _plain(address)
        if any(ip in network for network in self.allowed):
            return None
        return next((what for network, what in INTERNAL if ip in network), None)

    def isMyself(self, address: str, port: int) -> bool:
        """Whether this host's own SMTP listeners take connections at ``address``, ``port``."""
        ip = _plain(address)
        for interface, listening in self.listeners:
            if listening != port:
                continue
            if interface in _WILDCARDS:
                if ip.is_loopback or ip.is_unspecified or self.isMine(str(ip)):
                    return True
            elif _plain(interface) == ip:
                return True
        return False


@dataclass
class Sieve:
    """One domain's delivery through :class:`Destinations`: :meth:`sift` each MX host's
    addresses in preference order; :meth:`verdict` at the end says whether the refusals
    alone decided the outcome."""

    destinations: Destinations
    domain: str
    port: int
    refused: dict[str, DeliveryError] = field(default_factory=dict)  # host -> why
    loopsAt: str | None = None  # the first host that is this host itself

    def sift(self, host: str, addresses: Sequence[str]) -> list[str]:
        """The addresses of ``host`` that may be tried, none if it is this host
        (then :attr:`loopsAt` is set and no later host should be tried)."""
        if any(self.destinations.isMyself(address, self.port) for address in addresses):
            self.loopsAt = host
            why = f"MX {host} [{', '.join(addresses)}] of {self.domain} is this host, port {self.port}"
            _log.warn("Mail for {domain} loops back to myself: {why}", domain=self.domain, why=why)
            self.refused[host] = DeliveryError(reply.LOOPS_BACK.format(self.domain), True, why)
            return []
        allowed, internal = [], []
        for address in addresses:
            what = self.destinations.internal(address)
            if what is None:
                allowed.append(address)
            else:
                internal.append(f"{address} is {what}")
        if internal:
            _log.warn("Not delivering mail for {domain} to internal addresses of MX {host}: {internal} "
                      "(remote.allow_internal allows none of them)", domain=self.domain, host=host,
                      internal=", ".join(internal))
        if not allowed:
            why = f"MX {host}: {', '.join(internal)}"
            self.refused[host] = DeliveryError(reply.INTERNAL_DESTINATION.format(self.domain), True, why)
        return allowed

    def verdict(self, hosts: Sequence[str]) -> DeliveryError | None:
        """The permanent failure when every host up to the loop (or every host) was
        refused, not tried; None when some host was tried or failed otherwise."""
        for host in hosts:
            if host not in self.refused:
                return None
            if host == self.loopsAt:
                break
        return self.refused[self.loopsAt] if self.loopsAt else next(iter(self.refused.values()), None)

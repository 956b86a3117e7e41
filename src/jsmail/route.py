"""Which agent delivers to a recipient: local domains go to local delivery, the rest
to remote delivery (:mod:`jsmail.remote.agent`), along a :class:`Route` where one is set.

An embedder may leave remote delivery out: mail for other domains then fails
permanently with a reply that says so (:class:`NoRemoteDelivery`), rather than waiting
in the queue for days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from twisted.internet import defer
from zope.interface import implementer

from jsmail import reply
from jsmail.envelope import Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, IRouter, QueuedMessage

#: How to use TLS with a peer (see :class:`jsmail.smtp.client.ClientSettings`).
TLS_MODES = ("none", "opportunistic", "verify", "implicit")


@dataclass(frozen=True)
class Route:
    """Where to send mail for a domain instead of its MX (like qmail's smtproutes), or
    for every domain (a smarthost): a host, a port, TLS mode and credentials."""

    host: str
    port: int = 25
    tls: str = "opportunistic"  # "none" | "opportunistic" | "verify" | "implicit"
    username: str | None = None
    password: str | None = None
    domain: str = ""  # the domain it is for; "" for a smarthost


@implementer(IDeliveryAgent)
class NoRemoteDelivery:
    """Fails every recipient for good: there is no route off this host."""

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        return defer.succeed([DeliveryResult(r.address, DeliveryStatus.PERMANENT, reply.NO_ROUTE) for r in recipients])


class VirtualDomains:
    """qmail's virtualdomains (qmail-interfaces reference, section 5.1): lines
    ``key:prepend``; the later of two equal keys wins, keys compared without case."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.table: dict[str, str] = {}
        for line in lines:
            key, _, prepend = line.partition(":")
            self.table[key.lower()] = prepend

    def prepend(self, address: str) -> str | None:
        """The prepend for ``address``, trying the whole address, the domain, each
        dotted suffix longest first, then the catch-all ``""``; None if the first
        hit is empty or nothing matches (not virtual)."""
        domain = address.rpartition("@")[2].lower()
        keys = [address.lower(), domain, *(domain[i:] for i, c in enumerate(domain) if c == "."), ""]
        for key in keys:
            if key in self.table:
                return self.table[key] or None
        return None


@implementer(IRouter)
class Router:
    """Routes by domain: ``localDomains`` and virtual domains (qmail's
    virtualdomains lines, consulted only for other domains) to ``local``,
    everything else to ``remote``."""

    def __init__(self, localDomains: Iterable[str], local: IDeliveryAgent, remote: IDeliveryAgent | None = None,
                 virtualDomains: Iterable[str] = ()) -> None:
        self.localDomains = frozenset(d.lower() for d in localDomains)
        self.local = local
        self.remote = remote if remote is not None else NoRemoteDelivery()
        self.virtual = VirtualDomains(virtualDomains)

    def isLocal(self, domain: str) -> bool:
        return domain.lower() in self.localDomains

    def agentFor(self, recipient: str) -> IDeliveryAgent:
        local = self.isLocal(recipient.rpartition("@")[2]) or self.virtual.prepend(recipient) is not None
        return self.local if local else self.remote

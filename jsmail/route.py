"""Which agent delivers to a recipient: local domains go to local delivery.

Remote delivery (qmail-remote's job) is not part of jsmail yet; until it is, mail for
other domains (accepted only from trusted networks, or bounces to remote senders) fails
permanently with a reply that says so, rather than waiting in the queue for days.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from twisted.internet import defer
from zope.interface import implementer

from jsmail.envelope import Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, IRouter, QueuedMessage


@implementer(IDeliveryAgent)
class NoRemoteDelivery:
    """Fails every recipient for good: there is no route off this host."""

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        text = "554 5.4.4 No route to a non-local domain: remote delivery is not configured"
        return defer.succeed([DeliveryResult(r.address, DeliveryStatus.PERMANENT, text) for r in recipients])


@implementer(IRouter)
class Router:
    """Routes by domain: ``localDomains`` to ``local``, everything else to ``remote``."""

    def __init__(self, localDomains: Iterable[str], local: IDeliveryAgent, remote: IDeliveryAgent | None = None) -> None:
        self.localDomains = frozenset(d.lower() for d in localDomains)
        self.local = local
        self.remote = remote if remote is not None else NoRemoteDelivery()

    def isLocal(self, domain: str) -> bool:
        return domain.lower() in self.localDomains

    def agentFor(self, recipient: str) -> IDeliveryAgent:
        return self.local if self.isLocal(recipient.rpartition("@")[2]) else self.remote

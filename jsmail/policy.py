"""Checks smtpd runs at each SMTP phase (see :class:`jsmail.interfaces.IPolicy`).

:class:`Policy` is the base to subclass: it objects to nothing.  :class:`RelayControl`
is the one check every listener has: no open relay (RFC 2505, RFC 5321 section 3.9).
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from jsmail import reply
from jsmail.address import Address
from jsmail.error import SMTPReplyError
from jsmail.interfaces import IPolicy
from jsmail.local import BadMailbox, mailboxName

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@implementer(IPolicy)
class Policy:
    """A check that objects to nothing; override the phases you care about."""

    def checkConnect(self, session: object) -> Deferred[None] | None:
        return None

    def checkHelo(self, session: object, name: str) -> Deferred[None] | None:
        return None

    def checkSender(self, session: object, address: Address, params: dict) -> Deferred[None] | None:
        return None

    def checkRecipient(self, session: object, address: Address, params: dict) -> Deferred[None] | None:
        return None


def isTrusted(clientAddress: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(clientAddress)
    except ValueError:
        return False  # a UNIX socket peer, or unknown
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class RelayControl(Policy):
    """Local domains take mail from anyone; other domains only from trusted networks
    and from authenticated users allowed to relay.

    A recipient in a local domain must also be a possible mailbox name, so a path trick
    in a local part is refused at RCPT rather than failing later.  ``rcptHosts`` (qmail's
    rcpthosts, :class:`jsmail.rcpthosts.RcptHosts`) names more domains taken from anyone,
    such as those this server is a backup MX for.
    """

    def __init__(self, isLocalDomain: Callable[[str], bool], trustedNetworks: Iterable[Network] = (),
                 rcptHosts: Callable[[str], bool] | None = None) -> None:
        self.isLocalDomain = isLocalDomain
        self.trustedNetworks = tuple(trustedNetworks)
        self.rcptHosts = rcptHosts

    def checkRecipient(self, session: object, address: Address, params: dict) -> None:
        if self.isLocalDomain(address.domain):
            try:
                mailboxName(address.local)
            except BadMailbox as e:
                raise SMTPReplyError(reply.BAD_MAILBOX.withText(f"No such mailbox: {address.local}"), str(e)) from None
            return None
        if self.rcptHosts is not None and self.rcptHosts(address.domain):
            return None
        user = getattr(session, "user", None)
        if user is not None and user.mayRelay:
            return None
        clientAddress = getattr(session, "clientAddress", "")
        if not isTrusted(clientAddress, self.trustedNetworks):
            raise SMTPReplyError(
                reply.RELAY_DENIED.withText(f"Relaying to <{address}> denied: {address.domain} is not a local domain"),
                f"relay attempt from untrusted {clientAddress} to {address}",
            )
        return None


class BadMailFrom(Policy):
    """qmail-smtpd's badmailfrom (qmail-interfaces reference, section 11.3): a sender
    listed exactly, or whose domain is listed as ``@domain``, is refused at MAIL."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = frozenset(e.strip().lower() for e in entries if e.strip())

    def checkSender(self, session: object, address: Address, params: dict) -> None:
        sender = str(address).lower()
        if sender and (sender in self.entries or "@" + sender.rpartition("@")[2] in self.entries):
            raise SMTPReplyError(reply.SENDER_REFUSED.withText(f"Sender address <{address}> refused"),
                                 "sender in badmailfrom")
        return None


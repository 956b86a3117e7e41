"""No open relay: the checks every listener runs before its plugins.

:class:`RelayControl` is the one check every listener has: no open relay (RFC 2505,
RFC 5321 section 3.9).  :class:`RcptHosts` is qmail-smtpd's rcpthosts test and
:class:`BadMailFrom` its badmailfrom.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from jsmail import reply
from jsmail.address import Address, BadMailbox, mailboxName
from jsmail.error import SMTPReplyError
from jsmail.policy.base import Policy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The transaction note :class:`RelayControl` sets for a client in the trusted networks.
TRUSTED_CLIENT = "trustedClient"


def isTrusted(clientAddress: str, networks: Iterable[Network]) -> bool:
    """Whether the client's address is in one of ``networks`` (an IPv4-mapped IPv6
    address counts as its IPv4 address)."""
    if isinstance(networks, tuple):
        return _trustedIn(clientAddress, networks)
    return _trusted(clientAddress, networks)


@functools.lru_cache(maxsize=4096)
def _trustedIn(clientAddress: str, networks: tuple[Network, ...]) -> bool:
    """:func:`isTrusted`, remembered for the last clients: parsing the address took
    about 1 % of a session's CPU, for every MAIL and RCPT."""
    return _trusted(clientAddress, networks)


def _trusted(clientAddress: str, networks: Iterable[Network]) -> bool:
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
    rcpthosts, :class:`RcptHosts`) names more domains taken from anyone,
    such as those this server is a backup MX for.

    A sender address literal (``MAIL FROM:<u@[10.0.0.1]>``) is taken only from the
    same trusted clients and authenticated users (security review M-9): from anyone
    else it names no domain that could be checked, and a bounce to it would go to
    whatever address it names, internal ones included.  Postfix's sender
    restrictions refuse with the same 553 5.7.1.
    """

    def __init__(self, isLocalDomain: Callable[[str], bool], trustedNetworks: Iterable[Network] = (),
                 rcptHosts: Callable[[str], bool] | None = None) -> None:
        self.isLocalDomain = isLocalDomain
        self.trustedNetworks = tuple(trustedNetworks)
        self.rcptHosts = rcptHosts

    def checkSender(self, session: object, address: Address, params: dict) -> None:
        """Note a client in the trusted networks, for the envelope (its bounces may
        return the whole message); refuse an address-literal sender from a client that
        is neither authenticated nor trusted."""
        clientAddress = getattr(session, "clientAddress", "")
        trusted = isTrusted(clientAddress, self.trustedNetworks)
        notes = getattr(session, "transactionNotes", None)
        if notes is not None and trusted:
            notes[TRUSTED_CLIENT] = True
        if address.domain.startswith("[") and getattr(session, "user", None) is None and not trusted:
            raise SMTPReplyError(reply.SENDER_LITERAL_REFUSED.format(address),
                                 f"address-literal sender from untrusted {clientAddress}")
        return None

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


class TrustedClient(Policy):
    """In place of :class:`RelayControl` where the client may relay whatever its
    address (tcpserver's RELAYCLIENT): notes it as trusted, as RelayControl does for
    the trusted networks, so its bounces may return the whole message."""

    def checkSender(self, session: object, address: Address, params: dict) -> None:
        notes = getattr(session, "transactionNotes", None)
        if notes is not None:
            notes[TRUSTED_CLIENT] = True
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


class RcptHosts:
    """qmail-smtpd's rcpthosts test (qmail-interfaces reference, section 2.2): the
    rcpthosts entries and the morercpthosts.cdb at ``cdbPath`` (empty: none).

    A domain is taken when it, or a suffix of it starting at a dot, is an entry or a
    key of the CDB (made by qmail-newmrh: lower-case keys, empty data), compared
    without regard to case: ``.example.org`` takes every subdomain of example.org,
    ``example.org`` only itself.  The CDB is read once, at start.
    """

    def __init__(self, entries: Iterable[str], cdbPath: str = "") -> None:
        self.entries = frozenset(e.lower() for e in entries)
        self.cdb = None
        if cdbPath:
            import cdblib

            with open(cdbPath, "rb") as f:
                self.cdb = cdblib.Reader(f.read())

    def _listed(self, key: str) -> bool:
        return key in self.entries or (self.cdb is not None and self.cdb.get(key.encode("utf-8")) is not None)

    def __call__(self, domain: str) -> bool:
        """Whether mail for ``domain`` is taken."""
        domain = domain.lower()
        if self._listed(domain):
            return True
        return any(self._listed(domain[i:]) for i, c in enumerate(domain) if c == ".")


@dataclass(frozen=True)
class RelaySettings:
    """What is taken at RCPT and MAIL besides the local domains (``config.relay``, from
    ``[smtp]``): qmail's rcpthosts entries, a morercpthosts.cdb, and badmailfrom."""

    rcptHosts: tuple[str, ...] = ()
    moreRcptHosts: str = ""
    badMailFrom: tuple[str, ...] = ()

    def rcptHostsCheck(self) -> RcptHosts | None:
        """The rcpthosts test, if any entries are configured."""
        if not self.rcptHosts and not self.moreRcptHosts:
            return None
        return RcptHosts(self.rcptHosts, self.moreRcptHosts)

"""The gateway's DNS: one way to make a twisted.names resolver, and telling "no such
domain" from "the lookup failed" in its errors.

twisted.names raises :class:`~twisted.names.error.DNSNameError` for NXDOMAIN, but
SERVFAIL, REFUSED and the other error codes are subclasses of the same
``DomainError``: catching ``DomainError`` for "does not exist" turns a server's
trouble into a permanent answer (a bounce, a missing policy).  An in-process authority
raises a bare ``DomainError`` or ``AuthoritativeDomainError`` for a name it does not
have.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.names import error
from twisted.names.client import Resolver

from jsmail import metrics
from jsmail.address import hostPort


def isNonexistent(failure: object) -> bool:
    """Whether an exception (or a Failure's value) means the name does not exist."""
    value = getattr(failure, "value", failure)
    if isinstance(value, error.DNSNameError):
        return True
    return type(value) in (error.DomainError, error.AuthoritativeDomainError)


def makeResolver(server: str | None, reactor: Any) -> Resolver:
    """A twisted.names resolver: ``HOST:PORT`` of one DNS server, or the system's
    resolv.conf when ``server`` is empty."""
    if not server:
        return TimedResolver(resolv="/etc/resolv.conf", reactor=reactor)
    return TimedResolver(servers=[hostPort(server, 53)], reactor=reactor)


class TimedResolver(Resolver):
    """A resolver that reports each lookup's latency (``jsmail_dns_seconds``)."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Deferred[Any]:
        started = time.monotonic()

        def done(result: Any) -> Any:
            metrics.resolved(time.monotonic() - started)
            return result

        return super()._lookup(name, cls, type, timeout).addBoth(done)

"""Telling "no such domain" from "the lookup failed" in twisted.names errors.

twisted.names raises :class:`~twisted.names.error.DNSNameError` for NXDOMAIN, but
SERVFAIL, REFUSED and the other error codes are subclasses of the same
``DomainError``: catching ``DomainError`` for "does not exist" turns a server's
trouble into a permanent answer (a bounce, a missing policy).  An in-process authority
raises a bare ``DomainError`` or ``AuthoritativeDomainError`` for a name it does not
have.
"""

from __future__ import annotations

from twisted.names import error


def isNonexistent(failure: object) -> bool:
    """Whether an exception (or a Failure's value) means the name does not exist."""
    value = getattr(failure, "value", failure)
    if isinstance(value, error.DNSNameError):
        return True
    return type(value) in (error.DomainError, error.AuthoritativeDomainError)

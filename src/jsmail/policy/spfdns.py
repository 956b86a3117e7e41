"""DNS for blocking library code (pyspf, ...) running in a worker thread, answered by the
reactor's twisted.names resolver.

Such libraries would otherwise open sockets to a resolver of their own, bypassing the one
the gateway was configured with (``dns_server``) and blocking in ways the gateway cannot
bound.  Instead, the worker thread hands each question to the reactor and waits for the
answer.  The reactor bounds every question by what is left of a time budget, so a
question asked once the budget is spent fails at once.

Decision: this is ``twisted.internet.threads.blockingCallFromThread`` with a bounded
wait.  That function waits for the reactor without limit, and at shutdown the reactor
joins its thread pool on the reactor thread: a worker waiting for a DNS answer then waits
for a reactor that waits for it, for ever.  Here the worker gives up after the budget
(plus a grace period) and makes no more questions.
"""

from __future__ import annotations

import queue
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure

from jsmail._dns import isNonexistent

__all__ = ["DNSLookupError", "ThreadResolver", "wireName"]

# The reactor's own guard fires this long after the resolver's timeout, for resolvers
# that ignore the timeout they are given.
_GRACE = 1.0


class DNSLookupError(Exception):
    """A question that got no usable answer: a timeout, a server failure or another error
    RCODE.  Callers treat it as temporary (RFC 7208 section 5, RFC 6376 section 6.1.2)."""


def wireName(name: str) -> bytes | None:
    """``name`` as the bytes of a DNS query, or None if no query can carry it (an empty
    label, a label over 63 octets, over 253 octets in all: RFC 1035 section 2.3.4)."""
    if name.endswith("."):
        name = name[:-1]
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        try:
            raw = name.encode("idna")
        except UnicodeError:
            return None
    if len(raw) > 253 or any(not 0 < len(label) <= 63 for label in raw.split(b".")):
        return None
    return raw


class ThreadResolver:
    """Blocking lookups for one conversation (e.g. one SPF check), to be called from a
    worker thread, never from the reactor thread.

    ``timeout`` is the budget in seconds for all the conversation's questions together,
    counted from its first question.
    """

    def __init__(self, reactor: Any, resolver: IResolver, timeout: float) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._timeout = timeout
        self._deadline: float | None = None
        self._reactorGone = False

    def lookup(self, name: str, qtype: int) -> list[dns.RRHeader]:
        """The answer section for ``name`` and ``qtype`` (a twisted.names type such as
        ``dns.TXT``), CNAME records included as the server gave them.  A name that does
        not exist, has no such records or cannot be queried gives ``[]``.

        :raises DNSLookupError: no answer within the budget, or an error RCODE.
        """
        raw = wireName(name)
        if raw is None:
            return []
        if self._reactorGone:
            raise DNSLookupError("the reactor is not answering (shutting down?)")
        answers: queue.Queue[Any] = queue.Queue()
        self._reactor.callFromThread(lambda: defer.maybeDeferred(self._ask, raw, qtype).addBoth(answers.put))
        try:
            result = answers.get(timeout=self._timeout + 2 * _GRACE)
        except queue.Empty:
            self._reactorGone = True
            raise DNSLookupError("the reactor is not answering (shutting down?)") from None
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def _ask(self, name: bytes, qtype: int) -> defer.Deferred[list[dns.RRHeader]]:
        """On the reactor: ask the resolver, bounded by the rest of the budget."""
        if self._reactorGone:  # the worker stopped waiting for this question
            return defer.fail(DNSLookupError("asked too late"))
        now = self._reactor.seconds()
        if self._deadline is None:
            self._deadline = now + self._timeout
        left = self._deadline - now
        label = f"{dns.QUERY_TYPES.get(qtype, qtype)} {name.decode('ascii', 'backslashreplace')}"
        if left <= 0:
            return defer.fail(DNSLookupError(f"{label}: time budget of {self._timeout:g}s spent"))
        d = self._resolver.query(dns.Query(name, qtype, dns.IN), timeout=(left,))
        d.addTimeout(left + _GRACE, self._reactor)

        def answered(result: tuple[list[dns.RRHeader], Any, Any]) -> list[dns.RRHeader]:
            return list(result[0])

        def failed(failure: Failure) -> list[dns.RRHeader]:
            if isNonexistent(failure):
                return []  # NXDOMAIN (DomainError: from an in-process authority)
            if failure.check(dnserror.DNSQueryTimeoutError, defer.TimeoutError):
                raise DNSLookupError(f"{label}: no answer in {left:.1f}s")
            if failure.check(dnserror.DNSServerError):
                raise DNSLookupError(f"{label}: server failure (SERVFAIL)")
            raise DNSLookupError(f"{label}: {type(failure.value).__name__} {failure.getErrorMessage()}".rstrip())

        return d.addCallbacks(answered, failed)

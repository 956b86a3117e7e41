"""What keeps one SMTP client from holding the server's memory, time or connection
slots (security review L-9), for :class:`~jsmail.smtp.server.ESMTPServer`:

- :class:`ReplyBackPressure`: reading stops while the replies already written wait in
  the transport, so a client that pipelines NOOPs and never reads gets no more read
  from it.
- :class:`TimeLimits`: the idle time-out runs from the start of a command line, not
  from its last byte; message data must keep coming at ``minDataRate`` octets per
  second; a session ends after ``maxSessionTime``.
- :func:`clientKey`: who counts as one client for ``maxConnectionsPerClient``, and
  :class:`Refuse`, what a client gets past that limit or ``maxConnections``.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from jsmail import reply
from jsmail.reply import Reply
from jsmail.smtp.settings import ServerSettings


@implementer(IPushProducer)
class ReplyBackPressure:
    """Registered with the transport: when the replies written but not yet sent fill
    its buffer, the transport pauses us, and we ``pause`` reading the client's commands."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume

    def pauseProducing(self) -> None:
        self._pause()

    def resumeProducing(self) -> None:
        self._resume()

    def stopProducing(self) -> None:
        pass


class TimeLimits(TimeoutMixin):
    """One session's clocks: TimeoutMixin's idle time-out, which the server restarts
    as each command line starts and stops while a reply is pending; the credit that
    message data buys; and the session's whole life.  When one runs out, ``expired`` is
    called with the 421 that says which."""

    def __init__(self, clock: IReactorTime, settings: ServerSettings, expired: Callable[[Reply], None]) -> None:
        self.clock = clock
        self.settings = settings
        self.expired = expired
        self._deadline = 0.0  # when the idle time-out fires, as last set
        self._sessionTimer: IDelayedCall | None = None

    def start(self) -> None:
        """The session has begun."""
        self._sessionTimer = self.clock.callLater(self.settings.maxSessionTime, self._sessionTooLong)
        self.setTimeout(self.settings.idleTimeout)

    def stop(self) -> None:
        """The session has ended: no clock runs any more."""
        self.setTimeout(None)
        if self._sessionTimer is not None and self._sessionTimer.active():
            self._sessionTimer.cancel()

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's timer runs on the given clock."""
        return self.clock.callLater(period, func)

    def setTimeout(self, period: float | None) -> float | None:
        """TimeoutMixin's, remembering when it fires (for the data-rate credit)."""
        if period is not None:
            self._deadline = self.clock.seconds() + period
        return super().setTimeout(period)

    def credit(self, octets: int) -> None:
        """Message data buys time at ``minDataRate``: a client trickling data runs out
        of it, one sending at the rate or faster never does (capped at the idle
        time-out)."""
        if self.timeOut is None:
            return
        remaining = self._deadline - self.clock.seconds()
        self.setTimeout(min(self.settings.idleTimeout, remaining + octets / self.settings.minDataRate))

    def timeoutConnection(self) -> None:
        self.expired(reply.IDLE_TIMEOUT)

    def _sessionTooLong(self) -> None:
        self._sessionTimer = None
        self.expired(reply.SESSION_TOO_LONG)


def clientKey(host: str, prefix6: int) -> str:
    """Who a client is for the per-client connection limit: its address, or for IPv6
    its /``prefix6`` network (one site holds a /64, so each address would count as a
    new client)."""
    if ":" not in host:  # IPv4 (whose only spelling ipaddress takes is the one given) or no address
        return host
    return _ipv6Key(host, prefix6)


@functools.lru_cache(maxsize=4096)
def _ipv6Key(host: str, prefix6: int) -> str:
    """:func:`clientKey` of an address with a colon, remembered for the last clients
    (parsing one took a twentieth of the CPU smtpd spent per session)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, prefix6), strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)


class Refuse(Protocol):
    """Says one 421 reply and hangs up: used when connection limits are reached."""

    transport: ITransport  # set by makeConnection before connectionMade

    def __init__(self, refusal: Reply) -> None:
        self.refusal = refusal

    def connectionMade(self) -> None:
        self.transport.write(self.refusal.wire)
        self.transport.loseConnection()

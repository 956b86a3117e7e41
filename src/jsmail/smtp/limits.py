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
import typing
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from jsmail import reply
from jsmail.reply import Reply
from jsmail.smtp.settings import ServerSettings


class Reader(typing.Protocol):
    """What :class:`ReplyBackPressure` pauses: the server's reading of commands."""

    def pauseReading(self, why: str) -> None: ...

    def resumeReading(self, why: str) -> None: ...


@implementer(IPushProducer)
class ReplyBackPressure:
    """Registered with the transport: when the replies written but not yet sent fill
    its buffer, the transport pauses us, and we pause ``reader``'s reading of the
    client's commands.  One small object per session (slots, no bound callables)."""

    __slots__ = ("_reader",)

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    def pauseProducing(self) -> None:
        self._reader.pauseReading("replies")

    def resumeProducing(self) -> None:
        self._reader.resumeReading("replies")

    def stopProducing(self) -> None:
        pass


class TimeLimits:
    """One session's clocks: the idle time-out, which the server restarts as each
    command line starts and stops while a reply is pending; the credit that message
    data buys; and the session's whole life.  When one runs out, ``expired`` is called
    with the 421 that says which.

    All three run on one timer, moved only when a deadline comes sooner: restarting
    the idle time-out sets a number, and a timer that fires before a deadline that
    moved later is set again.  A session so costs one timer, not a timer set and
    cancelled per command and a second one for its whole life."""

    #: A deadline this close counts as reached (the timer's time is a sum of floats).
    _ROUNDING = 1e-6

    def __init__(self, clock: IReactorTime, settings: ServerSettings, expired: Callable[[Reply], None]) -> None:
        self.clock = clock
        self.settings = settings
        self.expired = expired
        self._idleEnds: float | None = None  # None: no idle time-out runs (a reply is pending, or stopped)
        self._sessionEnds = 0.0
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> None:
        """The session has begun."""
        now = self.clock.seconds()
        self._sessionEnds = now + self.settings.maxSessionTime
        self._idleEnds = now + self.settings.idleTimeout
        self._arm(now)

    def stop(self) -> None:
        """The session has ended: no clock runs any more."""
        self._stopped, self._idleEnds = True, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def resetTimeout(self) -> None:
        """A command line starts: the idle time-out, if it runs, starts again."""
        if self._idleEnds is not None:
            self._idleEnds = self.clock.seconds() + self.settings.idleTimeout

    def setTimeout(self, period: float | None) -> None:
        """Run the idle time-out for ``period`` seconds from now, or stop it (None)."""
        if period is None:
            self._idleEnds = None
            return
        now = self.clock.seconds()
        self._idleEnds = now + period
        self._arm(now)

    def credit(self, octets: int) -> None:
        """Message data buys time at ``minDataRate``: a client trickling data runs out
        of it, one sending at the rate or faster never does (capped at the idle
        time-out)."""
        if self._idleEnds is None:
            return
        now = self.clock.seconds()
        remaining = self._idleEnds - now
        self._idleEnds = now + min(self.settings.idleTimeout, remaining + octets / self.settings.minDataRate)

    def _arm(self, now: float) -> None:
        """Have the timer fire by the sooner deadline."""
        if self._stopped:
            return
        due = self._sessionEnds if self._idleEnds is None else min(self._idleEnds, self._sessionEnds)
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(max(0.0, due - now), self._due)
        elif due < self._timer.getTime():
            self._timer.reset(max(0.0, due - now))

    def _due(self) -> None:
        now = self.clock.seconds() + self._ROUNDING
        if now >= self._sessionEnds:
            self._timer = None
            self.expired(reply.SESSION_TOO_LONG)
        elif self._idleEnds is not None and now >= self._idleEnds:
            self._timer = None
            self.expired(reply.IDLE_TIMEOUT)
        else:
            self._arm(now - self._ROUNDING)


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

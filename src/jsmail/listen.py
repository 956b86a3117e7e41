"""Listening on one endpoint, bound early enough for ``twistd --uid`` to drop root after.

Why not :class:`twisted.application.internet.StreamServerEndpointService`: it reports a
port that cannot be bound only to the log, and says nothing to whoever waits for the
port.  Here a TCP or UNIX endpoint that cannot listen makes ``privilegedStartService``
raise :class:`ListeningError` (so twistd stops with the reason rather than run deaf),
and :meth:`ListenerService.whenListening` gives the bound port (tests listen on port 0).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


def listenBacklog() -> int:
    """The kernel's limit on a listen queue (``somaxconn``), at least 1024: Twisted's
    default of 50 drops SYNs when a few hundred clients connect at once."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read().strip()), 1024)
    except (OSError, ValueError):
        return 1024


def withBacklog(description: str) -> str:
    """A TCP endpoint description with a mail server's listen backlog, unless it names
    one itself (``backlog=``)."""
    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6") or "backlog=" in description:
        return description
    return f"{description}:backlog={listenBacklog()}"


#: Twisted's parsers complain as Python functions do; the person who wrote the endpoint
#: is told which option, in the endpoint's own terms.
_PARSER_COMPLAINTS = (
    (re.compile(r"\w[\w.]*\(\) got an unexpected keyword argument '(\w+)'"), "unknown option '{}'"),
    (re.compile(r"\w[\w.]*\(\) got multiple values for argument '(\w+)'"),
     "'{}' given twice (a colon inside a value is written \\:, and the shell needs that quoted)"),
    (re.compile(r"\w[\w.]*\(\) missing \d+ required positional arguments?: '(\w+)'"), "no {} given"),
    (re.compile(r"invalid literal for int\(\) with base 10: ('.*')"), "{} is not a number"),
)


def checkEndpoint(description: str) -> str:
    """A server endpoint description Twisted can build, or ValueError saying what is
    wrong with it (never a traceback: an ``ssl:`` endpoint reads its files here)."""
    if not isinstance(description, str) or not description:
        raise ValueError(f"expected a non-empty string, got {description!r}")
    try:
        serverFromString(None, description)
    except OSError as e:
        raise ValueError(f"bad endpoint {description!r}: cannot read {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError, KeyError, IndexError) as e:
        problem = str(e)
        for pattern, text in _PARSER_COMPLAINTS:
            match = pattern.fullmatch(problem)
            if match:
                problem = text.format(match.group(1))
                break
        raise ValueError(f"bad endpoint {description!r}: {problem}") from None
    return description


def checkListeners(value: Any, implicitTLS: bool = False) -> tuple[str, ...]:
    """Endpoints to listen on; ``"none"`` (or an empty list) turns the listener off.
    An implicit-TLS listener takes plain stream endpoints: jsmail puts TLS on it
    itself, with the certificate it reloads, and an ``ssl:`` endpoint inside would
    wait for a second handshake that never comes."""
    if value in ("none", ["none"], ("none",)):
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    for description in value:
        checkEndpoint(description)
        if implicitTLS and description.split(":", 1)[0].lower() in ("ssl", "tls"):
            raise ValueError(f"{description!r}: give a plain endpoint such as tcp:465; jsmail wraps this listener "
                             "in TLS itself, with server.tls_certificate")
    return tuple(value)


@dataclass(frozen=True)
class Endpoints:
    """Where each kind of listener listens (``config.listen``, from ``[smtp]``): SMTP
    (port 25 rules), submission (RFC 6409: STARTTLS and AUTH) and implicit-TLS
    submission (RFC 8314), as Twisted endpoint descriptions; none turns a kind off."""

    smtp: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    submission: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    smtps: tuple[str, ...] = ("tcp:2465:interface=127.0.0.1",)


class ListeningError(Exception):
    """A listener could not listen: the message names the endpoint and the reason."""


class ListenerService(Service):
    """Listens on one endpoint; :meth:`whenListening` gives the bound port.

    TCP and UNIX endpoints listen at once: if the port is taken, starting raises
    :class:`ListeningError` (so twistd stops with the reason rather than run deaf).
    An endpoint that fails later reports to :meth:`whenListening` and to the log.
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory, kind: str = "smtp",
                 handOff: Callable[[IListeningPort], Callable[[], None]] | None = None) -> None:
        """``handOff``: given the port once it listens, takes over accepting its
        connections (:meth:`jsmail.smtp.handoff.ReceivingProcesses.takeOver`), and
        returns what gives it back before the port stops."""
        self.kind = kind
        self.handOff = handOff
        self._giveBack: Callable[[], None] | None = None
        self.description = withBacklog(description)
        self.endpoint = serverFromString(reactor, self.description)
        self.factory = factory
        self.port: IListeningPort | None = None
        self._result: IListeningPort | Failure | None = None
        self._waiting: list[defer.Deferred[IListeningPort]] = []
        self._asked = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._asked = True
        self.endpoint.listen(self.factory).addBoth(self._listened)
        if isinstance(self._result, Failure):
            raise ListeningError(f"cannot listen for {self.kind} on {self.description}: "
                                 f"{self._result.getErrorMessage()}")

    def _listened(self, result: IListeningPort | Failure) -> None:
        self._result = result
        if isinstance(result, Failure):
            if self._waiting or self.running:
                _log.failure("Cannot listen on {description}", result, description=self.description)
        else:
            self.port = result
            if self.handOff is not None:
                self._giveBack = self.handOff(result)
            host = result.getHost()
            where = (f"{host.host}:{host.port}" if isinstance(host, IPv4Address | IPv6Address)
                     else getattr(host, "name", host))
            where = os.fsdecode(where) if isinstance(where, bytes) else where  # a UNIX socket's path
            _log.info("Listening for {kind} on {where} ({description})", kind=self.kind, where=where,
                      description=self.description)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(result) if isinstance(result, Failure) else d.callback(result)

    def startService(self) -> None:
        if not self._asked:
            self.privilegedStartService()
        super().startService()

    def whenListening(self) -> defer.Deferred[IListeningPort]:
        """Fires with the port once listening, or fails if listening failed."""
        if isinstance(self._result, Failure):
            return defer.fail(self._result)
        if self._result is not None:
            return defer.succeed(self._result)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._giveBack is not None:
            self._giveBack()
            self._giveBack = None
        if self.port is not None:
            port, self.port = self.port, None
            # maybeDeferred's overloads miss a function returning a Deferred or None
            return defer.maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return None

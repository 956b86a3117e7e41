"""SMTP sessions in several processes: the main process accepts, and shares the sessions.

One Python process runs at most one core's worth of SMTP sessions.  With ``[smtp]
processes`` at N above 1, the gateway starts N - 1 receiving processes
(``python -m jsmail.receiver``) and accepts every connection itself.  It counts each
against the connection limits, so ``max_connections`` and ``max_connections_per_client``
hold across all the processes as they do in one (Postfix's smtpd processes ask its
anvil server the same question), and runs its session in the process with the fewest
sessions: itself, or a receiving process it hands the connection to as a file
descriptor (SCM_RIGHTS).  A connection past a limit gets its 421 from the main process.
A receiving process too busy to read its channel (full) gets no more until it reads:
the main process runs those sessions itself, so nothing waits on a stuck process.

The channel between the main process and each receiving process is a SOCK_SEQPACKET
socket pair: one JSON list per packet, so no framing and no partial messages.

- main to receiving: ``["C", id, kind]`` with the connection's descriptor (``kind`` is
  "smtp", "submission" or "smtps"); ``["A", key, time]``, a failed AUTH another
  process counted, so each process's count of failures (:class:`SharedFailures`) sees
  them all.  End of file: stop.
- receiving to main: ``["ready"]`` once it can take connections; ``["R", id]`` when
  that connection ended (its slot is free again); ``["Q", queueId]`` for a message it
  queued (the main process tells the delivery process); ``["A", key, time]`` for a
  failed AUTH.

Each process logs through the main one, as the delivery process does (``LogLines``).
A receiving process that dies is started again; its connections' slots are freed and
what it left in the queue's ``tmp/`` is removed (nothing there was acknowledged).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import socket
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReadDescriptor, IWriteDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail._child import spawnChild
from jsmail._process import LogLines, compactJSON
from jsmail._threads import RunInThread
from jsmail.config import Config
from jsmail.datadir import removeFromTmp
from jsmail.reply import Reply
from jsmail.smtp.limits import Refuse
from jsmail.smtp.listener import Listener
from jsmail.smtp.sasl import FailureCounter
from jsmail.smtp.server import ESMTPServer, ESMTPServerFactory

_log = Logger()

CHANNEL_FD = 4  # its end of the channel
RESTART_DELAY = 1.0
STOP_TIMEOUT = 30.0
ACCEPTS_PER_READ = 64  # connections taken per wake-up, so one busy port cannot starve the rest
_QUEUE_ID = re.compile(r"[0-9A-F]{21}", re.ASCII)  # newQueueId's: a line to the delivery process, and a file name
PACKET = 4096  # no message is longer: a key is an address or a user name of at most 255 octets


def packet(*message: Any) -> bytes:
    return compactJSON(message).encode("utf-8")


def _message(data: bytes) -> list[Any] | None:
    """A packet's message, or None for one that is not a non-empty JSON list."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, list) and message else None


class _RefuseFactory(Factory):
    noisy = False

    def __init__(self, refusal: Reply) -> None:
        self.refusal = refusal

    def buildProtocol(self, addr: Any) -> Refuse:
        return Refuse(self.refusal)


# -- the main process ---------------------------------------------------------------------


@implementer(IReadDescriptor)
class _Acceptor:
    """Takes the connections of one listening port in place of Twisted's own reading
    of it, and gives each to ``place``, which owns it from then on."""

    def __init__(self, port: Any, place: Callable[[socket.socket, Any], None]) -> None:
        self.socket: socket.socket = port.socket
        self.place = place

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_READ):
            try:
                connection, address = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    _log.error("Cannot accept a connection: {error}", error=e.strerror)
                return  # ECONNABORTED and the like: that connection is gone
            try:
                self.place(connection, address)
            except Exception:  # one connection's trouble must not stop the port (the reactor would drop it)
                _log.failure("Cannot place a connection from {address}", address=address)

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "jsmail-accept"


class _Port:
    """A listening port whose connections go to the receiving processes."""

    def __init__(self, kind: str, factory: ESMTPServerFactory, tls: Any, acceptor: _Acceptor) -> None:
        self.kind = kind
        self.factory = factory  # counts the connections against the listener's limits
        self.tls = tls  # the certificate of an implicit-TLS listener, whose refusals go inside TLS
        self.acceptor = acceptor


class _Receiver(protocol.ProcessProtocol):
    """One receiving process, as the main process sees it."""

    def __init__(self, parent: ReceivingProcesses, number: int, channel: socket.socket) -> None:
        self.parent = parent
        self.number = number
        self.channel = channel
        self.log = LogLines(f"receiving process {number}")
        self.ready = False
        self.relayFailed = False  # the last failed AUTH could not be told to it
        self.pid: int | None = None
        self.connections: dict[int, tuple[ESMTPServerFactory, str]] = {}
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.end = ChannelEnd(channel, lambda message, fds: parent.heard(message, fds, self), lambda: None)

    def outReceived(self, data: bytes) -> None:
        self.log.received(data)

    def processEnded(self, reason: Failure) -> None:
        self.parent.ended(self, reason)
        self.ended.callback(None)


@implementer(IReadDescriptor, IWriteDescriptor)
class ChannelEnd:
    """One end of a channel in the reactor (non-blocking): each packet read goes to
    ``heard(message, fds)``, end of file to ``heard(None, [])``; ``writable()`` is
    called when the reactor is asked to watch for room to write (one object for both,
    as the reactor keeps one per descriptor)."""

    def __init__(self, channel: socket.socket, heard: Callable[[list[Any] | None, list[int]], None],
                 writable: Callable[[], None]) -> None:
        channel.setblocking(False)
        self.channel = channel
        self.heard = heard
        self.writable = writable

    def fileno(self) -> int:
        return self.channel.fileno()

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_READ):
            try:
                data, fds, _flags, _address = socket.recv_fds(self.channel, PACKET, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self.heard(None, [])
                return
            message = _message(data)
            if message is None:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                self.heard(message, fds)
            except Exception:  # one message's trouble must not stop the channel (the reactor would drop it)
                _log.failure("Cannot act on {message!r} from a process channel", message=message[:3])

    def doWrite(self) -> None:
        self.writable()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "jsmail-channel"


class ReceivingProcesses(Service):
    """The main process's side: keeps ``config.smtp.processes`` receiving processes
    running and hands them the connections of the ports given to :meth:`takeOver`."""

    def __init__(self, config: Config, reactor: Any, notify: Callable[[str], None], runInThread: RunInThread,
                 tmpDir: str, failures: SharedFailures) -> None:
        """``notify(queueId)`` tells the delivery process of a message a receiving
        process queued; ``tmpDir`` is the queue's ``tmp/``, cleaned after a crash;
        ``failures`` is this process's count of failed logins (its ``tell`` is
        :meth:`failedAuth`)."""
        self.config = config
        self.reactor = reactor
        self.notify = notify
        self.runInThread = runInThread
        self.tmpDir = tmpDir
        self.failures = failures
        self.receivers: dict[int, _Receiver] = {}
        self.ports: list[_Port] = []
        #: The sessions this process runs itself, as the receiving processes' are counted.
        self.local: dict[int, tuple[ESMTPServerFactory, str]] = {}
        self._ids = itertools.count(1)
        self._restarts: dict[int, Any] = {}

    # -- ports

    def takeOver(self, kind: str, factory: ESMTPServerFactory, tls: Any, port: IListeningPort) -> Callable[[], None]:
        """Take the connections of ``port`` (listening, and read by nobody yet); the
        callable returned gives it back before the port stops listening."""
        port.stopReading()  # type: ignore[attr-defined]  # a tcp.Port or unix.Port: a FileDescriptor
        handled = _Port(kind, factory, tls, _Acceptor(port, lambda c, a: self.place(handled, c, a)))
        self.ports.append(handled)
        self.reactor.addReader(handled.acceptor)

        def giveBack() -> None:
            if handled in self.ports:
                self.ports.remove(handled)
                self.reactor.removeReader(handled.acceptor)

        return giveBack

    def place(self, port: _Port, connection: socket.socket, address: Any) -> None:
        """Count ``connection`` against its listener's limits, and run its session in
        the process with the fewest (past a limit it gets the 421 here)."""
        try:
            host = address[0] if isinstance(address, tuple) else "unknown"
            key, refusal = port.factory.admit(host)
            connectionId = next(self._ids)
            if refusal is None and self._handOver(port, connection, connectionId, key):
                return
            factory: IProtocolFactory
            if refusal is None:
                self.local[connectionId] = (port.factory, key)
                factory = HandedIn(port.factory.listener, connectionId, self._localEnded)
            else:
                factory = _RefuseFactory(refusal)
            if port.tls is not None:
                factory = TLSMemoryBIOFactory(port.tls, False, factory)
            try:
                connection.setblocking(False)
                self.reactor.adoptStreamConnection(connection.fileno(), connection.family, factory)
            except OSError:  # the client is gone already (ENOTCONN): no session began
                if refusal is None:
                    self._localEnded(connectionId)
        finally:
            connection.close()  # a receiving process or the reactor has its own descriptor now

    def _handOver(self, port: _Port, connection: socket.socket, connectionId: int, key: str) -> bool:
        """Give ``connection`` to the ready receiving process with the fewest sessions,
        if it has fewer than this one; False to keep it here (also when every channel
        is full: a busy or stuck process reads it no sooner for waiting)."""
        handOver = packet("C", connectionId, port.kind)
        for receiver in list(self.receivers.values()):
            # Read the sessions it has ended first: counts that lag behind a busy gateway
            # would send it ever more sessions of its own, and slow it down further.
            if receiver.ready:
                receiver.end.doRead()
        ready = sorted((r for r in self.receivers.values() if r.ready and len(r.connections) < len(self.local)),
                       key=lambda r: len(r.connections))
        for receiver in ready:
            try:
                socket.send_fds(receiver.channel, [handOver], [connection.fileno()])
            except OSError:
                continue  # its channel is full or closed: the next one
            receiver.connections[connectionId] = (port.factory, key)
            return True
        return False

    def _localEnded(self, connectionId: int) -> None:
        counted = self.local.pop(connectionId, None)
        if counted is not None:
            counted[0].released(counted[1])

    def failedAuth(self, key: str, now: float) -> None:
        """A failed login in this process: the receiving processes count it too."""
        self._relay(packet("A", key, now), None)

    def _relay(self, message: bytes, source: _Receiver | None) -> None:
        for receiver in self.receivers.values():
            if receiver is not source and receiver.ready:
                try:
                    receiver.channel.send(message)
                except OSError:
                    if not receiver.relayFailed:  # once until one gets through, however many guesses come
                        _log.warn("Cannot tell receiving process {number} of a failed AUTH (its channel is full)",
                                  number=receiver.number)
                    receiver.relayFailed = True
                else:
                    receiver.relayFailed = False

    # -- receiving processes

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.config.smtp.processes):  # this process is one of them
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        receiver = _Receiver(self, number, ours)
        try:
            transport = spawnChild(self.reactor, receiver, "jsmail.receiver", self.config,
                                   descriptors={CHANNEL_FD: theirs.fileno()})
        except Exception:
            ours.close()
            raise
        finally:
            theirs.close()
        receiver.pid = transport.pid  # the transport forgets it once the process has ended
        self.receivers[number] = receiver
        self.reactor.addReader(receiver.end)

    def heard(self, message: list[Any] | None, fds: list[int], receiver: _Receiver) -> None:
        """A message from a receiving process (None: its channel ended)."""
        for fd in fds:  # nothing it sends carries a descriptor
            os.close(fd)
        if message is None:
            self._closeChannel(receiver)
            return
        kind = message[0]
        if kind == "R" and len(message) == 2 and isinstance(message[1], int):
            counted = receiver.connections.pop(message[1], None)
            if counted is not None:
                counted[0].released(counted[1])
        elif kind == "Q" and len(message) == 2 and isinstance(message[1], str) and _QUEUE_ID.fullmatch(message[1]):
            self.notify(message[1])
        elif kind == "A" and len(message) == 3 and isinstance(message[1], str) \
                and isinstance(message[2], (int, float)):
            self.failures.heard(message[1], float(message[2]))
            self._relay(packet(*message), receiver)
        elif kind == "ready":
            receiver.ready = True

    def _closeChannel(self, receiver: _Receiver) -> None:
        if receiver.channel.fileno() != -1:
            self.reactor.removeReader(receiver.end)
            self.reactor.removeWriter(receiver.end)
            receiver.channel.close()
        receiver.ready = False

    def ended(self, receiver: _Receiver, reason: Failure) -> None:
        """A receiving process ended: its connections ended with it."""
        self._closeChannel(receiver)
        for factory, key in receiver.connections.values():
            factory.released(key)
        receiver.connections.clear()
        if self.receivers.get(receiver.number) is receiver:
            del self.receivers[receiver.number]
        if receiver.pid is not None:
            self.runInThread(_removeLeftovers, self.tmpDir, receiver.pid).addErrback(
                lambda f: _log.failure("Cannot clean the queue's tmp/ after a receiving process", f))
        if self.running:
            _log.error("Receiving process {number} ended ({reason}); starting it again in {delay:g} s",
                       number=receiver.number, reason=reason.getErrorMessage(), delay=RESTART_DELAY)
            self._restarts[receiver.number] = self.reactor.callLater(RESTART_DELAY, self._spawn, receiver.number)

    def reload(self) -> None:
        """Pass SIGHUP on: each process reads its certificate and lists again."""
        for receiver in self.receivers.values():
            if receiver.transport is not None:
                receiver.transport.signalProcess("HUP")

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        waiting = []
        for receiver in list(self.receivers.values()):
            if receiver.transport is None:
                continue
            self._closeChannel(receiver)  # end of file: it stops
            waiting.append(self._killLate(receiver))
        return defer.DeferredList(waiting) if waiting else None

    def _killLate(self, receiver: _Receiver) -> defer.Deferred[None]:
        """Fires when ``receiver`` has ended; kills it if it has not within ``STOP_TIMEOUT``."""
        assert receiver.transport is not None
        timer = self.reactor.callLater(STOP_TIMEOUT, receiver.transport.signalProcess, "KILL")

        def ended(_: None) -> None:
            if timer.active():
                timer.cancel()

        return receiver.ended.addCallback(ended)


def _removeLeftovers(tmpDir: str, pid: int) -> None:
    """Remove the files a receiving process with ``pid`` left in ``tmp/``: spare files
    and messages never acknowledged (their names carry the pid, see ``newQueueId``)."""
    tag = f"{pid & 0xFFFFF:05X}"
    removeFromTmp(tmpDir, lambda name: name.removeprefix("spare.")[13:18] == tag)


class SharedFailures(FailureCounter):
    """A receiving process's count of failed logins: what it counts is told to the
    others too (through the main process), and what they count is :meth:`heard`, so a
    guesser gains nothing from being spread over several processes."""

    def __init__(self, window: float, maxKeys: int, tell: Callable[[str, float], None]) -> None:
        super().__init__(window, maxKeys)
        self.tell = tell

    def add(self, key: str, now: float) -> None:
        super().add(key, now)
        self.tell(key, now)

    def heard(self, key: str, now: float) -> None:
        super().add(key, now)


class HandedIn(Factory):
    """Sessions of one listener on connections handed over: each tells the main
    process when it ends, so that its slot is free again."""

    noisy = False

    def __init__(self, listener: Listener, connectionId: int, released: Callable[[int], None]) -> None:
        self.listener = listener
        self.connectionId = connectionId
        self.released = released

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        session = _HandedInServer(self.listener)
        session.factory = self
        return session


class _HandedInServer(ESMTPServer):
    factory: HandedIn

    def connectionLost(self, reason: Failure | None = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.released(self.factory.connectionId)


def handedInFactories(listeners: dict[str, Listener], tls: Any,
                      released: Callable[[int], None]) -> dict[str, Callable[[int], IProtocolFactory]]:
    """For each kind of listener, what makes the factory of a connection handed over
    (inside TLS for an implicit-TLS listener)."""

    def maker(listener: Listener) -> Callable[[int], IProtocolFactory]:
        if listener.implicitTLS:
            return lambda connectionId: TLSMemoryBIOFactory(tls, False, HandedIn(listener, connectionId, released))
        return lambda connectionId: HandedIn(listener, connectionId, released)

    return {kind: maker(listener) for kind, listener in listeners.items()}

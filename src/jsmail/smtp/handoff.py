"""SMTP sessions in several processes: the main process accepts, receiving processes talk.

One Python process runs at most one core's worth of SMTP sessions.  With ``[smtp]
processes`` above 1 the gateway starts that many receiving processes
(``python -m jsmail.receiver``) and accepts every connection itself.  It counts each
against the connection limits, so ``max_connections`` and ``max_connections_per_client``
hold across all the processes as they do in one (Postfix's smtpd processes ask its
anvil server the same question), and hands it over as a file descriptor (SCM_RIGHTS)
to the ready process with the fewest connections.  A connection past a limit gets its
421 from the main process and is never handed over.

The channel between the main process and each receiving process is a SOCK_SEQPACKET
socket pair: one JSON list per packet, so no framing and no partial messages.

- main to receiving: ``["C", id, kind]`` with the connection's descriptor (``kind`` is
  "smtp", "submission" or "smtps"); ``["A", key, time]``, a failed AUTH another
  process counted, so each process's count of failures (:class:`FailureCounter`) sees
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
import socket
import sys
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import reply
from jsmail._disk import unlinkQuietly
from jsmail._process import LogLines
from jsmail._threads import RunInThread
from jsmail.config import Config, toJSON
from jsmail.reply import Reply
from jsmail.smtp.limits import Refuse
from jsmail.smtp.server import ESMTPServerFactory

_log = Logger()

CONFIG_FD = 3  # where a receiving process reads its configuration
CHANNEL_FD = 4  # its end of the channel
RESTART_DELAY = 1.0
STOP_TIMEOUT = 30.0
ACCEPTS_PER_READ = 64  # connections taken per wake-up, so one busy port cannot starve the rest
PACKET = 4096  # no message is longer: a key is an address or a user name of at most 255 octets


def packet(*message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


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
    of it, and gives each to :meth:`ReceivingProcesses.place`."""

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
            finally:
                connection.close()

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
        self.connections: dict[int, tuple[ESMTPServerFactory, str]] = {}
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reader = ChannelReader(channel, self.parent.heard, self)

    def outReceived(self, data: bytes) -> None:
        self.log.received(data)

    def processEnded(self, reason: Failure) -> None:
        self.parent.ended(self, reason)
        self.ended.callback(None)


@implementer(IReadDescriptor)
class ChannelReader:
    """Reads the packets of a channel end (non-blocking) and gives each message to
    ``heard(message, fds, context)``; end of file gives ``heard(None, [], context)``."""

    def __init__(self, channel: socket.socket, heard: Callable[[list[Any] | None, list[int], Any], None],
                 context: Any) -> None:
        self.channel = channel
        self.heard = heard
        self.context = context

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
                self.heard(None, [], self.context)
                return
            message = _message(data)
            if message is None:
                for fd in fds:
                    os.close(fd)
                continue
            self.heard(message, fds, self.context)

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "jsmail-channel"


class ReceivingProcesses(Service):
    """The main process's side: keeps ``config.smtp.processes`` receiving processes
    running and hands them the connections of the ports given to :meth:`takeOver`."""

    def __init__(self, config: Config, reactor: Any, notify: Callable[[str], None], runInThread: RunInThread,
                 tmpDir: str) -> None:
        """``notify(queueId)`` tells the delivery process of a message a receiving
        process queued; ``tmpDir`` is the queue's ``tmp/``, cleaned after a crash."""
        self.config = config
        self.reactor = reactor
        self.notify = notify
        self.runInThread = runInThread
        self.tmpDir = tmpDir
        self.receivers: dict[int, _Receiver] = {}
        self.ports: list[_Port] = []
        self._ids = itertools.count(1)
        self._reading = False
        self._restarts: dict[int, Any] = {}

    # -- ports

    def takeOver(self, kind: str, factory: ESMTPServerFactory, tls: Any, port: IListeningPort) -> Callable[[], None]:
        """Take the connections of ``port`` (listening, and read by nobody yet); the
        callable returned gives it back before the port stops listening."""
        port.stopReading()  # type: ignore[attr-defined]  # a tcp.Port or unix.Port: a FileDescriptor
        handled = _Port(kind, factory, tls, _Acceptor(port, lambda c, a: self.place(handled, c, a)))
        self.ports.append(handled)
        if self._reading:
            self.reactor.addReader(handled.acceptor)

        def giveBack() -> None:
            if handled in self.ports:
                self.ports.remove(handled)
                self.reactor.removeReader(handled.acceptor)

        return giveBack

    def _read(self, reading: bool) -> None:
        """Accept while some receiving process is ready; else leave connections in the
        kernel's listen queue until one is (at start, or after a crash)."""
        if reading == self._reading:
            return
        self._reading = reading
        for port in self.ports:
            (self.reactor.addReader if reading else self.reactor.removeReader)(port.acceptor)

    def place(self, port: _Port, connection: socket.socket, address: Any) -> None:
        """Count ``connection`` against its listener's limits and hand it to the ready
        process with the fewest connections (refused with 421 past a limit, or when
        every channel is full)."""
        host = address[0] if isinstance(address, tuple) else "unknown"
        key, refusal = port.factory.admit(host)
        if refusal is None:
            connectionId = next(self._ids)
            handOver = packet("C", connectionId, port.kind)
            for receiver in sorted((r for r in self.receivers.values() if r.ready), key=lambda r: len(r.connections)):
                try:
                    socket.send_fds(receiver.channel, [handOver], [connection.fileno()])
                except OSError:
                    continue  # its channel is full (a stuck process) or closed: the next one
                receiver.connections[connectionId] = (port.factory, key)
                return
            port.factory.released(key)
            refusal = reply.RECEIVERS_BUSY
        connection.setblocking(False)
        factory: IProtocolFactory = _RefuseFactory(refusal)
        if port.tls is not None:
            factory = TLSMemoryBIOFactory(port.tls, False, factory)
        self.reactor.adoptStreamConnection(connection.fileno(), connection.family, factory)

    # -- receiving processes

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.config.smtp.processes + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        receiver = _Receiver(self, number, ours)
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        argv = [sys.executable, "-m", "jsmail.receiver"]
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: 2, CONFIG_FD: "w", CHANNEL_FD: theirs.fileno()}
        try:
            transport = self.reactor.spawnProcess(receiver, sys.executable, argv, env=environment,
                                                  childFDs=childFDs)
        except Exception:
            ours.close()
            raise
        finally:
            theirs.close()
        transport.writeToChild(CONFIG_FD, toJSON(self.config).encode("utf-8"))
        transport.closeChildFD(CONFIG_FD)
        self.receivers[number] = receiver
        self.reactor.addReader(receiver.reader)

    def heard(self, message: list[Any] | None, fds: list[int], receiver: _Receiver) -> None:
        """A message from a receiving process (None: its channel ended)."""
        for fd in fds:  # nothing it sends carries a descriptor
            os.close(fd)
        if message is None:
            self._closeChannel(receiver)
            return
        kind = message[0]
        if kind == "R" and len(message) == 2:
            counted = receiver.connections.pop(message[1], None)
            if counted is not None:
                counted[0].released(counted[1])
        elif kind == "Q" and len(message) == 2 and isinstance(message[1], str):
            self.notify(message[1])
        elif kind == "A" and len(message) == 3:
            relayed = packet(*message)
            for other in self.receivers.values():
                if other is not receiver and other.ready:
                    try:
                        other.channel.send(relayed)
                    except OSError:
                        _log.warn("Cannot tell receiving process {number} of a failed AUTH (its channel is full)",
                                  number=other.number)
        elif kind == "ready":
            receiver.ready = True
            self._read(True)

    def _closeChannel(self, receiver: _Receiver) -> None:
        if receiver.channel.fileno() != -1:
            self.reactor.removeReader(receiver.reader)
            receiver.channel.close()
        receiver.ready = False
        self._read(any(r.ready for r in self.receivers.values()))

    def ended(self, receiver: _Receiver, reason: Failure) -> None:
        """A receiving process ended: its connections ended with it."""
        self._closeChannel(receiver)
        for factory, key in receiver.connections.values():
            factory.released(key)
        receiver.connections.clear()
        if self.receivers.get(receiver.number) is receiver:
            del self.receivers[receiver.number]
        pid = getattr(receiver.transport, "pid", None)
        if pid is not None:
            self.runInThread(_removeLeftovers, self.tmpDir, pid).addErrback(
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
        self._read(False)
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
    for name in os.listdir(tmpDir):
        if name.removeprefix("spare.")[13:18] == tag:
            unlinkQuietly(os.path.join(tmpDir, name))

"""The local spawner: the one part of jsmail that stays root (qmail-lspawn's job).

The gateway starts it as root before it drops its own privileges
(:class:`Spawner`, a service of the gateway), as ``python -I -S`` with only
``PATH`` and ``LANG`` in its environment, from ``/``.  It reads its settings on
stdin, writes its log as JSON lines on stdout, and takes connections over the
control socket on descriptor 3: each time the gateway starts a delivery process it
sends the spawner one end of a new socket pair (``SCM_RIGHTS``).  The spawner never
opens a file by name, never reads the queue and never runs a program of anyone's:
for each request (:mod:`jsmail.local.spawn`) it checks the user against the system's
password database, then starts one process (:mod:`jsmail.local.asuser`) that sets
the user's groups, gid and uid before doing anything else, gives it the message
descriptor as its stdin, waits for it (killing it at a deadline) and answers with its
exit status and output.  When the gateway closes the control socket, the spawner
exits once its connections have closed and its processes have ended.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pwd
import socket
import stat
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from jsmail._process import LogLines, pythonModule
from jsmail.local.settings import LocalSettings
from jsmail.local.spawn import MAX_ERRORS, MAX_OUTPUT, MAX_REQUEST, BadRequest, Request, isUnder, readRequest

_log = Logger()

CONTROL_FD = 3
MAX_CONNECTIONS = 8
GRACE = 60.0  # seconds past its time-out before a user's process is killed


@dataclass(frozen=True)
class SpawnerSettings:
    """What the gateway tells the spawner at start (the only settings it trusts)."""

    usersDir: str
    minimumUid: int
    maximumTimeout: float
    concurrency: int

    @classmethod
    def of(cls, local: LocalSettings) -> SpawnerSettings:
        return cls(local.usersDir, local.minimumUid, local.programTimeout, local.concurrency)


class Spawner(Service):
    """The gateway's side: starts the spawner while still root, and hands each new
    delivery process a connection to it (:meth:`connection`)."""

    def __init__(self, settings: SpawnerSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self._control: socket.socket | None = None
        self._process: _SpawnerProcess | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if os.geteuid() != 0:
            return  # nobody to deliver as: mailboxes that need it fail, with the reason
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._process = _SpawnerProcess()
        environment = {name: os.environ[name] for name in ("PATH", "LANG") if name in os.environ}
        argv = pythonModule("jsmail.local.spawner")
        transport = self.reactor.spawnProcess(self._process, argv[0], argv, env=environment, path="/",
                                              childFDs={0: "w", 1: "r", 2: 2, CONTROL_FD: theirs.fileno()})
        theirs.close()
        transport.writeToChild(0, json.dumps(asdict(self.settings)).encode("ascii"))
        transport.closeChildFD(0)
        self._control = ours

    @property
    def available(self) -> bool:
        """Whether the spawner process runs (it was started, as root, and has not ended)."""
        return self._control is not None and self._process is not None and not self._process.ended.called

    def connection(self) -> socket.socket | None:
        """A new connection to the spawner, for a delivery process; None when it is
        not running (jsmail was not started as root, or it has ended)."""
        if not self.available:
            return None
        assert self._control is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self._control, [b"c"], [theirs.fileno()])
        except OSError as e:
            _log.error("Cannot reach the local spawner: {error}", error=e)
            ours.close()
            return None
        finally:
            theirs.close()
        return ours

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._control is not None:
            self._control.close()  # the spawner ends once its deliveries have
            self._control = None
        if self._process is None or self._process.ended.called:
            return None
        return self._process.ended


class _SpawnerProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.log = LogLines("local spawner")
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.received(data)

    def processEnded(self, reason: Any) -> None:
        _log.info("The local spawner ended ({reason})", reason=reason.getErrorMessage())
        self.ended.callback(None)


# -- the spawner process itself: root from here on --


@dataclass(frozen=True)
class Account:
    """Whom a request is done as, from the password database."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def accountFor(request: Request, settings: SpawnerSettings) -> Account:
    """Check ``request`` against the password database and the settings (blocking:
    it asks NSS); raises :class:`BadRequest`.  This is the whole of the spawner's
    judgement: never root, never a uid below the minimum, only the user's own home or
    one under the users directory, and the uid the delivery process saw."""
    try:
        entry = pwd.getpwnam(request.user)
    except KeyError:
        raise BadRequest(f"no such user {request.user!r}") from None
    if entry.pw_uid == 0:
        raise BadRequest(f"{request.user} is root: never delivered to as itself")
    if entry.pw_uid < settings.minimumUid:
        raise BadRequest(f"{request.user} has uid {entry.pw_uid}, below the minimum_uid {settings.minimumUid}")
    if entry.pw_uid != request.uid:
        raise BadRequest(f"{request.user} has uid {entry.pw_uid}, not {request.uid}")
    if request.home != os.path.normpath(entry.pw_dir) and not (settings.usersDir
                                                               and isUnder(request.home, settings.usersDir)):
        raise BadRequest(f"{request.home} is neither {request.user}'s home nor under the users directory")
    try:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    except OSError:
        groups = (entry.pw_gid,)
    return Account(entry.pw_uid, entry.pw_gid, groups)


def checkMessageDescriptor(descriptor: int) -> None:
    """The message must be a regular file open for reading; raises :class:`BadRequest`."""
    st = os.fstat(descriptor)
    flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    if not stat.S_ISREG(st.st_mode) or flags & getattr(os, "O_PATH", 0) or flags & os.O_ACCMODE == os.O_WRONLY:
        raise BadRequest("the message descriptor is not a regular file open for reading")


@implementer(IFileDescriptorReceiver)
class _Control(protocol.Protocol):
    """Descriptor 3: each descriptor the gateway sends is a new connection."""

    def __init__(self, spawner: _Serving) -> None:
        self.spawner = spawner

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.spawner.adopt(descriptor)

    def connectionLost(self, reason: Any = None) -> None:
        self.spawner.controlClosed()


@implementer(IFileDescriptorReceiver)
class _Connection(Int32StringReceiver):
    """One delivery process's requests: one descriptor with each frame."""

    MAX_LENGTH = MAX_REQUEST

    def __init__(self, spawner: _Serving) -> None:
        self.spawner = spawner
        self.descriptors: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        # One rides with each request, on the first octet of what Twisted sends after
        # it, so a delivery process with several requests under way sends their
        # descriptors ahead of their frames; more than it may have under way at once
        # (the local concurrency) is no request.
        self.descriptors.append(descriptor)
        if len(self.descriptors) > self.spawner.settings.concurrency and self.transport is not None:
            self.transport.loseConnection()

    def stringReceived(self, frame: bytes) -> None:
        descriptor = self.descriptors.pop(0) if self.descriptors else None
        requestId = _idOf(frame)
        try:
            if descriptor is None:
                raise BadRequest("no message descriptor came with the request")
            request = readRequest(frame)
            checkMessageDescriptor(descriptor)
        except (BadRequest, OSError) as e:
            if descriptor is not None:
                os.close(descriptor)
            _log.warn("Refused a request: {error}", error=e)
            self.answer({"id": requestId, "refused": str(e)})
            return
        self.spawner.deliver(self, request, descriptor)

    def answer(self, fields: dict[str, Any]) -> None:
        if self.transport is not None and self.connected:
            self.sendString(json.dumps(fields).encode("ascii"))

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        for descriptor in self.descriptors:
            os.close(descriptor)
        self.descriptors.clear()
        self.spawner.connectionClosed(self)


def _idOf(frame: bytes) -> int | None:
    """The id of a request, if it has one, to answer even one that is refused."""
    try:
        requestId = json.loads(frame).get("id")
    except (ValueError, AttributeError):
        return None
    return requestId if type(requestId) is int else None


class _AsUser(protocol.ProcessProtocol):
    """One process running as a user: its result on stdout, its errors on stderr."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.writeToChild(3, self.request.encode())
        self.transport.closeChildFD(3)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        kept = self.output.get(childFD)
        limit = MAX_OUTPUT if childFD == 1 else MAX_ERRORS
        if kept is not None and len(kept) < limit:
            kept += data[: limit - len(kept)]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


class _Serving:
    """The spawner's state: its connections and the processes it runs."""

    def __init__(self, reactor: Any, settings: SpawnerSettings, runInThread: Any) -> None:
        self.reactor = reactor
        self.settings = settings
        self.runInThread = runInThread
        self.connections: set[_Connection] = set()
        self.running = 0
        self.controlOpen = True

    def adopt(self, descriptor: int) -> None:
        try:
            if not stat.S_ISSOCK(os.fstat(descriptor).st_mode) or len(self.connections) >= MAX_CONNECTIONS:
                raise OSError("not a socket, or too many connections")
            os.set_blocking(descriptor, False)
            os.set_inheritable(descriptor, False)
            connection = _Connection(self)
            self.reactor.adoptStreamConnection(descriptor, socket.AF_UNIX, _Made(connection))
            self.connections.add(connection)
        except OSError as e:
            _log.warn("Refused a connection: {error}", error=e)
        finally:
            os.close(descriptor)

    @defer.inlineCallbacks
    def deliver(self, connection: _Connection, request: Request, descriptor: int) -> Any:
        try:
            if self.running >= self.settings.concurrency:
                raise BadRequest(f"busy: {self.running} deliveries already running")
            self.running += 1
            try:
                account = yield self.runInThread(accountFor, request, self.settings)
            except BaseException:
                self.running -= 1
                raise
        except BadRequest as e:
            os.close(descriptor)
            _log.warn("Refused to deliver as {user}: {error}", user=request.user, error=e)
            connection.answer({"id": request.id, "refused": str(e)})
            return
        try:
            request = replace(request, timeout=min(request.timeout, self.settings.maximumTimeout))
            child = _AsUser(request)
            groups = ",".join(str(g) for g in account.groups)
            argv = pythonModule("jsmail.local.asuser", str(account.uid), str(account.gid), groups)
            environment = {name: os.environ[name] for name in ("PATH", "LANG") if name in os.environ}
            try:
                process = self.reactor.spawnProcess(child, argv[0], argv, env=environment, path="/",
                                                    childFDs={0: descriptor, 1: "r", 2: "r", 3: "w"})
            finally:
                os.close(descriptor)
            timer = self.reactor.callLater(request.timeout + GRACE, _kill, process)
            code = yield child.ended
            if timer.active():
                timer.cancel()
            connection.answer({"id": request.id, "code": code,
                               "output": base64.b64encode(bytes(child.output[1])).decode("ascii"),
                               "errors": base64.b64encode(bytes(child.output[2])).decode("ascii")})
        except OSError as e:
            _log.error("Cannot start a delivery as {user}: {error}", user=request.user, error=e)
            connection.answer({"id": request.id, "refused": f"cannot start: {e}"})
        finally:
            self.running -= 1
            self._maybeExit()

    def connectionClosed(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        self._maybeExit()

    def controlClosed(self) -> None:
        self.controlOpen = False
        self._maybeExit()

    def _maybeExit(self) -> None:
        if not self.controlOpen and not self.connections and not self.running and self.reactor.running:
            self.reactor.stop()


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass


class _Made(protocol.Factory):
    def __init__(self, made: protocol.Protocol) -> None:
        self.made = made

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.made


def main(argv: list[str]) -> None:
    """The spawner process: settings on stdin, log on stdout, control socket on 3."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from jsmail._threads import reactorThreads

    os.umask(0o077)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout, recordSeparator="")], redirectStandardIO=False)
    settings = SpawnerSettings(**json.loads(sys.stdin.buffer.read()))
    serving = _Serving(reactor, settings, reactorThreads(reactor))
    os.set_blocking(CONTROL_FD, False)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, _Made(_Control(serving)))  # type: ignore[attr-defined]
    os.close(CONTROL_FD)
    reactor.run()

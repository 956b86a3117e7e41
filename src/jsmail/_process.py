"""The one way jsmail runs a child program: ``.qmail`` program deliveries, the policy
programs (recipient checks and content filters), checkpassword and the QMAILQUEUE
program.

:func:`run` gives the program data on descriptors of its choice, open files as other
descriptors, reads what it writes on others (at most ``outputLimit`` octets each; the
rest is read and dropped, so the program never blocks on a full pipe), and fires with
a :class:`Finished`.  A program with a ``timeout`` runs in a session of its own; at
the time-out its whole process group is killed (``sleep 60 & sleep 60`` leaves no
``sleep`` behind) and our ends of its pipes are closed, so that a descendant that
left the group and still holds them cannot keep the run from ending.

The environment is the caller's to build; :func:`allowedEnvironment` starts one from
``PATH``, ``HOME`` and ``LANG`` only, never from the whole of ``os.environ``, which may
hold secrets meant for jsmail alone.

jsmail's own processes that start as root (the local spawner and the processes it
starts for users) are run by :func:`pythonModule`: isolated from the environment, the
working directory and the user's site directory, with this process's ``sys.path``
given on the command line.  :class:`LogLines` publishes the log events such a process
writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from typing import IO, Any, Iterable, Mapping, Sequence

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IProcessTransport
from twisted.logger import ILogObserver, Logger, LogLevel, eventAsJSON, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

ALLOWED_ENVIRONMENT = ("PATH", "HOME", "LANG")
OUTPUT_LIMIT = 64 * 1024

_PYTHON_SETSID = [  # what util-linux's setsid(1) does, where it is missing
    sys.executable, "-I", "-S", "-c",
    "import os, sys\nos.setsid()\ntry:\n    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n    sys.stderr.write(f'{sys.argv[1]}: {e.strerror}\\n')\n    os._exit(127)\n",
]
_SETSID = shutil.which("setsid")
_NEW_SESSION = [_SETSID] if _SETSID else _PYTHON_SETSID  # argv prefix: run the rest in a session of its own


#: What ``python -I -S -c`` runs for :func:`pythonModule`: argv is the path (JSON), the
#: module, then the module's arguments; ``main(arguments)`` is called.  Nothing but the
#: interpreter's own modules is imported before the path is set.
_BOOT = (
    "import json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "import importlib\n"
    "importlib.import_module(sys.argv[2]).main(sys.argv[3:])\n"
)


def pythonModule(module: str, *arguments: str) -> list[str]:
    """The argv that runs ``module.main(arguments)`` in a new interpreter that reads
    nothing from the environment, the working directory or any user's site
    directory (``-I -S``), with this process's ``sys.path``: what a process started as
    root must be."""
    return [sys.executable, "-I", "-S", "-c", _BOOT, json.dumps([p for p in sys.path if p]), module, *arguments]


_LEVELS = {level.name: level for level in LogLevel.iterconstants()}
_LEVEL_NAMES = {level: level.name for level in LogLevel.iterconstants()}
_UNSENT = ("log_logger", "log_source")  # objects of the child's, which the parent has no use for
_REQUIRED = frozenset(("log_level", "log_namespace", "log_format", "log_time"))
#: JSON with no spaces, by an encoder made once (``json.dumps`` with options makes one
#: each call): the child processes' log events, and the hand-over channel's packets.
compactJSON = json.JSONEncoder(separators=(",", ":")).encode


def eventLine(event: dict[str, Any]) -> str:
    """One event as one line of JSON.  An event that JSON can hold as it is (every
    operator-log event) goes so, the level by its name and without the logger and
    source: a third of the cost of flattening it for Twisted's own encoding, which is
    kept for events carrying anything else (a failure, an object)."""
    fields = dict(event)
    for key in _UNSENT:
        fields.pop(key, None)
    try:
        name = _LEVEL_NAMES.get(fields.get("log_level"))  # None and anything else: no level
    except TypeError:  # not even hashable
        name = None
    if name is not None and _REQUIRED <= fields.keys():
        fields["log_level"] = name
        try:
            return compactJSON(fields)
        except (TypeError, ValueError):  # an object JSON cannot hold (a failure), or a loop
            pass
    return eventAsJSON(event)


def _notANumber(name: str) -> Any:
    raise ValueError(f"{name} is no number an event carries")


#: A JSON reader that refuses NaN and Infinity, which no event of jsmail's carries (a
#: measurement of NaN seconds would make a metric's sum NaN for good).
_strictJSON = json.JSONDecoder(parse_constant=_notANumber).decode


def eventFromLine(line: str) -> dict[str, Any]:
    """An event from :func:`eventLine` or Twisted's ``eventAsJSON`` (raises
    ValueError if it is neither)."""
    event = _strictJSON(line)
    if not isinstance(event, dict):
        raise ValueError("not an event")
    level = event.get("log_level")
    if isinstance(level, str):
        try:
            event["log_level"] = _LEVELS[level]
        except KeyError:
            raise ValueError(f"no log level {level!r}") from None
        return event
    return dict(eventFromJSON(line))  # Twisted's encoding: failures and objects restored


@implementer(ILogObserver)
class EventWriter:
    """A child process's log observer: one :func:`eventLine` per event on ``out``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self.out.write(eventLine(event) + "\n")
        self.out.flush()


#: The longest line taken from a child's log: far past its longest event (a delivery
#: event carries a remote server's reply, at most 64 KiB, in four fields, each escaped
#: for JSON); a longer line is dropped whole, and said so.
LINE_LIMIT = 4 * 1024 * 1024


class LogLines:
    """Log events a child process writes as JSON lines (:class:`EventWriter`, or
    Twisted's ``jsonFileLogObserver``), published in this process's log, so the
    operator log stays one stream."""

    def __init__(self, who: str, limit: int = LINE_LIMIT) -> None:
        self.who = who
        self.limit = limit
        self._pieces: list[bytes] = []  # the line begun, as it came (joined once, at its end)
        self._size = 0  # its length so far, also once past the limit (when no more is kept)

    def received(self, data: bytes) -> None:
        *lines, rest = data.split(b"\n")
        if lines and self._size:
            lines[0] = self._ended(lines[0])
        for line in lines:
            if len(line) > self.limit:
                self._tooLong(len(line))
            elif line.strip():
                self._publish(line)
        if rest:
            self._size += len(rest)
            if self._size <= self.limit:
                self._pieces.append(rest)
            else:
                self._pieces.clear()

    def _ended(self, end: bytes) -> bytes:
        """The line begun in earlier data, ``end`` being its last piece: the whole of
        it, or, when it is past the limit, nothing (and the log says so)."""
        size, self._size = self._size + len(end), 0
        pieces, self._pieces = self._pieces, []
        if size > self.limit:
            self._tooLong(size)
            return b""
        pieces.append(end)
        return b"".join(pieces)

    def _tooLong(self, size: int) -> None:
        _log.warn("{who} wrote a log line of {size} octets, past the {limit} taken: dropped", who=self.who,
                  size=size, limit=self.limit)

    def _publish(self, line: bytes) -> None:
        try:
            event = eventFromLine(line.decode("utf-8"))
        except ValueError:
            _log.warn("{who} said: {line!r}", who=self.who, line=line[:1000])
            return
        globalLogPublisher(event)


def allowedEnvironment(source: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables of ``source`` a child may see whatever it is: PATH, HOME, LANG."""
    return {name: source[name] for name in ALLOWED_ENVIRONMENT if name in source}


@dataclass(frozen=True)
class Finished:
    """How a program ended, and what it wrote."""

    code: int | None  # its exit status; None when a signal ended it
    timedOut: bool  # it was still running (or its descendants held its pipes) at the time-out, and was killed
    output: tuple[tuple[int, bytes], ...]  # (descriptor, data), in the order they arrived
    overflowed: frozenset[int]  # descriptors that wrote more than the limit; the rest was dropped

    def read(self, *fds: int) -> bytes:
        """What the program wrote on ``fds`` (on every descriptor read, if none are
        named), in the order it arrived."""
        return b"".join(data for fd, data in self.output if not fds or fd in fds)


class _Child(protocol.ProcessProtocol):
    transport: IProcessTransport  # set by spawnProcess before connectionMade

    def __init__(self, inputs: Mapping[int, bytes], outputLimit: int) -> None:
        self.inputs = inputs
        self.outputLimit = outputLimit
        self.output: list[tuple[int, bytes]] = []
        self.kept: dict[int, int] = {}
        self.overflowed: set[int] = set()
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.pid = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # kept: a program that exits at once is reaped before spawnProcess returns
        for fd, data in self.inputs.items():
            self.transport.writeToChild(fd, data)
            self.transport.closeChildFD(fd)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        kept = self.kept.get(childFD, 0)
        room = self.outputLimit - kept
        if len(data) > room:
            self.overflowed.add(childFD)
            data = data[:room]
        if data:
            self.output.append((childFD, data))
            self.kept[childFD] = kept + len(data)

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else None
        self.ended.callback(code)


def run(reactor: Any, argv: Sequence[str], env: Mapping[str, str], *, inputs: Mapping[int, bytes] = {},
        files: Mapping[int, int] = {}, read: Iterable[int] = (), cwd: str | None = None,
        timeout: float | None = None, outputLimit: int = OUTPUT_LIMIT) -> defer.Deferred[Finished]:
    """Run ``argv`` with ``inputs`` written to (and then closed on) the given child
    descriptors, the open descriptors ``files`` given as the child's, and pipes on the
    ``read`` descriptors; the child has no other descriptors.  Fails only when the
    program cannot be started (OSError)."""
    child = _Child(inputs, outputLimit)
    childFDs: dict[int, Any] = {**files, **{fd: "w" for fd in inputs}, **{fd: "r" for fd in read}}
    args = [*_NEW_SESSION, *argv] if timeout is not None else list(argv)
    try:
        process = reactor.spawnProcess(child, args[0], args, env=dict(env), path=cwd, childFDs=childFDs)
    except OSError:
        return defer.fail()
    timer = reactor.callLater(timeout, _kill, process, child.pid) if timeout is not None else None

    def ended(code: int | None) -> Finished:
        timedOut = timer is not None and not timer.active()
        if timer is not None and not timedOut:
            timer.cancel()
        return Finished(code, timedOut, tuple(child.output), frozenset(child.overflowed))

    return child.ended.addCallback(ended)


def _kill(process: Any, group: int) -> None:
    """Kill the program's process group (it leads a session of its own), then close
    our ends of its pipes: a descendant outside the group may still hold them, and a
    process only counts as ended once they close."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:  # no such group: not made yet, or everything in it has gone
        try:
            process.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
    for pipe in list(process.pipes.values()):
        pipe.connectionLost(Failure(error.ConnectionDone("the program's time-out")))

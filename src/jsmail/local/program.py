"""Program deliveries: ``|command`` lines run as qmail-command(8) describes
(qmail-interfaces reference, section 9.5).

The command runs as ``/bin/sh -c <command>`` in the home directory, with the message
(LF line ends, without Return-Path and Delivered-To: those are in ``RPLINE`` and
``DTLINE``) on standard input and qmail-command's environment.  Its exit code decides:
0 delivered, 99 delivered and later instructions skipped, 100 (and 64, 65, 70, 76, 77,
78, 112) permanent failure, anything else temporary; killed by a signal, temporary.
What it writes to stdout and stderr (at most 3000 bytes, as qmail-lspawn keeps,
section 8.4) becomes the result's text.  A command still running after ``timeout``
seconds is killed with its whole process group (it runs in a session of its own) and
the delivery is retried later.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from enum import Enum
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

MAX_OUTPUT = 3000
PERMANENT_CODES = frozenset({64, 65, 70, 76, 77, 78, 100, 112})
_SETSID = shutil.which("setsid")  # util-linux: puts the command in its own process group


class ProgramStatus(Enum):
    """How a program delivery ended (qmail-command's exit codes)."""

    OK = "ok"  # 0: delivered
    STOP = "stop"  # 99: delivered, and the instructions after it are skipped
    PERMANENT = "permanent"  # 100 and the sysexits codes qmail treats as hard
    TEMPORARY = "temporary"  # anything else, a signal or a timeout


@dataclass(frozen=True)
class ProgramResult:
    """How a program delivery ended; ``text`` is its output, or why it failed."""

    status: ProgramStatus
    text: str


def statusOfExit(code: int) -> ProgramStatus:
    if code == 0:
        return ProgramStatus.OK
    if code == 99:
        return ProgramStatus.STOP
    return ProgramStatus.PERMANENT if code in PERMANENT_CODES else ProgramStatus.TEMPORARY


class _Command(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred[ProgramResult], command: str) -> None:
        self.done = done
        self.command = command
        self.output = b""
        self.timedOut = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if len(self.output) <= MAX_OUTPUT:
            self.output += data

    def processEnded(self, reason: Failure) -> None:
        text = self.output[:MAX_OUTPUT].decode("utf-8", "replace").strip()
        if len(self.output) > MAX_OUTPUT:
            text += "\nError report too long, sorry."
        value = reason.value
        if self.timedOut:
            result = ProgramResult(ProgramStatus.TEMPORARY,
                                   f"{text}\nTimeout: the program ran too long and was killed.".strip())
        elif isinstance(value, (error.ProcessDone, error.ProcessTerminated)) and value.exitCode is not None:
            code = value.exitCode
            result = ProgramResult(statusOfExit(code), text or f"program exited with status {code}")
        else:
            result = ProgramResult(ProgramStatus.TEMPORARY, f"{text}\nAack, child crashed.".strip())
        self.done.callback(result)


def runProgram(reactor: Any, command: str, stdin: int, env: dict[str, str], cwd: str,
               timeout: float) -> defer.Deferred[ProgramResult]:
    """Run ``command`` with the open file ``stdin`` (rewound first) as its input;
    never fails: every outcome is a :class:`ProgramResult`."""
    done: defer.Deferred[ProgramResult] = defer.Deferred()
    proto = _Command(done, command)
    os.lseek(stdin, 0, os.SEEK_SET)
    args = ["/bin/sh", "-c", command]
    if _SETSID:
        args = [_SETSID] + args
    try:
        transport = reactor.spawnProcess(proto, args[0], args, env=env, path=cwd,
                                         childFDs={0: stdin, 1: "r", 2: "r"})
    except OSError as e:
        return defer.succeed(ProgramResult(ProgramStatus.TEMPORARY, f"Unable to run the program: {e.strerror}."))

    def kill() -> None:
        proto.timedOut = True
        pid = transport.pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL) if _SETSID else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    timer = reactor.callLater(timeout, kill)

    def finished(result: ProgramResult) -> ProgramResult:
        if timer.active():
            timer.cancel()
        return result

    return done.addCallback(finished)

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
from dataclasses import dataclass
from enum import Enum
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from jsmail._process import Finished, run

MAX_OUTPUT = 3000
PERMANENT_CODES = frozenset({64, 65, 70, 76, 77, 78, 100, 112})


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


def runProgram(reactor: Any, command: str, stdin: int, env: dict[str, str], cwd: str,
               timeout: float) -> defer.Deferred[ProgramResult]:
    """Run ``command`` with the open file ``stdin`` (rewound first) as its input;
    never fails: every outcome is a :class:`ProgramResult`."""
    os.lseek(stdin, 0, os.SEEK_SET)
    d = run(reactor, ["/bin/sh", "-c", command], env, files={0: stdin}, read=(1, 2), cwd=cwd, timeout=timeout,
            outputLimit=MAX_OUTPUT)
    return d.addCallbacks(_result, _notStarted)


def _result(finished: Finished) -> ProgramResult:
    output = finished.read()
    text = output[:MAX_OUTPUT].decode("utf-8", "replace").strip()
    if len(output) > MAX_OUTPUT or finished.overflowed:
        text += "\nError report too long, sorry."
    if finished.timedOut:
        return ProgramResult(ProgramStatus.TEMPORARY,
                             f"{text}\nTimeout: the program ran too long and was killed.".strip())
    if finished.code is not None:
        return ProgramResult(statusOfExit(finished.code), text or f"program exited with status {finished.code}")
    return ProgramResult(ProgramStatus.TEMPORARY, f"{text}\nAack, child crashed.".strip())


def _notStarted(failure: Failure) -> ProgramResult:
    failure.trap(OSError)
    assert isinstance(failure.value, OSError)  # trap re-raised anything else
    return ProgramResult(ProgramStatus.TEMPORARY, f"Unable to run the program: {failure.value.strerror}.")

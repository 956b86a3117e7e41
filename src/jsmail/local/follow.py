"""Carrying out one recipient's delivery instructions, in order (qmail-interfaces
reference, section 9.3): Maildir and mbox lines and programs as they come, the first
failure stopping the rest, forwards collected for the caller to queue at the end.

The same code runs in two places: in the delivery process, as jsmail's own user, for
aliases and virtual users whose home root or jsmail owns; and in a process running as
the mailbox's owner (:mod:`jsmail.local.asuser`) for everything a user owns.  What
differs between them is a :class:`Where`: how a path in an instruction is placed (a
virtual user's stay inside the home), how a Maildir write is made durable, where the
message comes from.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from twisted.internet import defer

from jsmail import reply
from jsmail._threads import RunInThread
from jsmail.error import DeliveryError
from jsmail.local.dotqmail import Forward, Instructions, Maildir, Mbox, Program
from jsmail.local.maildir import writeMaildirMessage
from jsmail.local.mbox import appendMbox
from jsmail.local.program import ProgramStatus, runProgram


@dataclass(frozen=True)
class Followed:
    """What the instructions did: files written, programs run, and the forwards left
    for the caller to queue (together, as one message), with the programs' words."""

    files: int
    programs: int
    forwards: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Where:
    """What carrying out instructions needs from the process it runs in.

    ``message`` gives the message with LF line ends, rewound (blocking); ``place``
    turns an instruction's path into the one to use, or raises :class:`DeliveryError`;
    ``sync`` makes a Maildir write durable; ``environment`` is qmail-command's for a
    program; ``deadline`` (reactor time) is when every program must have ended."""

    reactor: Any
    runInThread: RunInThread
    hostname: str
    cwd: str
    programTimeout: float
    message: Callable[[], BinaryIO]
    place: Callable[[str], str]
    sync: Callable[[str], defer.Deferred[Any]]
    environment: Callable[[], dict[str, str]]
    deadline: float | None = None


def placeAnywhere(cwd: str) -> Callable[[str], str]:
    """Paths as qmail-local takes them: relative to the home, or absolute (for a
    process that runs as the mailbox's owner, whose own rights bound them)."""
    return lambda path: os.path.join(cwd, path)


def placeWithin(home: str, allowed: tuple[str, ...] = ()) -> Callable[[str], str]:
    """Paths confined to ``home`` and the ``allowed`` directories, symbolic links
    resolved (for instructions followed as jsmail's own user, which may write far
    more than the mailbox's owner should)."""

    def place(path: str) -> str:
        joined = os.path.normpath(os.path.join(home, path))
        real = os.path.realpath(joined)
        for root in (home, *allowed):
            top = os.path.realpath(root)
            if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
                return joined + (os.sep if path.endswith("/") else "")
        raise DeliveryError(reply.INSTRUCTIONS_UNSAFE, False,
                            f"{path} is outside {home}; [local] allowed_paths lists the other places allowed")

    return place


def _copyAsIs(source: BinaryIO, target: BinaryIO) -> None:
    shutil.copyfileobj(source, target, 65536)


@defer.inlineCallbacks
def follow(instructions: Instructions, headers: bytes, ufline: bytes, where: Where) -> Any:
    """Carry out ``instructions``: fire with :class:`Followed`, or fail with
    :class:`DeliveryError` at the first line that fails.  ``headers`` (Return-Path
    and Delivered-To lines) start each file delivery, after ``ufline`` in an mbox."""
    files, programs, forwards, outputs = 0, 0, [], []
    for instruction in instructions.lines:
        if isinstance(instruction, Forward):
            forwards.append(instruction.address)
            continue
        if instructions.forwardOnly:
            kind = "prog" if isinstance(instruction, Program) else "file"
            raise DeliveryError(reply.INSTRUCTIONS_UNSAFE, False,
                                f"{instructions.source} has {kind} delivery but has x bit set")
        if isinstance(instruction, Maildir):
            yield _toMaildir(where.place(instruction.path), headers, where)
            files += 1
        elif isinstance(instruction, Mbox):
            path = where.place(instruction.path)
            yield where.runInThread(lambda path=path: appendMbox(path, ufline, headers, where.message()))
            files += 1
        else:
            copy = yield where.runInThread(where.message)
            timeout = where.programTimeout
            if where.deadline is not None:
                timeout = max(min(timeout, where.deadline - where.reactor.seconds()), 0.001)
            result = yield runProgram(where.reactor, instruction.command, copy.fileno(), where.environment(),
                                      where.cwd, timeout)
            if result.status is ProgramStatus.PERMANENT:
                raise DeliveryError(reply.PROGRAM_FAILED.format(result.text), True, instruction.command)
            if result.status is ProgramStatus.TEMPORARY:
                raise DeliveryError(reply.PROGRAM_DEFERRED.format(result.text), False, instruction.command)
            programs += 1
            if result.text and not result.text.startswith("program exited"):
                outputs.append(result.text)
            if result.status is ProgramStatus.STOP:
                break
    return Followed(files, programs, tuple(forwards), tuple(outputs))


def _toMaildir(maildir: str, headers: bytes, where: Where) -> defer.Deferred[None]:
    """Into an existing Maildir named by an instruction (section 9.6): one that is
    not there is a temporary failure, as in qmail-local, not made."""

    def write() -> str:
        if not os.path.isdir(os.path.join(maildir, "tmp")):
            raise DeliveryError(reply.INSTRUCTIONS_UNUSABLE, False, f"unable to chdir to maildir {maildir}")
        return writeMaildirMessage(maildir, headers, where.message(), where.hostname, _copyAsIs)

    def failed(failure: Any) -> None:
        failure.trap(OSError)
        raise DeliveryError(reply.DELIVERY_ERROR, False, f"maildir {maildir}: {failure.getErrorMessage()}")

    d = where.runInThread(write).addCallback(lambda path: where.sync(os.path.dirname(path)))
    return d.addErrback(failed)

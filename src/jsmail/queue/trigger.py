"""Waking the delivery process: a FIFO in the queue, as qmail-send's ``lock/trigger``.

Programs that write the queue themselves (``jsmail-queue``, ``jsmail-sendmail`` when
no gateway listens, ``jsmail-smtpd``) and the operator's ``jsmail queue`` tell the
delivery process to look at the queue by writing one byte to ``queue/trigger``:
``+`` for "new mail is there", ``!`` for "and retry everything now" (a flush).  The
delivery process makes the FIFO (mode 0600) once it holds the send lock, and reads it.

Why not a signal to the pid in ``send.pid`` (what jsmail did before): whoever can
write that file chooses which process gets the signal, and the programs that send it
run as root too (cron, an operator's flush), so a forged pid file let the jsmail user
kill any process on the host (security review L-8).  A byte in a FIFO reaches only
whoever reads that FIFO, and :func:`pull` opens it without following a symlink, checks
it is a FIFO, and never blocks: with nobody reading it (ENXIO) it reports that no
delivery process runs, and with the pipe full (EAGAIN) a wake-up is pending anyway.

Only the queue's owner (and root) can reach the FIFO, since ``queue/`` is 0700: other
local users submit through the gateway's socket (:mod:`jsmail.submit`), whose gateway
tells its delivery process itself.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

NAME = "trigger"
NEW_MAIL = b"+"
FLUSH = b"!"


def pull(queueDir: str, flush: bool = False) -> bool:
    """Tell the delivery process reading ``queueDir``'s trigger to look at the queue
    (and with ``flush`` to retry everything now).  False when no delivery process
    reads it; never blocks, never follows a symlink, writes only to a FIFO."""
    try:
        fd = os.open(os.path.join(queueDir, NAME),
                     os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # ENXIO: nobody reads it; ENOENT: never made; ELOOP: a symlink
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, FLUSH if flush else NEW_MAIL)
    except BlockingIOError:
        return True  # the pipe is full: the reader has wake-ups waiting already
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@implementer(IReadDescriptor)
class TriggerReader:
    """The delivery process's end of the trigger: calls ``pulled(flush)`` when bytes
    arrive, once per burst.  While the Deferred ``pulled`` returns is pending, more
    pulls are merged into one more call after it, so a program that queues a thousand
    messages in a row causes two looks at the queue, not a thousand."""

    def __init__(self, queueDir: str, reactor: Any, pulled: Callable[[bool], defer.Deferred[Any]]) -> None:
        self.path = os.path.join(queueDir, NAME)
        self.reactor = reactor
        self.pulled = pulled
        self._fd = -1
        self._keep = -1  # our own writer, so that the FIFO never reads as ended
        self._running = False
        self._waiting: bool | None = None  # a pull (True: a flush) that came while one ran

    def start(self) -> None:
        """Make the FIFO afresh and start reading it (raises OSError if it cannot)."""
        try:
            os.unlink(self.path)  # whatever is there: an old FIFO, or something else
        except FileNotFoundError:
            pass
        os.mkfifo(self.path, 0o600)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.reactor.addReader(self)

    def stop(self) -> None:
        """Stop reading and remove the FIFO, so that :func:`pull` reports no reader."""
        if self._fd < 0:
            return
        self.reactor.removeReader(self)
        try:
            if os.path.samestat(os.lstat(self.path), os.fstat(self._fd)):
                os.unlink(self.path)
        except OSError:
            pass
        for fd in (self._fd, self._keep):
            os.close(fd)
        self._fd = self._keep = -1

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "trigger"

    def connectionLost(self, reason: Failure) -> None:
        pass

    def doRead(self) -> None:
        pulled = flush = False
        try:
            while chunk := os.read(self._fd, 4096):  # never b"": we hold a writer ourselves
                pulled, flush = True, flush or FLUSH in chunk
        except BlockingIOError:
            pass
        if pulled:
            self._pull(flush)

    def _pull(self, flush: bool) -> None:
        if self._running:
            self._waiting = bool(self._waiting) or flush
            return
        self._running = True

        def done(result: object) -> None:
            if isinstance(result, Failure):
                _log.failure("Looking at the queue after a wake-up failed", result)
            self._running = False
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                self._pull(waiting)

        defer.maybeDeferred(self.pulled, flush).addBoth(done)

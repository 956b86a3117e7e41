"""The durable message store (qmail-queue and qmail-clean's job).

A message is acknowledged (250) only after :meth:`IIncomingMessage.commit` fires, and
that happens only once its file is renamed into ``active/`` and a sync of the file
system that started after the rename has finished (a group commit, see
:mod:`jsmail._disk`), so the file's bytes and its name in ``active/`` are both on disk.
The operator's side is :mod:`jsmail.queue.admin`, the same interface in memory
:mod:`jsmail.queue.memory`.  The layout on disk, the envelope format, and the states
and transitions with what start-up recovery does in each are in ``docs/queue.rst`` (the
one state table).  Delivery is at-least-once: a crash between a delivery and the
envelope update that records it delivers that recipient again.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import BinaryIO, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail._disk import GroupSync, createNew, makeDirectories, unlinkQuietly, writeAndRename
from jsmail._threads import RunInThread
from jsmail.datadir import makeSpareDirectories, removeFromTmp
from jsmail.envelope import Envelope, EnvelopeFormatError
from jsmail.interfaces import IIncomingMessage, IQueue, NotQueued

_log = Logger()
_counter = itertools.count()
_pid = ""  # this process's id as the ids spell it; made again in a forked child


def _notePid() -> None:
    global _pid
    _pid = f"{os.getpid() & 0xFFFFF:05X}"


_notePid()
os.register_at_fork(after_in_child=_notePid)


def newQueueId() -> str:
    """A queue id unique on this host: microseconds, process id and a counter, in hex.
    Ids sort by arrival, which makes ``ls active/`` read like a log."""
    return f"{time.time_ns() // 1000:013X}{_pid}{next(_counter) & 0xFFF:03X}"


@implementer(IIncomingMessage)
class QueueFile:
    """A message streaming into ``tmp/``; committed into ``active/``."""

    deliveredInSession = None  # queued, never delivered during the session

    def __init__(self, queue: MaildirQueue, queueId: str, envelope: Envelope) -> None:
        self._queue = queue
        self.queueId = queueId
        self.size = 0
        self._tmpPath, self._file = queue.spares.take()
        self._file.write(envelope.toBytes() + b"\n")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit or abort"
        self.size += len(data)
        self._file.write(data)

    _file: BinaryIO | None

    def commit(self) -> defer.Deferred[str]:
        f, self._file = self._file, None
        assert f is not None, "commit after commit or abort"
        queue = self._queue
        finalPath = os.path.join(queue.activeDir, self.queueId)
        try:
            f.close()  # writes what is still buffered: page cache, not disk
            os.rename(self._tmpPath, finalPath)
        except OSError:
            unlinkQuietly(self._tmpPath)
            return defer.fail()

        def failed(failure: Failure) -> Failure:
            unlinkQuietly(finalPath)  # not known to be durable: the client will retry
            return failure

        return queue.syncer.sync(queue.activeDir).addCallbacks(lambda _: self.queueId, failed)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            unlinkQuietly(self._tmpPath)


class _SpareFiles:
    """Empty files made ahead of need, by a thread, each batch in the next of
    ``directories`` (under ``tmp/``, spread over the file system's block groups).

    Creating a file can block for a while when the file system is busy syncing (a
    journal commit holds the directory), or, on an ext4 without a journal, just after
    many files were removed (it passes over the inodes freed in the last minute);
    taking a ready file keeps that off the reactor thread, and making the batches in
    block groups in turn spreads the inodes to pass over.  When none is ready (a
    burst), one is made on the spot, in ``directory``.
    """

    def __init__(self, directory: str, runInThread: RunInThread, target: int = 32,
                 directories: Sequence[str] = ()) -> None:
        self.directory = directory
        self.directories = list(directories) or [directory]
        self.runInThread = runInThread
        self.target = target
        self._ready: list[tuple[str, BinaryIO]] = []
        self._making = False
        self._closed = False
        self._next = 0

    def take(self) -> tuple[str, BinaryIO]:
        spare = self._ready.pop() if self._ready else self._make(self.directory)
        if self.target and len(self._ready) < self.target // 2 and not self._making:
            self._making = True
            directory = self.directories[self._next]
            self._next = (self._next + 1) % len(self.directories)
            self.runInThread(self._makeMany, directory, self.target - len(self._ready)).addCallbacks(
                self._made, lambda f: _log.failure("Cannot make spare queue files", f))
        return spare

    @staticmethod
    def _make(directory: str) -> tuple[str, BinaryIO]:
        path = os.path.join(directory, f"spare.{newQueueId()}")
        return path, createNew(path, buffering=65536)

    def _makeMany(self, directory: str, count: int) -> list[tuple[str, BinaryIO]]:
        return [self._make(directory) for _ in range(count)]

    def _made(self, spares: list[tuple[str, BinaryIO]]) -> None:
        self._making = False
        self._ready.extend(spares)
        if self._closed:
            self.close()

    def close(self) -> None:
        """Remove the spare files (and any still being made, once they arrive)."""
        self._closed = True
        for path, f in self._ready:
            f.close()
            unlinkQuietly(path)
        self._ready.clear()


@implementer(IQueue)
class MaildirQueue:
    """The queue on disk under ``directory`` (see the module docstring)."""

    def __init__(self, directory: str, runInThread: RunInThread, sweep: bool = True, spares: int = 32) -> None:
        """``sweep``: clear ``tmp/`` of what a crash left.  Only the process that
        receives mail sweeps; a delivery process beside it must not.  ``spares``: how
        many files to keep ready for new messages (0 for a program that queues one)."""
        self.directory = directory
        self.tmpDir = os.path.join(directory, "tmp")
        self.activeDir = os.path.join(directory, "active")
        self.corruptDir = os.path.join(directory, "corrupt")
        self.runInThread = runInThread
        self.syncer = GroupSync(runInThread)
        for d in (self.tmpDir, self.activeDir, self.corruptDir):
            makeDirectories(d)
        spareDirs = makeSpareDirectories(self.tmpDir) if spares else []  # the gateway's data tree has them
        if sweep:
            self._sweepTmp()
        self.spares = _SpareFiles(self.tmpDir, runInThread, spares, spareDirs)
        self._free, self._freeAt = 0, -1.0

    def newMessage(self, envelope: Envelope) -> QueueFile:
        return QueueFile(self, newQueueId(), envelope)

    def roomFor(self, octets: int) -> bool:
        """Whether the queue's file system has ``octets`` free for unprivileged writers
        (statvfs, asked at most once a second: a cheap call, but MAIL asks it)."""
        now = time.monotonic()
        if now - self._freeAt >= 1.0:
            stat = os.statvfs(self.directory)
            self._free, self._freeAt = stat.f_bavail * stat.f_frsize, now
        return self._free >= octets

    def close(self) -> None:
        """Let go of the files kept ready for new messages."""
        self.spares.close()

    def recover(self) -> defer.Deferred[list[tuple[str, Envelope]]]:
        return self.runInThread(self._recover)

    def _sweepTmp(self) -> None:
        """Nothing in tmp/ (or its spare directories) was ever acknowledged: a crash
        left it; remove it.  Done when the queue is made, before any listener can start
        a new message there."""
        for name in removeFromTmp(self.tmpDir, lambda name: True):
            if not name.startswith("spare."):
                _log.info("queue recovery: removing unfinished {name}", name=name)

    def _recover(self) -> list[tuple[str, Envelope]]:
        """Every queued message with its envelope.  Nothing one file does stops the
        others: one that vanished meanwhile (delivered and removed while we listed) is
        skipped, one that cannot be read is set aside in corrupt/ with a log line."""
        names = set(os.listdir(self.activeDir))
        found = []
        for name in sorted(names):
            path = os.path.join(self.activeDir, name)
            if name.endswith(".env"):
                if name[:-4] not in names:
                    unlinkQuietly(path)  # half-removed
                continue
            try:
                found.append((name, self._readEnvelope(name)))
            except FileNotFoundError:
                continue  # removed since the listing: delivered, or moved by an operator
            except (OSError, EnvelopeFormatError) as e:
                _log.error("queue recovery: setting aside {name}: {error}", name=name, error=e)
                self._setAside(name)
        return found

    def _setAside(self, queueId: str) -> None:
        for name in (queueId, queueId + ".env"):
            try:
                os.replace(os.path.join(self.activeDir, name), os.path.join(self.corruptDir, name))
            except FileNotFoundError:
                pass
            except OSError as e:
                _log.error("queue recovery: cannot set aside {name}: {error}", name=name, error=e)

    def _readEnvelope(self, queueId: str) -> Envelope:
        path = os.path.join(self.activeDir, queueId)
        try:
            with open(path + ".env", "rb") as f:
                return Envelope.fromBytes(f.read())
        except FileNotFoundError:
            with open(path, "rb") as f:
                return Envelope.fromBytes(f.readline())

    def loadEnvelope(self, queueId: str) -> defer.Deferred[Envelope]:
        def read() -> Envelope:
            try:
                return self._readEnvelope(queueId)
            except FileNotFoundError:
                raise NotQueued(queueId) from None

        return self.runInThread(read)

    def openMessage(self, queueId: str) -> BinaryIO:
        f = open(os.path.join(self.activeDir, queueId), "rb")
        f.readline()  # the envelope line
        return f

    def update(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        data = envelope.toBytes()

        def write() -> None:
            base = os.path.join(self.activeDir, queueId)
            writeAndRename(os.path.join(self.tmpDir, queueId + ".env"), base + ".env", data)
            if not os.path.exists(base):
                unlinkQuietly(base + ".env")  # held or deleted meanwhile: leave no lone .env
                raise NotQueued(queueId)

        return self.runInThread(write).addCallback(lambda _: self.syncer.sync(self.activeDir))

    def remove(self, queueId: str) -> defer.Deferred[None]:
        def unlink() -> None:
            base = os.path.join(self.activeDir, queueId)
            try:
                os.unlink(base)
            except FileNotFoundError:
                raise NotQueued(queueId) from None
            finally:
                unlinkQuietly(base + ".env")

        return self.runInThread(unlink)

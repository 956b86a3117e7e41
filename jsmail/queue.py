"""The durable message store (qmail-queue and qmail-clean's job).

A message is acknowledged (250) only after :meth:`IIncomingMessage.commit` fires, and
that happens only once its file is fsync'd, renamed into ``active/`` and ``active/``
itself is fsync'd.  The on-disk layout (documented for operators in ``docs/queue.rst``)::

    queue/tmp/ID         being received, or an envelope update being written
    queue/active/ID      a queued message: one line of JSON envelope, LF, then the
                         message exactly as received (CR LF line ends, dot-unstuffed)
    queue/active/ID.env  the current envelope once delivery has changed it (per-recipient
                         state, attempts, next attempt); overrides the first line of ID
    queue/corrupt/       entries recovery could not read, set aside for a person

States and transitions (each arrow is one fsync'd write or one atomic rename/unlink):

=====================  =========================  ====================================
state                  on disk                    recovery at start
=====================  =========================  ====================================
receiving              tmp/ID                     deleted: never acknowledged
queued                 active/ID                  delivered from its first line
in delivery            active/ID + active/ID.env  delivered from ID.env
done                   (nothing)                  --
half-removed           active/ID.env only         ID.env deleted
=====================  =========================  ====================================

receiving -> queued: fsync tmp/ID, rename to active/ID, fsync active/ (then 250).
queued -> in delivery: write tmp/ID.env, fsync, rename to active/ID.env, fsync active/.
-> done: unlink active/ID, then active/ID.env, fsync active/.

Delivery is at-least-once: a crash between a delivery and the envelope update that
records it delivers that recipient again.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from typing import BinaryIO

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jsmail._disk import DirectorySyncer, RunInThread, writeDurably
from jsmail.envelope import Envelope, EnvelopeFormatError
from jsmail.interfaces import IIncomingMessage, IQueue

_log = Logger()
_counter = itertools.count()


def newQueueId() -> str:
    """A queue id unique on this host: microseconds, process id and a counter, in hex.
    Ids sort by arrival, which makes ``ls active/`` read like a log."""
    return f"{time.time_ns() // 1000:013X}{os.getpid() & 0xFFFFF:05X}{next(_counter) & 0xFFF:03X}"


@implementer(IIncomingMessage)
class _IncomingFile:
    """A message streaming into ``tmp/``; committed into ``active/``."""

    def __init__(self, queue: MaildirQueue, queueId: str, envelope: Envelope) -> None:
        self._queue = queue
        self.queueId = queueId
        self.size = 0
        self._tmpPath = os.path.join(queue.tmpDir, queueId)
        self._file: BinaryIO | None = open(self._tmpPath, "xb", buffering=65536)
        self._file.write(envelope.toBytes() + b"\n")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit or abort"
        self.size += len(data)
        self._file.write(data)

    def commit(self) -> defer.Deferred[str]:
        f, self._file = self._file, None
        assert f is not None, "commit after commit or abort"
        queue = self._queue
        finalPath = os.path.join(queue.activeDir, self.queueId)

        def makeDurable() -> None:
            try:
                f.flush()
                os.fsync(f.fileno())
            finally:
                f.close()
            os.rename(self._tmpPath, finalPath)

        def failed(failure: object) -> object:
            _unlinkQuietly(self._tmpPath)
            return failure

        d = queue.runInThread(makeDurable)
        d.addCallback(lambda _: queue.syncer.sync(queue.activeDir))
        d.addCallbacks(lambda _: self.queueId, failed)
        return d

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            _unlinkQuietly(self._tmpPath)


def _unlinkQuietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IQueue)
class MaildirQueue:
    """The queue on disk under ``directory`` (see the module docstring)."""

    def __init__(self, directory: str, runInThread: RunInThread) -> None:
        self.directory = directory
        self.tmpDir = os.path.join(directory, "tmp")
        self.activeDir = os.path.join(directory, "active")
        self.corruptDir = os.path.join(directory, "corrupt")
        self.runInThread = runInThread
        self.syncer = DirectorySyncer(runInThread)
        for d in (self.tmpDir, self.activeDir, self.corruptDir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return _IncomingFile(self, newQueueId(), envelope)

    def recover(self) -> defer.Deferred[list[tuple[str, Envelope]]]:
        return self.runInThread(self._recover)

    def _recover(self) -> list[tuple[str, Envelope]]:
        for name in os.listdir(self.tmpDir):
            _log.info("queue recovery: removing unfinished {name}", name=name)
            _unlinkQuietly(os.path.join(self.tmpDir, name))
        names = set(os.listdir(self.activeDir))
        found = []
        for name in sorted(names):
            path = os.path.join(self.activeDir, name)
            if name.endswith(".env"):
                if name[:-4] not in names:
                    _unlinkQuietly(path)  # half-removed
                continue
            try:
                found.append((name, self._readEnvelope(name)))
            except (OSError, EnvelopeFormatError) as e:
                _log.error("queue recovery: setting aside {name}: {error}", name=name, error=e)
                for move in (name, name + ".env"):
                    if move in names:
                        os.replace(os.path.join(self.activeDir, move), os.path.join(self.corruptDir, move))
        return found

    def _readEnvelope(self, queueId: str) -> Envelope:
        path = os.path.join(self.activeDir, queueId)
        try:
            with open(path + ".env", "rb") as f:
                return Envelope.fromBytes(f.read())
        except FileNotFoundError:
            with open(path, "rb") as f:
                return Envelope.fromBytes(f.readline())

    def openMessage(self, queueId: str) -> BinaryIO:
        f = open(os.path.join(self.activeDir, queueId), "rb")
        f.readline()  # the envelope line
        return f

    def update(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        data = envelope.toBytes()
        d = self.runInThread(
            writeDurably,
            os.path.join(self.tmpDir, queueId + ".env"),
            os.path.join(self.activeDir, queueId + ".env"),
            data,
        )
        return d.addCallback(lambda _: self.syncer.sync(self.activeDir))

    def remove(self, queueId: str) -> defer.Deferred[None]:
        def unlink() -> None:
            base = os.path.join(self.activeDir, queueId)
            os.unlink(base)
            _unlinkQuietly(base + ".env")

        return self.runInThread(unlink).addCallback(lambda _: self.syncer.sync(self.activeDir))


@implementer(IIncomingMessage)
class _IncomingMemory:
    def __init__(self, queue: MemoryQueue, queueId: str, envelope: Envelope) -> None:
        self._queue = queue
        self.queueId = queueId
        self.envelope = envelope
        self.size = 0
        self._buffer: io.BytesIO | None = io.BytesIO()

    def write(self, data: bytes) -> None:
        assert self._buffer is not None, "write after commit or abort"
        self.size += len(data)
        self._buffer.write(data)

    def commit(self) -> defer.Deferred[str]:
        assert self._buffer is not None, "commit after commit or abort"
        self._queue.messages[self.queueId] = (self.envelope, self._buffer.getvalue())
        self._buffer = None
        return defer.succeed(self.queueId)

    def abort(self) -> None:
        self._buffer = None
        self._queue.aborted += 1


@implementer(IQueue)
class MemoryQueue:
    """The same interface in memory, for tests and embedders that persist elsewhere.

    ``messages`` maps queue id to (envelope, bytes); ``aborted`` counts messages that
    were started but thrown away.
    """

    def __init__(self) -> None:
        self.messages: dict[str, tuple[Envelope, bytes]] = {}
        self.aborted = 0

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return _IncomingMemory(self, newQueueId(), envelope)

    def recover(self) -> defer.Deferred[list[tuple[str, Envelope]]]:
        return defer.succeed([(k, env) for k, (env, _) in sorted(self.messages.items())])

    def openMessage(self, queueId: str) -> BinaryIO:
        return io.BytesIO(self.messages[queueId][1])

    def update(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        self.messages[queueId] = (envelope, self.messages[queueId][1])
        return defer.succeed(None)

    def remove(self, queueId: str) -> defer.Deferred[None]:
        del self.messages[queueId]
        return defer.succeed(None)

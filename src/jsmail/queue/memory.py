"""The queue interface in memory, for tests and embedders that persist elsewhere."""

from __future__ import annotations

import io
from typing import BinaryIO

from twisted.internet import defer
from zope.interface import implementer

from jsmail.envelope import Envelope
from jsmail.interfaces import IIncomingMessage, IQueue, NotQueued
from jsmail.queue.store import newQueueId


@implementer(IIncomingMessage)
class _IncomingMemory:
    deliveredInSession = None  # queued, never delivered during the session

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

    def loadEnvelope(self, queueId: str) -> defer.Deferred[Envelope]:
        if queueId not in self.messages:
            return defer.fail(NotQueued(queueId))
        return defer.succeed(self.messages[queueId][0])

    def openMessage(self, queueId: str) -> BinaryIO:
        return io.BytesIO(self.messages[queueId][1])

    def update(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        if queueId not in self.messages:
            return defer.fail(NotQueued(queueId))
        self.messages[queueId] = (envelope, self.messages[queueId][1])
        return defer.succeed(None)

    def remove(self, queueId: str) -> defer.Deferred[None]:
        if self.messages.pop(queueId, None) is None:
            return defer.fail(NotQueued(queueId))
        return defer.succeed(None)

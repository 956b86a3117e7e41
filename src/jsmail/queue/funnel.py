"""The one funnel into the queue (Postfix's cleanup, qmail-queue's callers).

smtpd, bounces and, later, the sendmail command all enqueue through a :class:`Funnel`,
so every committed message is announced to the scheduler the same way.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from jsmail.envelope import Envelope
from jsmail.interfaces import IIncomingMessage, IMessageSink, IQueue

OnQueued = Callable[[str, Envelope], None]


@implementer(IIncomingMessage)
class _Announced:
    """An incoming message that tells the funnel's listener once it is committed."""

    def __init__(self, message: IIncomingMessage, envelope: Envelope, onQueued: OnQueued) -> None:
        self._message = message
        self._envelope = envelope
        self._onQueued = onQueued
        self.queueId = message.queueId

    @property
    def size(self) -> int:
        return self._message.size  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        self._message.write(data)

    def commit(self) -> defer.Deferred[str]:
        def announce(queueId: str) -> str:
            self._onQueued(queueId, self._envelope)
            return queueId

        return self._message.commit().addCallback(announce)

    def abort(self) -> None:
        self._message.abort()


@implementer(IMessageSink)
class Funnel:
    """Wraps a queue: what is committed through it is handed to ``onQueued``."""

    def __init__(self, queue: IQueue, onQueued: OnQueued) -> None:
        self.queue = queue
        self.onQueued = onQueued

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return _Announced(self.queue.newMessage(envelope), envelope, self.onQueued)

    def enqueue(self, envelope: Envelope, data: bytes) -> defer.Deferred[str]:
        """Queue a message held whole (a bounce, small by construction)."""
        message = self.newMessage(envelope)
        message.write(data)
        return message.commit()

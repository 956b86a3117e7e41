"""The one funnel into the queue (Postfix's cleanup, qmail-queue's callers).

smtpd, bounces, forwards, ``jsmail-queue``, ``jsmail-sendmail`` (and its ``-bs``) and
``jsmail-smtpd`` all enqueue through a :class:`Funnel`, so every committed message is
announced to the scheduler the same way, and gets what its source owes it (an
:class:`Owed`) from one place:

- a message that did not come by SMTP gets a Received field naming the program and
  the uid that handed it in, as qmail-queue writes one (qmail-interfaces reference,
  section 3.3); smtpd writes its own, with what the session knows;
- a local submission (the sendmail command; a submission listener, RFC 6409 section
  8) gets Date and Message-ID where they are missing, and from the sendmail command
  a From naming the user, as qmail-inject adds them.

Bounces and forwards owe nothing here: a bounce is whole as written, and a forward
carries its Delivered-To line, which local delivery writes.  Missing fields are found
by holding the header section only (at most :data:`jsmail.headers.MAX_HEADER`
octets) as it streams through; a header section longer than that is left as it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from jsmail.envelope import Envelope
from jsmail.headers import HeaderScanner, Split, fieldName, fields
from jsmail.interfaces import IIncomingMessage, IMessageSink

OnQueued = Callable[[str, Envelope], object]  # what it returns is not used


@dataclass(frozen=True)
class Owed:
    """What a message from one kind of source is owed on its way into the queue."""

    received: bool = False  # a Received field naming this process and its uid: not from SMTP
    complete: bool = False  # Date and Message-ID where missing: a local submission
    hostname: str = ""  # the domain of the Message-ID added
    author: str = ""  # a From field where missing (the sendmail command's user)

    def fieldsFor(self, present: set[bytes | None], queueId: str, arrival: float) -> list[str]:
        """The fields to add to a header section whose field names are ``present``."""
        added = []
        if self.complete and b"date" not in present:
            added.append(f"Date: {_date(arrival)}")
        if self.complete and b"message-id" not in present:
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(arrival))
            added.append(f"Message-ID: <{stamp}.{queueId}.jsmail@{self.hostname}>")
        if self.author and b"from" not in present:
            added.append("From: " + self.author.replace("\r", " ").replace("\n", " "))
        return added


NOTHING = Owed()  # smtpd (which writes its own Received field), bounces, forwards


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _receivedField(arrival: float) -> bytes:
    """The Received field of a message handed in by a local program (today's text,
    after qmail-queue's "invoked by uid")."""
    return (f"Received: (jsmail-queue {os.getpid()} invoked by uid {os.getuid()});\r\n"
            f"\t{_date(arrival)}\r\n").encode("ascii")


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
        return self._message.size

    def write(self, data: bytes) -> None:
        self._message.write(data)

    @property
    def deliveredInSession(self) -> object:
        return getattr(self._message, "deliveredInSession", None)

    def commit(self) -> defer.Deferred[str]:
        def announce(queueId: str) -> str:
            if self.deliveredInSession is None:  # delivered already: nothing to schedule
                self._onQueued(queueId, self._envelope)
            return queueId

        return self._message.commit().addCallback(announce)

    def abort(self) -> None:
        self._message.abort()


@implementer(IIncomingMessage)
class _Completed:
    """Holds the header section back until it is known which owed fields it lacks,
    then adds them at its end and passes everything else on as it comes."""

    def __init__(self, message: IIncomingMessage, envelope: Envelope, owed: Owed) -> None:
        self._message = message
        self._arrival = envelope.arrival
        self._owed = owed
        self._scanner: HeaderScanner | None = HeaderScanner()
        self._held = 0
        self.queueId = message.queueId

    @property
    def size(self) -> int:
        return self._message.size + self._held

    @property
    def deliveredInSession(self) -> object:
        return getattr(self._message, "deliveredInSession", None)

    def write(self, data: bytes) -> None:
        if self._scanner is None:
            self._message.write(data)
            return
        split = self._scanner.feed(data)
        if split is None:
            self._held += len(data)
        else:
            self._release(split)

    def commit(self) -> defer.Deferred[str]:
        if self._scanner is not None:
            self._release(self._scanner.close())
        return self._message.commit()

    def abort(self) -> None:
        self._message.abort()

    def _release(self, split: Split) -> None:
        self._scanner, self._held = None, 0
        header = split.header
        if split.whole:
            added = self._owed.fieldsFor({fieldName(f) for f in fields(header)}, self.queueId, self._arrival)
            if added and header and not header.endswith(b"\n"):
                header += b"\r\n"  # the message ended inside its last field
            header += "".join(f + "\r\n" for f in added).encode("utf-8")
        self._message.write(header + split.rest)


@implementer(IMessageSink)
class _Source:
    """The funnel as seen by one source, whose messages are all owed the same."""

    def __init__(self, funnel: Funnel, owed: Owed) -> None:
        self._funnel = funnel
        self._owed = owed

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return self._funnel.newMessage(envelope, self._owed)


@implementer(IMessageSink)
class Funnel:
    """Wraps a queue (or another sink): what is committed through it is handed to
    ``onQueued``."""

    def __init__(self, queue: IMessageSink, onQueued: OnQueued) -> None:
        self.queue = queue
        self.onQueued = onQueued

    def newMessage(self, envelope: Envelope, owed: Owed = NOTHING) -> IIncomingMessage:
        """Start a message from a source that owes it ``owed``; the Received field
        owed is written at once, above anything the source writes."""
        message: IIncomingMessage = _Announced(self.queue.newMessage(envelope), envelope, self.onQueued)
        if owed.received:
            message.write(_receivedField(envelope.arrival))
        if owed.complete or owed.author:
            message = _Completed(message, envelope, owed)
        return message

    def owing(self, owed: Owed) -> IMessageSink:
        """A sink for a listener whose messages are owed ``owed`` (a submission
        listener: ``Owed(complete=True, hostname=...)``)."""
        return _Source(self, owed)

    def enqueue(self, envelope: Envelope, data: bytes) -> defer.Deferred[str]:
        """Queue a message held whole (a bounce, small by construction)."""
        message = self.newMessage(envelope)
        message.write(data)
        return message.commit()

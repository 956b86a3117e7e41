"""The ESMTP client's wire: commands go out and the peer's replies come back matched to
them in order, each awaited with a time limit; message content streams out in between.

Every command waits for its reply in one queue, and replies are matched to commands in
order, so the pipelined dialog and the one-command-at-a-time dialog are the same code
(RFC 2920 section 3.1).  A dropped connection, a timeout or a reply that cannot be read
breaks the pipeline: every waiting command, and every later one, is answered with a
made-up reply saying why (a :class:`Reason`), which is how it becomes a temporary
result.  Message data streams from the file (a pull producer, so the transport's
backpressure is honoured) in 16 KiB reads, dot-stuffed by
:class:`~jsmail.smtp.commands.DotStuffer`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from jsmail import reply as replies
from jsmail._transport import StreamTransport
from jsmail.reply import PeerReply, Reply
from jsmail.smtp.commands import CHUNK, DotStuffer

__all__ = ["CommandPipeline", "Reason"]

MAX_REPLY = 64 * 1024  # octets one reply may take, all its lines together
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)


@dataclass(frozen=True)
class Reason(Reply):
    """A reply jsmail makes up for a local reason (one of :mod:`jsmail.reply`'s), with
    the private detail for the log: the peer's name, what went wrong."""

    detail: str = ""

    @classmethod
    def of(cls, template: Reply, detail: str = "") -> Reason:
        return cls(template.code, template.enhanced, template.text, detail)

    @staticmethod
    def split(reply: Reply) -> tuple[Reply, str]:
        """The public reply and the private detail: a made-up reply's detail stays out
        of what a bounce may show."""
        if isinstance(reply, Reason):
            return Reply(reply.code, reply.enhanced, reply.text), reply.detail
        return reply, ""


@implementer(IPullProducer)
class _ContentProducer:
    """Streams the message file, dot-stuffed, whenever the transport has room; ``done``
    fires once the final dot is written or the connection is gone."""

    def __init__(self, pipeline: CommandPipeline, file: BinaryIO, blockTimeout: float) -> None:
        self._pipeline = pipeline
        self._file = file
        self._blockTimeout = blockTimeout
        self._stuffer = DotStuffer()
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        pipeline = self._pipeline
        pipeline._setTimer(self._blockTimeout, "room to send message data")
        try:
            chunk = self._file.read(CHUNK)
        except OSError as e:
            pipeline._hangUp(Reason.of(replies.CANNOT_READ_MESSAGE, str(e)))
            return
        if chunk:
            pipeline.transport.write(self._stuffer.feed(chunk))
            return
        pipeline.transport.unregisterProducer()
        pipeline.transport.write(self._stuffer.end())
        self.done.callback(None)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.callback(None)


@dataclass
class _Waiter:
    """A command waiting for its reply, with how long it may wait."""

    deferred: Deferred[Reply]
    timeout: float
    what: str
    discardRest: bool = False  # STARTTLS: what follows its 220 in plaintext is dropped


class CommandPipeline(Protocol):
    """Commands and their replies over one connection (see the module docstring).
    ``peer`` names the other end in made-up replies; while ``_handshaking`` (after
    STARTTLS's 220, until the handshake is done) nothing read counts."""

    transport: StreamTransport  # type: ignore[assignment]  # narrower than Twisted's Optional[ITransport]: set before any use

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.peer = "the peer"
        self._handshaking = False
        self._buffer = b""
        self._lines: list[str] = []
        self._replySize = 0
        self._waiters: deque[_Waiter] = deque()
        self._timer: IDelayedCall | None = None
        self._producer: _ContentProducer | None = None
        self._broken: Reply | None = None  # why the session cannot go on

    def dataReceived(self, data: bytes) -> None:
        if self._broken is not None or self._handshaking:
            return  # nothing said in plaintext between STARTTLS's 220 and TLS counts
        self._buffer += data
        while self._broken is None and not self._handshaking:
            lf = self._buffer.find(b"\n")
            if lf < 0:
                if len(self._buffer) > MAX_REPLY:
                    self._hangUp(Reason.of(replies.PEER_REPLY_UNREADABLE,
                                           f"{self.peer} sent a reply line too long to read"))
                return
            line, self._buffer = self._buffer[:lf].removesuffix(b"\r"), self._buffer[lf + 1 :]
            self._lineReceived(line)

    def _lineReceived(self, line: bytes) -> None:
        match = _REPLY_LINE.match(line)
        if match is None:
            self._hangUp(Reason.of(replies.PEER_REPLY_UNREADABLE,
                                   f"{self.peer} sent a malformed reply: {line[:80]!r}"))
            return
        self._replySize += len(line)
        if self._replySize > MAX_REPLY:
            self._hangUp(Reason.of(replies.PEER_REPLY_UNREADABLE, f"{self.peer} sent a reply too long to read"))
            return
        self._lines.append((match.group(3) or b"").decode("utf-8", "replace").strip())
        if match.group(2) == b"-":
            return
        reply = PeerReply.parse(int(match.group(1)), self._lines)
        self._lines, self._replySize = [], 0
        self._replyReceived(reply)

    def _replyReceived(self, reply: Reply) -> None:
        if not self._waiters:
            if not 400 <= reply.code < 500:  # a 421 shutdown notice stays as it is
                reply = Reason.of(replies.PEER_UNEXPECTED_REPLY, f"{self.peer} said {reply} when no reply was due")
            self._break(reply)
            self.transport.loseConnection()
            return
        waiter = self._waiters.popleft()
        if waiter.discardRest and reply.code == 220:
            self._buffer = b""
        if self._waiters:
            self._setTimer(self._waiters[0].timeout, self._waiters[0].what)
        else:
            self._cancelTimer()
        waiter.deferred.callback(reply)

    def _expect(self, timeout: float, what: str, discardRest: bool = False) -> Deferred[Reply]:
        """Wait for the next reply; a broken session answers at once with why."""
        if self._broken is not None:
            return succeed(self._broken)
        waiter = _Waiter(Deferred(), timeout, what, discardRest)
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._setTimer(timeout, what)
        return waiter.deferred

    def _commands(self, *commands: tuple[str, float]) -> list[Deferred[Reply]]:
        """Send ``commands`` in one write (pipelined when several); their replies in order."""
        waiters = [self._expect(timeout, "the reply to " + line.split(" ", 1)[0]) for line, timeout in commands]
        if self._broken is None:
            self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line, _ in commands))
        return waiters

    def _command(self, line: str, timeout: float, what: str | None = None, discardRest: bool = False
                 ) -> Deferred[Reply]:
        """Send one command; ``what`` names it in a timeout (so no secret is ever shown)."""
        waiter = self._expect(timeout, what or "the reply to " + line.split(" ", 1)[0], discardRest)
        if self._broken is None:
            self.transport.write(line.encode("utf-8") + b"\r\n")
        return waiter

    async def _sendContent(self, file: BinaryIO, start: int, blockTimeout: float, replyTimeout: float) -> Reply:
        """Stream the message from ``start`` after DATA's 354, waiting at most
        ``blockTimeout`` for room each time; the reply to the final dot."""
        file.seek(start)
        producer = self._producer = _ContentProducer(self, file, blockTimeout)
        self.transport.registerProducer(producer, False)
        await producer.done
        self._producer = None
        return await self._expect(replyTimeout, "the reply to the final dot")

    def _setTimer(self, seconds: float, what: str) -> None:
        self._cancelTimer()
        self._timer = self.clock.callLater(seconds, self._timedOut, seconds, what)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self, seconds: float, what: str) -> None:
        self._timer = None
        self._hangUp(Reason.of(replies.PEER_TIMEOUT,
                               f"timed out after {seconds:g} seconds waiting for {what} ({self.peer})"))

    def abort(self, why: str) -> None:
        """Give up on the session now (the caller's own deadline passed): every
        command waiting, and every recipient in the transaction, gets a time-out."""
        self._hangUp(Reason.of(replies.PEER_TIMEOUT, f"{why} ({self.peer})"))

    def _hangUp(self, reason: Reply) -> None:
        """Give up on a peer that is too slow or makes no sense: drop the connection."""
        self._break(reason)
        self.transport.abortConnection()

    def _break(self, reason: Reply) -> None:
        """The session cannot go on: answer every waiting command with ``reason``."""
        if self._broken is not None:
            return
        self._broken = reason
        self._cancelTimer()
        waiters, self._waiters = self._waiters, deque()
        if self._producer is not None:
            self._producer.stopProducing()
        for waiter in waiters:
            waiter.deferred.callback(reason)

"""One message coming in over SMTP, from DATA or the first BDAT to the 250 (or the
refusal): its content budget and hop count as octets arrive, the end-of-message checks,
and the commit that makes it durable before the client hears 250."""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail import maillog, reply
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.headers import FieldDropper, FieldWatcher, fieldName, fieldValue, mailboxes
from jsmail.interfaces import IIncomingMessage
from jsmail.policy.relay import TRUSTED_CLIENT
from jsmail.reply import Reply
from jsmail.smtp.assembly import Spool
from jsmail.smtp.data import ChunkReader, ContentProblems, ContentScanner, DataReader
from jsmail.smtp.listener import Listener, ServerSettings
from jsmail.smtp.params import tooBig
from jsmail.smtp.session import Session

_log = Logger()

Result = Reply | defer.Deferred[Reply]


class Server(Protocol):
    """What a transaction uses of its session's server (:class:`jsmail.smtp.server.ESMTPServer`)."""

    listener: Listener
    settings: ServerSettings
    session: Session
    clock: Any

    @property
    def closing(self) -> bool: ...

    def resetTransaction(self) -> None: ...

    def refused(self, error: SMTPReplyError) -> Reply: ...

    def commandFailed(self, failure: Failure) -> Reply: ...

    def checked(self, phase: str, accept: Callable[[], Result], *args: Any) -> Result: ...

def _once(recipients: list[Recipient]) -> tuple[Recipient, ...]:
    """The recipients with repeats left out (the first one's parameters kept), so a
    message given the same recipient twice is delivered to it once."""
    seen: set[str] = set()
    kept = []
    for recipient in recipients:
        key = recipient.address.lower()
        if key not in seen:
            seen.add(key)
            kept.append(recipient)
    return tuple(kept)


#: The header fields read as the content streams by: for Transaction._headerRefusal,
#: and the Message-ID for the operator log (``jsmail trace --message-id``).
_WATCHED = ("delivered-to", "from", "sender", "message-id")
_MESSAGE_ID = re.compile(rb"^[ \t]*(<[^<>\s]{1,250}>)")

#: The header watcher of a transaction with no message yet: never fed (:meth:`Transaction.write`
#: drops octets until a message is open), so sessions share it.
_NO_HEADER = FieldWatcher()

#: What a command answers when its reply comes later, or was already written.
NO_REPLY = Reply(0, "", "")


class Transaction:
    """The message part of a session's current transaction (the session's
    :class:`~jsmail.smtp.session.Session` holds its sender and recipients)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.message: IIncomingMessage | None = None
        self.reader: DataReader | ChunkReader | None = None  # set while content octets are expected
        self.scanner: ContentScanner | None = None  # the BDAT transaction's content, across chunks
        self.chunk: tuple[int, bool, Reply | None] = (0, False, None)  # size, LAST, why it is refused
        self._spool: Spool | None = None
        self._out: Spool | FieldDropper | None = None  # where content octets go
        self._tooBig = False
        self._size = 0
        self._header = _NO_HEADER  # a watcher of its own once a message starts

    @property
    def queueId(self) -> str:
        return self.message.queueId if self.message is not None else "-"

    def _open(self) -> None:
        """Open the message in the queue, with what goes on top of its content."""
        server = self.server
        session = server.session
        envelope = Envelope(
            sender=str(session.sender),
            recipients=_once(session.recipients),
            mailParams=dict(session.mailParams),
            arrival=server.clock.seconds(),
            clientAddress=session.clientAddress,
            helo=session.helo or "",
            protocol=session.withProtocol(),
            # Only these senders may have whole messages and private replies returned.
            trusted=session.user is not None or bool(session.transactionNotes.get(TRUSTED_CLIENT)),
        )
        self.message = server.listener.sink.newMessage(envelope)
        session.queueId = self.message.queueId
        self._tooBig = self._writeFailed = self._nul = False
        self._size = 0
        self._header = FieldWatcher(_WATCHED, limit=64 * 1024)
        assembler = server.listener.assembler
        self._spool = assembler.begin(session, self.message)
        self._out = self._spool or assembler.direct(self.message)

    def startData(self) -> None:
        """DATA: open the message; the content comes next, up to the final dot."""
        try:
            self._open()
        except OSError as e:
            raise SMTPReplyError(reply.INSUFFICIENT_STORAGE, f"cannot start a queue file: {e}") from None
        settings = self.server.settings
        self.reader = DataReader(self.write, settings.maxTextLine, settings.normaliseLineEndings)

    def startChunk(self, size: int, last: bool, problem: Reply | None) -> Result:
        """BDAT: ``size`` octets come next, the first chunk opening the message.  They
        are read even when the command is refused (``problem``), so they are never
        taken for commands (RFC 3030 section 3)."""
        settings = self.server.settings
        if problem is None and self.message is None:
            try:
                self._open()
            except OSError as e:
                _log.error("Cannot start a queue file: {error}", error=e)
                problem = reply.INSUFFICIENT_STORAGE
            self.scanner = ContentScanner(self.write, settings.maxTextLine, settings.normaliseLineEndings)
        scanner = self.scanner if problem is None else ContentScanner(lambda _: None, 0, False)
        assert scanner is not None
        self.reader = ChunkReader(scanner, size)
        self.chunk = (size, last, problem)
        if size == 0:
            return self.contentEnded()
        return NO_REPLY  # the reply comes once the chunk's octets are in

    def write(self, data: bytes) -> None:
        """Content octets, dot-unstuffed, as they arrive."""
        message = self.message
        if message is None or self._tooBig or self._writeFailed:
            return
        self._size += len(data)
        if self._size > self.server.settings.maxMessageSize:
            self._tooBig = True
            return
        self._header.feed(data)
        self._nul = self._nul or b"\0" in data
        try:
            assert self._out is not None
            self._out.write(data)
        except OSError as e:  # a full disk: the rest is read and thrown away, and answered 452 at the end
            _log.error("Cannot write queue file {queueId}: {error}", queueId=message.queueId, error=e)
            self._writeFailed = True

    def contentEnded(self) -> Result:
        """The final dot, or the end of a BDAT chunk, has arrived."""
        if isinstance(self.reader, ChunkReader):
            size, last, problem = self.chunk
            self.reader = None
            if problem is not None:
                return problem
            if not last:
                return reply.CHUNK_OK.format(size)
            assert self.scanner is not None
            self.scanner.finish()
            problems = self.scanner.problems
        else:
            assert isinstance(self.reader, DataReader)
            problems = self.reader.problems
            self.reader = None
        return self._finish(problems)

    def _finish(self, problems: ContentProblems) -> Result:
        server = self.server
        message = self.message
        assert message is not None
        settings = server.settings
        refusal = None
        if self._writeFailed:
            refusal = reply.INSUFFICIENT_STORAGE
        elif self._tooBig:
            refusal = tooBig(settings.maxMessageSize)
        elif problems.bareLineEnding and not settings.normaliseLineEndings:
            refusal = reply.BARE_LINE_ENDING
        elif problems.longLine:
            refusal = reply.TEXT_LINE_TOO_LONG.format(settings.maxTextLine)
        elif self._nul and not settings.allowNul:
            refusal = reply.NUL_IN_CONTENT
        else:
            self._header.close()
            refusal = self._headerRefusal()
        if refusal is not None:
            server.resetTransaction()
            raise SMTPReplyError(refusal, f"{refusal.text} (queue id {message.queueId} discarded)")
        spool = self._spool
        if spool is None:
            try:
                assert self._out is not None
                self._out.close()
            except OSError as e:
                server.resetTransaction()
                _log.error("Cannot write queue file {queueId}: {error}", queueId=message.queueId, error=e)
                raise SMTPReplyError(reply.INSUFFICIENT_STORAGE, f"(queue id {message.queueId} discarded)") from None
            return self._commit(message)

        def checked(_: object) -> Result:
            if self.message is not message:
                return reply.CHECK_FAILED  # the client went away meanwhile; nobody hears this
            return self._commit(message)

        def failed(failure: Failure) -> Reply:
            result = reply.CHECK_FAILED if server.closing else server.commandFailed(failure)  # logs the queue id
            server.resetTransaction()
            return result

        def complete(_: object) -> object:
            if self.message is not message:
                return None  # the client went away during the checks: sign and copy nothing
            return server.listener.assembler.complete(server.session, message, spool)

        d: defer.Deferred[object] = defer.succeed(None)
        if server.listener.phases.messagePolicies:
            d = defer.maybeDeferred(server.checked, "checkMessage", lambda: NO_REPLY, spool)
        d.addCallback(complete)
        return d.addCallbacks(checked, failed)

    def _headerRefusal(self) -> Reply | None:
        """Refusals the header section earns, so that nothing that can be refused now
        is bounced later: a loop (too many hops, or a Delivered-To line for one of the
        recipients, which local delivery would fail), or a known user's From or Sender
        that the user may not write (for AUTH users, the rule MAIL FROM is held to)."""
        header, session = self._header, self.server.session
        if header.count > self.server.settings.maxReceivedHeaders:
            return reply.TOO_MANY_HOPS
        recipients = {r.address.lower(): r.address for r in session.recipients}
        user = session.user
        for field in header.kept:
            name = fieldName(field)
            if name == b"delivered-to":
                address = fieldValue(field).decode("utf-8", "replace").strip().lower()
                if address in recipients:
                    return reply.ALREADY_DELIVERED.format(recipients[address])
            elif user is not None and name != b"message-id":
                assert name is not None
                label = name.decode("ascii").capitalize()
                found = mailboxes(field)
                if found is None or not all(user.mayWriteAs(a.strip()) for a in found):
                    return reply.AUTHOR_NOT_OWNED.format(label)
        if user is not None and header.overflow:
            return reply.AUTHOR_NOT_OWNED.format("From")  # too much header to tell
        return None

    def _messageId(self) -> str:
        """The first Message-ID, with its angle brackets, or "" where there is none."""
        for field in self._header.kept:
            if fieldName(field) == b"message-id":
                match = _MESSAGE_ID.match(fieldValue(field))
                return match.group(1).decode("ascii", "replace") if match else ""
        return ""

    def _commit(self, message: IIncomingMessage) -> Result:
        server = self.server
        session = server.session
        sender, count, client = str(session.sender), len(session.recipients), session.client
        logged = (session.sessionId, server.listener.name, self._messageId())
        self.message = None
        server.resetTransaction()
        size = message.size
        d = message.commit()

        def queued(queueId: str) -> Reply:
            maillog.queued(queueId, sender, count, size, client, *logged)
            delivered = getattr(message, "deliveredInSession", None)
            if delivered is not None:
                delivered()
            return reply.QUEUED.format(queueId)

        def notQueued(failure: Failure) -> Reply:
            if isinstance(failure.value, SMTPReplyError):  # the queue said why (e.g. a qmail-queue program)
                return server.refused(failure.value)
            _log.failure("Could not queue message {queueId}", failure, queueId=message.queueId)
            return reply.QUEUE_FAILED

        return d.addCallbacks(queued, notQueued)

    def abort(self) -> None:
        """Throw away the message being received, if any (never raising: this runs as
        the connection ends, whatever went wrong before)."""
        message, spool, self.message, self._spool, self._out = self.message, self._spool, None, None, None
        try:
            if message is not None:
                message.abort()
            if spool is not None:
                spool.close()
        except OSError as e:
            _log.error("Cannot throw away queue file {queueId}: {error}", queueId=message and message.queueId,
                       error=e)

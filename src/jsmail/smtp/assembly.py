"""What goes on top of a received message, and the spool that holds it back from the
queue until end-of-data checks have run.

:class:`Assembler` writes the trace header (RFC 5321 section 4.4) and the fields that
checks added, and decides whether a message can stream straight into the queue file or
must wait in a :class:`Spool`.  When a listener has checks of the whole message (DKIM, DMARC, ARC, content filters) or
modifiers (DKIM signing), smtpd streams the content into a :class:`Spool` instead of
straight into the queue file: the checks may add header fields above it (RFC 8601
section 5 and RFC 7208 section 9.1 put Authentication-Results and Received-SPF at the
top), and header fields that forge this host's Authentication-Results must go
(RFC 8601 section 5).  Small messages stay in memory; larger ones roll over to a
temporary file, so a session never holds more than ``memoryLimit`` octets.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from jsmail import reply
from jsmail._threads import RunInThread
from jsmail.error import SMTPReplyError
from jsmail.headers import FieldDropper, dropFields, fieldName, headerOf, splitHeader
from jsmail.headers import fields as headerFields
from jsmail.interfaces import IIncomingMessage, IModifier
from jsmail.policy.authresults import authResultsField, claimsAuthservId
from jsmail.queue.funnel import NOTHING, Owed
from jsmail.smtp.session import Session

_CHUNK = 65536
_TURN = 1024 * 1024


@lru_cache(maxsize=4)
def _dateOf(second: int) -> str:
    """The RFC 5322 date of a second, made once for all the messages of that second."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


class MemoryBudget:
    """Octets of messages that end-of-data work holds whole in memory at once (a
    content filter's input, what DKIM signing reads), across a listener's sessions:
    past ``limit`` new such work is refused for now (security review M-12)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, octets: int) -> bool:
        if self.used + octets > self.limit:
            return False
        self.used += octets
        return True

    def give(self, octets: int) -> None:
        self.used -= octets


class Spool:
    """The message as received (smtpd's Received field first), for checks to read."""

    def __init__(self, runInThread: RunInThread, memoryLimit: int = 256 * 1024,
                 budget: MemoryBudget | None = None) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=memoryLimit)
        self._runInThread = runInThread
        self._memoryLimit = memoryLimit
        self._bytes: bytes | None = None
        self._budget = budget
        self._reserved = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._file.write(data)

    def read(self) -> defer.Deferred[bytes]:
        """The whole message, in a thread when it is on disk; checks run one after
        another, so two reads never share the file at once.  Only a message within
        ``memoryLimit`` is kept for the next reader: a larger one is read again, so a
        session holds no copy of it between checks (security review M-12)."""
        if self._bytes is not None:
            return defer.succeed(self._bytes)
        if self.size > self._memoryLimit:
            if not self._reserved and self._budget is not None:
                if not self._budget.take(self.size):  # held until the spool closes, with the transaction
                    return defer.fail(SMTPReplyError(reply.CHECKS_BUSY, f"{self._budget.used} octets in checks"))
                self._reserved = self.size
            return self._runInThread(self._readAll)
        self._bytes = self._readAll()
        return defer.succeed(self._bytes)

    def _readAll(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            yield chunk

    def close(self) -> None:
        self._file.close()
        if self._budget is not None and self._reserved:
            self._budget.give(self._reserved)
            self._reserved = 0


def transfer(spool: Spool, message: IIncomingMessage, prefix: bytes, dropField: Callable[[bytes], bool],
             clock: IReactorTime) -> defer.Deferred[None]:
    """Write ``prefix`` and then the spooled message into ``message``, leaving out the
    header fields ``dropField`` picks; a large message goes in turns of ``_TURN``
    octets, so other sessions are served in between."""
    chunks = spool.chunks()
    header, rest, _ = splitHeader(chunks, spool.size)  # no cut: every forged field goes, however far down
    message.write(prefix + dropFields(header, dropField) + rest)
    done: defer.Deferred[None] = defer.Deferred()

    def turn() -> None:
        try:
            for _ in range(_TURN // _CHUNK):
                chunk = next(chunks, None)
                if chunk is None:
                    done.callback(None)
                    return
                message.write(chunk)
        except Exception:
            done.errback()
            return
        clock.callLater(0, turn)

    turn()
    return done


def sanitise(text: str) -> str:
    """Keep a client-supplied name from breaking the header it is put in."""
    return "".join(c if c.isprintable() and c not in "()\\;" else "?" for c in text)


def fieldLines(fields: Iterable[str]) -> bytes:
    """Header fields (without line ends) as CR LF lines."""
    return "".join(f + "\r\n" for f in fields).encode("utf-8")


class Assembler:
    """Puts what a listener owes on top of each message it receives: the Received
    field, the checks' fields and Authentication-Results, and the modifiers' fields;
    and takes forged Authentication-Results fields out (RFC 8601 section 5)."""

    def __init__(self, hostname: str, authservId: str, showAuth: bool, modifiers: Sequence[IModifier],
                 spoolAlways: bool, clock: IReactorTime, runInThread: RunInThread, owed: Owed = NOTHING,
                 budget: MemoryBudget | None = None) -> None:
        """``spoolAlways``: the listener has end-of-message checks, so every message
        waits in a spool for them.  ``owed``: what the listener's sink adds to each
        message (Date and Message-ID on submission, RFC 6409 section 8); when there are
        modifiers it is added here instead, before them, so that a DKIM signature covers
        the fields the message will carry rather than signing their absence."""
        self.hostname = hostname
        self.authservId = authservId or hostname
        self.showAuth = showAuth
        self.modifiers = tuple(modifiers)
        self.spoolAlways = spoolAlways
        self.clock = clock
        self.runInThread = runInThread
        self.owed = owed
        self.budget = budget

    def begin(self, session: Session, message: IIncomingMessage) -> Spool | None:
        """Start the message: the trace header and the fields checks added so far go
        into the queue file, or into a spool when end-of-message work is due."""
        received = self.receivedHeader(session, message.queueId)
        additions = session.added.inOrder()
        if self.spoolAlways or self.modifiers or any(v.results for v in additions):
            spool = Spool(self.runInThread, budget=self.budget)
            spool.write(received)
            return spool
        message.write(fieldLines(h for v in additions for h in v.headers) + received)
        return None

    def direct(self, message: IIncomingMessage) -> FieldDropper:
        """Where the content goes when :meth:`begin` needs no spool: into the queue
        file as it arrives, forged Authentication-Results fields left out on the way,
        on every listener whether or not it runs checks."""
        return FieldDropper(message.write, self.forged)

    def forged(self, field: bytes) -> bool:
        """An Authentication-Results field claiming this host's authserv-id, which
        only this host may add (RFC 8601 section 5)."""
        return claimsAuthservId(field, self.authservId)

    def receivedHeader(self, session: Session, queueId: str) -> bytes:
        """The trace header of RFC 5321 section 4.4, written before the content."""
        stamp = _dateOf(int(self.clock.seconds()))
        forClause = f"\r\n\tfor <{session.recipients[0].address}>" if len(session.recipients) == 1 else ""
        comments = ""
        tcpInfo = f"{session.clientHost} " if session.clientHost else ""  # RFC 5321 4.4 TCP-info
        if session.tlsInfo:
            comments += f"\r\n\t(using {session.tlsInfo})"
        if session.user is not None and self.showAuth:
            comments += f"\r\n\t(authenticated as {sanitise(session.user.name)})"
        return (
            f"Received: from {sanitise(session.helo or 'unknown')} ({tcpInfo}[{session.clientAddress}]){comments}\r\n"
            f"\tby {self.hostname} (jsmail) with {session.withProtocol()} id {queueId}"
            f"{forClause};\r\n\t{stamp}\r\n"
        ).encode()

    def complete(self, session: Session, message: IIncomingMessage, spool: Spool) -> defer.Deferred[None]:
        """Put the checks' fields and the modifiers' on top of the spooled message and
        write it all into the queue file."""
        additions = session.added.inOrder()
        fields = [h for v in additions for h in v.headers]
        results = [r for v in additions for r in v.results]
        if results:
            fields.insert(0, authResultsField(self.authservId, results))
        prefix = fieldLines(fields)

        if self.modifiers:

            def modify(data: bytes) -> defer.Deferred[bytes]:
                nonlocal prefix
                present = {fieldName(f) for f in headerFields(headerOf(data))}
                prefix += fieldLines(self.owed.fieldsFor(present, message.queueId, self.clock.seconds()))
                return self._modify(session, prefix + dropFields(data, self.forged))

            d: defer.Deferred[bytes] = spool.read().addCallback(modify)
        else:
            d = defer.succeed(b"")
        return d.addCallback(lambda added: transfer(spool, message, added + prefix, self.forged, self.clock))

    @defer.inlineCallbacks
    def _modify(self, session: Session, message: bytes) -> Any:
        """Run the modifiers in order; each sees the fields earlier ones added on top."""
        added = b""
        for modifier in self.modifiers:
            fields = yield defer.maybeDeferred(modifier.modify, session, added + message)
            added = fieldLines(fields) + added
        return added

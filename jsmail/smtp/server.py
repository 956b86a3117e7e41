"""The ESMTP server (qmail-smtpd's job): RFC 5321 with PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, ENHANCEDSTATUSCODES and CHUNKING.

One :class:`ESMTPServer` per connection reads commands, asks its checks
(:class:`jsmail.interfaces.IPolicy`), and streams message content into the queue.

Why not :mod:`twisted.mail.smtp`: it answers pipelined commands out of order when a
check is asynchronous (Twisted ticket 8126), ignores MAIL/RCPT parameters and never makes
the queue durable before saying 250.  Here every command is answered in order: while a
reply is pending (a check or the queue commit returned an unfired Deferred) the
transport is paused and later commands wait in the buffer, so a pipelining client sees
its replies in the order of its commands (RFC 2920 section 3.1).

Commands end in CR LF; a bare LF is tolerated there (as qmail and Postfix do), because
a command line cannot smuggle anything.  Message content is stricter: see
:mod:`jsmail.smtp.data`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import format_datetime
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from OpenSSL import SSL
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, interfaces as iinternet
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import maillog, reply
from jsmail._threads import RunInThread, runNow
from jsmail.smtp.data import ChunkReader, ContentProblems, ContentScanner, DataReader, HopCounter
from jsmail.address import Address, parsePath
from jsmail.smtp.sasl import MECHANISMS, LoginMechanism, PlainMechanism
from jsmail.auth import IMailUser, TemporaryAuthFailure
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.policy.authresults import authResultsField, claimsAuthservId
from jsmail.smtp.assembly import Spool, dropFields, transfer
from jsmail.interfaces import IIncomingMessage, IMessagePolicy, IMessageSink, IModifier, IPolicy
from jsmail.reply import Reply
from jsmail.policy.verdict import Verdict, asVerdict

_log = Logger()

_BODY_TYPES = ("7BIT", "8BITMIME")


@dataclass(frozen=True)
class ServerSettings:
    """What one SMTP listener enforces.  Every limit is here, so every limit is
    configurable (see ``etc/jsmail.toml`` for each one's meaning)."""

    hostname: str = "localhost"
    greeting: str = ""  # the 220 text before " ESMTP" (qmail's smtpgreeting); empty: jsmail's own
    maxMessageSize: int = 25 * 1024 * 1024
    maxCommandLine: int = 512  # RFC 5321 4.5.3.1.4, including CR LF
    maxTextLine: int = 1000  # RFC 5321 4.5.3.1.6, including CR LF
    maxRecipients: int = 100  # RFC 5321 4.5.3.1.8 says at least 100
    maxErrors: int = 20
    idleTimeout: float = 300.0  # RFC 5321 4.5.3.2.7
    maxConnections: int = 1000
    maxConnectionsPerClient: int = 20
    normaliseLineEndings: bool = False
    maxReceivedHeaders: int = 100  # loop detection, RFC 5321 6.3
    requireTLS: bool = False  # submission (RFC 6409 + RFC 3207): STARTTLS before AUTH and MAIL
    requireAuth: bool = False  # submission: AUTH before MAIL
    allowPlaintextAuth: bool = False  # offer AUTH without TLS (RFC 4954 section 4 advises not to)
    allowProxyAuth: bool = False  # PLAIN authzid may differ from authcid
    maxAuthFailures: int = 3  # failures answered with 535; the next one closes with 421
    authFailureDelay: float = 1.0  # seconds before the first 535, doubling each time
    showAuthInReceived: bool = False
    authservId: str = ""  # Authentication-Results authserv-id (RFC 8601 section 2.5); empty: hostname


_TRANSACTION_PHASES = ("checkSender", "checkRecipient", "checkMessage")


@dataclass
class Session:
    """What is known about the client; checks read it, smtpd keeps it up to date."""

    clientAddress: str
    clientPort: int = 0
    clientHost: str = ""  # the client's name where known (tcpserver's TCPREMOTEHOST), for Received
    listener: str = "smtp"
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    tlsInfo: str = ""  # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384", once the handshake is done
    user: IMailUser | None = None
    sender: Address | None = None
    mailParams: dict[str, str | None] = field(default_factory=dict)
    recipients: list[Recipient] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # what checks learnt about the connection
    transactionNotes: dict[str, Any] = field(default_factory=dict)  # ... and about this message
    added: dict[str, list[Verdict]] = field(default_factory=dict)  # accepting verdicts with additions, by phase

    @property
    def client(self) -> str:
        return f"[{self.clientAddress}]:{self.clientPort}"

    def resetTransaction(self) -> None:
        self.sender = None
        self.mailParams = {}
        self.recipients = []
        self.transactionNotes = {}
        for phase in _TRANSACTION_PHASES:
            self.added.pop(phase, None)

    def additions(self) -> list[Verdict]:
        """Every accepting verdict that adds something, in phase order."""
        return [v for phase in ("checkConnect", "checkHelo", *_TRANSACTION_PHASES) for v in self.added.get(phase, ())]


Result = Reply | defer.Deferred[Reply]


@implementer(IHandshakeListener)
class ESMTPServer(Protocol, TimeoutMixin):
    """One SMTP session.  See the module docstring for the rules it keeps.

    ``tls`` (a context factory) enables STARTTLS, or with ``implicitTLS`` says the
    transport is TLS from the first byte (port 465).  ``portal`` enables AUTH.
    """

    def __init__(
        self,
        settings: ServerSettings,
        queue: IMessageSink,
        clock: iinternet.IReactorTime,
        policies: Sequence[IPolicy] = (),
        listener: str = "smtp",
        tls: Any = None,
        portal: Portal | None = None,
        implicitTLS: bool = False,
        modifiers: Sequence[IModifier] = (),
        runInThread: RunInThread | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.policies = tuple(p for p in policies if IPolicy.providedBy(p))
        self.messagePolicies = tuple(p for p in policies if IMessagePolicy.providedBy(p))
        self.modifiers = tuple(modifiers)
        self.runInThread = runInThread if runInThread is not None else runNow
        self.listener = listener
        self.tls = tls
        self.portal = portal
        self.implicitTLS = implicitTLS
        self.clock = clock
        self.callLater = clock.callLater  # TimeoutMixin's timer runs on the given clock
        self.session: Session = Session("unknown")
        self._buffer = b""
        self._discardingLongLine = False
        self._waiting = False
        self._errors = 0
        self._reader: DataReader | ChunkReader | None = None
        self._message: IIncomingMessage | None = None
        self._scanner: ContentScanner | None = None
        self._spool: Spool | None = None
        self._messageTooBig = False
        self._contentSize = 0
        self._hops = HopCounter()
        self._closing = False
        self._sasl: PlainMechanism | LoginMechanism | None = None
        self._authFailures = 0

    # -- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        clientAddress, clientPort = self.clientOf(self.transport)
        self.session = Session(clientAddress=clientAddress, clientPort=clientPort, listener=self.listener,
                               tls=self.implicitTLS)
        maillog.connect(self.session.client, self.listener)
        self.setTimeout(self.settings.idleTimeout)
        self._runCommand(lambda: self._checked("checkConnect", self._greeting))

    def clientOf(self, transport: Any) -> tuple[str, int]:
        """The client's address and port (a UCSPI server takes them from tcpserver's
        environment instead)."""
        peer = transport.getPeer()
        return getattr(peer, "host", "unknown"), getattr(peer, "port", 0)

    def _greeting(self) -> Reply:
        if self.settings.greeting:
            return Reply(220, "", f"{self.settings.greeting} ESMTP")
        return reply.SERVICE_READY.format(self.settings.hostname)

    def handshakeCompleted(self) -> None:
        connection = self.transport.getHandle()
        self.session.tlsInfo = f"{connection.get_protocol_version_name()} with cipher {connection.get_cipher_name()}"
        maillog.tls(self.session.client, self.session.tlsInfo)

    def connectionLost(self, reason: Failure = None) -> None:
        if reason is not None and reason.check(SSL.Error) and not self.session.tlsInfo:
            maillog.tlsFailed(self.session.client, reason.getErrorMessage())
        self._closing = True
        self.setTimeout(None)
        self._abortMessage()

    def timeoutConnection(self) -> None:
        self._sendReply(reply.IDLE_TIMEOUT)
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._abortMessage()
        self.transport.loseConnection()

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """Handle buffered input until it runs out or a reply must be waited for."""
        while self._buffer and not self._waiting and not self._closing:
            if self._reader is not None:
                rest = self._reader.feed(self._buffer)
                self._buffer = b""
                if rest is None:
                    return
                self._buffer = rest
                self._runCommand(self._contentEnded)
                continue
            lf = self._buffer.find(b"\n")
            if lf < 0:
                if len(self._buffer) > self.settings.maxCommandLine:
                    self._buffer = b""
                    if not self._discardingLongLine:
                        self._discardingLongLine = True
                        self._sendReply(reply.LINE_TOO_LONG)
                return
            line, self._buffer = self._buffer[:lf], self._buffer[lf + 1 :]
            if self._discardingLongLine:
                self._discardingLongLine = False
                continue
            if self._sasl is not None:
                self._runCommand(lambda line=line: self._saslResponse(line.removesuffix(b"\r")))
                continue
            if len(line) + 1 > self.settings.maxCommandLine:
                self._sendReply(reply.LINE_TOO_LONG)
                continue
            self._runCommand(lambda line=line: self._dispatch(line.removesuffix(b"\r")))

    def _runCommand(self, command: Callable[[], Result]) -> None:
        """Run one command; if its reply is not ready, hold all later input until it is."""
        try:
            result = command()
        except SMTPReplyError as e:
            result = self._refused(e)
        except Exception:
            _log.failure("Unexpected error handling a command from {client}", client=self.session.client)
            result = reply.CHECK_FAILED
        if isinstance(result, defer.Deferred):
            self._waiting = True
            self.setTimeout(None)
            self.transport.pauseProducing()
            result.addErrback(self._commandFailed)
            result.addCallback(self._commandDone)
        else:
            self._sendReply(result)

    def _commandFailed(self, failure: Failure) -> Reply:
        if failure.check(SMTPReplyError):
            return self._refused(failure.value)
        _log.failure("Unexpected error handling a command from {client}", failure, client=self.session.client)
        return reply.CHECK_FAILED

    def _commandDone(self, result: Reply) -> None:
        self._waiting = False
        if self._closing:
            return  # the client went away while its reply was pending
        self._sendReply(result)
        if self._closing:
            return
        self.setTimeout(self.settings.idleTimeout)
        self.transport.resumeProducing()
        self._process()

    def _refused(self, error: SMTPReplyError) -> Reply:
        maillog.reject(self.session.client, self._currentCommand, error.reply, error.reason,
                       self._message.queueId if self._message else "-")
        return error.reply

    def _sendReply(self, result: Reply) -> None:
        if result is _NO_REPLY:
            return
        if result.code >= 400 and result.code != 421:
            self._errors += 1
        self.transport.write(b"".join(result.lines()))
        if result.code == 421 or (self._currentCommand == "CONNECT" and result.code >= 400):
            self._close()
        elif self._errors >= self.settings.maxErrors:
            self.transport.write(b"".join(reply.TOO_MANY_ERRORS.lines()))
            self._close()

    # -- commands ---------------------------------------------------------------------

    _currentCommand = "CONNECT"

    def _dispatch(self, line: bytes) -> Result:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return reply.NOT_UTF8
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        self._currentCommand = verb
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if handler is None:
            return reply.NOT_IMPLEMENTED if verb in ("EXPN", "TURN", "ETRN") else reply.UNKNOWN_COMMAND
        result: Result = handler(argument)
        return result

    def smtp_EHLO(self, argument: str) -> Result:
        return self._hello(argument, esmtp=True)

    def smtp_HELO(self, argument: str) -> Result:
        return self._hello(argument, esmtp=False)

    def _hello(self, argument: str, esmtp: bool) -> Result:
        name = argument.strip()
        if not name or " " in name or any(ord(c) < 32 for c in name):
            return reply.HELO_SYNTAX
        self._resetTransaction()

        def accept() -> Reply:
            self.session.helo, self.session.esmtp = name, esmtp
            greets = reply.GREETS.format(self.settings.hostname, name)
            if not esmtp:
                return greets
            return greets.withText("\n".join([greets.text, *self.extensions()]))

        return self._checked("checkHelo", accept, name)

    def extensions(self) -> list[str]:
        """The EHLO keywords this session offers."""
        keywords = [
            "PIPELINING",
            f"SIZE {self.settings.maxMessageSize}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if self.tls is not None and not self.session.tls:
            keywords.append("STARTTLS")
        if self._authOffered():
            keywords.append("AUTH " + " ".join(MECHANISMS))
        return keywords

    def _authOffered(self) -> bool:
        return (self.portal is not None and self.session.user is None
                and (self.session.tls or self.settings.allowPlaintextAuth))

    def smtp_MAIL(self, argument: str) -> Result:
        if self.session.helo is None:
            return reply.HELO_FIRST
        if self.session.sender is not None:
            return reply.NESTED_MAIL
        if self.settings.requireTLS and not self.session.tls:
            return reply.STARTTLS_FIRST
        if self.settings.requireAuth and self.session.user is None:
            return reply.AUTH_REQUIRED
        if argument[:5].upper() != "FROM:":
            return reply.BAD_SYNTAX.withText("Syntax: MAIL FROM:<address> [parameters]")
        address, params = parsePath(argument[5:], allowNull=True, utf8=True)
        self._checkMailParams(params)
        if "SMTPUTF8" not in params and not argument.isascii():
            return reply.SMTPUTF8_REQUIRED
        user = self.session.user
        if user is not None and not user.maySendAs(str(address)):
            raise SMTPReplyError(reply.SENDER_NOT_OWNED.withText(f"Sender <{address}> not allowed for user {user.name}"),
                                 f"user {user.name} tried sender <{address}>")

        def accept() -> Reply:
            self.session.sender, self.session.mailParams = address, params
            return reply.SENDER_OK

        return self._checked("checkSender", accept, address, params)

    def _checkMailParams(self, params: dict[str, str | None]) -> None:
        for key, value in params.items():
            if key == "AUTH" and self.portal is not None:
                continue  # RFC 4954 section 5: accepted; jsmail trusts no client's claim
            if not self.session.esmtp or key not in ("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"):
                raise SMTPReplyError(reply.UNKNOWN_PARAMETER.withText(f"Unsupported parameter {key}"))
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    raise SMTPReplyError(reply.BAD_PARAMETER.withText("SIZE needs a number of octets"))
                if int(value) > self.settings.maxMessageSize:
                    raise SMTPReplyError(self._tooBig())
            elif key == "BODY" and (value or "").upper() not in _BODY_TYPES:
                raise SMTPReplyError(reply.BAD_PARAMETER.withText("BODY must be 7BIT or 8BITMIME"))
            elif key == "SMTPUTF8" and value is not None:
                raise SMTPReplyError(reply.BAD_PARAMETER.withText("SMTPUTF8 takes no value"))
            elif key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
                raise SMTPReplyError(reply.BAD_PARAMETER.withText("RET must be FULL or HDRS (RFC 3461)"))
            elif key == "ENVID" and not _isXtext(value, 100):
                raise SMTPReplyError(reply.BAD_PARAMETER.withText("ENVID must be xtext of at most 100 octets"))

    def _checkRcptParams(self, params: dict[str, str | None]) -> None:
        """DSN's RCPT parameters (RFC 3461 section 4): NOTIFY and ORCPT."""
        for key, value in params.items():
            if key == "NOTIFY":
                words = (value or "").upper().split(",")
                if not value or not (words == ["NEVER"] or set(words) <= {"SUCCESS", "FAILURE", "DELAY"}):
                    raise SMTPReplyError(reply.BAD_PARAMETER.withText(
                        "NOTIFY must be NEVER, or one or more of SUCCESS, FAILURE, DELAY"))
            elif key == "ORCPT":
                addressType, semicolon, address = (value or "").partition(";")
                if not semicolon or not addressType or not _isXtext(address, 500):
                    raise SMTPReplyError(reply.BAD_PARAMETER.withText("ORCPT must be addr-type;xtext"))
            else:
                raise SMTPReplyError(reply.UNKNOWN_PARAMETER.withText(f"Unsupported parameter {key}"))

    def _tooBig(self) -> Reply:
        return reply.MESSAGE_TOO_BIG.format(self.settings.maxMessageSize)

    def smtp_RCPT(self, argument: str) -> Result:
        if self.session.sender is None:
            return reply.MAIL_FIRST
        if argument[:3].upper() != "TO:":
            return reply.BAD_SYNTAX.withText("Syntax: RCPT TO:<address> [parameters]")
        if len(self.session.recipients) >= self.settings.maxRecipients:
            return reply.TOO_MANY_RECIPIENTS
        utf8 = "SMTPUTF8" in self.session.mailParams
        address, params = parsePath(argument[3:], allowNull=False, utf8=utf8, postmasterDomain=self.settings.hostname)
        self._checkRcptParams(params)

        def accept() -> Reply:
            self.session.recipients.append(Recipient(str(address), params))
            return reply.RECIPIENT_OK

        return self._checked("checkRecipient", accept, address, params)

    def _checked(self, phase: str, accept: Callable[[], Reply], *args: Any) -> Result:
        """Run every policy's check for ``phase`` in order, then ``accept``.

        Checks that answer at once decide at once; a Deferred makes the reply wait.
        The first refusal wins; any other exception is a temporary failure, never a
        dropped session.  What accepting verdicts add is kept for the message only
        once the whole phase has said yes.
        """
        policies = self.messagePolicies if phase == "checkMessage" else self.policies
        kept: list[Verdict] = []

        def accepted() -> Reply:
            self.session.added[phase] = self.session.added.get(phase, []) + kept if phase != "checkHelo" else kept
            return accept()

        return self._runChecks([getattr(p, phase) for p in policies], kept, accepted, args)

    def _runChecks(self, pending: list[Callable[..., Any]], kept: list[Verdict], accept: Callable[[], Reply],
                   args: tuple[Any, ...]) -> Result:
        while pending:
            answer = pending.pop(0)(self.session, *args)
            if isinstance(answer, defer.Deferred):
                return answer.addCallback(self._keep, kept).addCallback(
                    lambda _: self._runChecks(pending, kept, accept, args))
            self._keep(answer, kept)
        return accept()

    @staticmethod
    def _keep(answer: object, kept: list[Verdict]) -> None:
        verdict = asVerdict(answer)
        verdict.raiseIfRefused()
        if verdict.headers or verdict.results:
            kept.append(verdict)

    def smtp_DATA(self, argument: str) -> Result:
        if argument:
            return reply.BAD_SYNTAX.withText("DATA takes no argument")
        problem = self._transactionProblem()
        if problem is not None:
            return problem
        if self._scanner is not None:  # this transaction's content came by BDAT
            return reply.BDAT_MIXED
        self._startMessage()
        self._reader = DataReader(self._writeContent, self.settings.maxTextLine, self.settings.normaliseLineEndings)
        return reply.START_DATA

    def smtp_BDAT(self, argument: str) -> Result:
        words = argument.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not words or len(words) > 2 or (len(words) == 2 and not last) or not words[0].isdigit():
            return reply.BAD_SYNTAX.withText("Syntax: BDAT <size> [LAST]")
        size = int(words[0])
        problem = self._transactionProblem()
        if problem is None and self._message is None:
            self._startMessage()
            self._scanner = ContentScanner(self._writeContent, self.settings.maxTextLine,
                                           self.settings.normaliseLineEndings)
        # The chunk's octets are read even when the command is refused, so they are
        # never taken for commands (RFC 3030 section 3).
        scanner = self._scanner if problem is None else ContentScanner(lambda _: None, 0, False)
        self._reader = ChunkReader(scanner, size)
        self._chunk = (size, last, problem)
        if size == 0:
            return self._contentEnded()
        return _NO_REPLY  # the reply comes once the chunk's octets are in

    def _transactionProblem(self) -> Reply | None:
        if self.session.sender is None:
            return reply.MAIL_FIRST
        if not self.session.recipients:
            return reply.RCPT_FIRST.withText("No valid recipients")
        return None

    def _startMessage(self) -> None:
        session = self.session
        envelope = Envelope(
            sender=str(session.sender),
            recipients=tuple(session.recipients),
            mailParams=dict(session.mailParams),
            arrival=self.clock.seconds(),
            clientAddress=session.clientAddress,
            helo=session.helo or "",
            protocol=self._withProtocol(),
        )
        self._message = self.queue.newMessage(envelope)
        self._messageTooBig = False
        self._contentSize = 0
        self._hops = HopCounter()
        received = self._receivedHeader(self._message.queueId)
        additions = session.additions()
        if self.messagePolicies or self.modifiers or any(v.results for v in additions):
            # Held back: fields go on top once every check is done, and forged
            # Authentication-Results fields come out (see jsmail.smtp.assembly).
            self._spool = Spool(self.runInThread)
            self._spool.write(received)
        else:
            self._message.write(_fields(h for v in additions for h in v.headers) + received)

    def _writeContent(self, data: bytes) -> None:
        message = self._message
        if message is None or self._messageTooBig:
            return
        self._contentSize += len(data)
        if self._contentSize > self.settings.maxMessageSize:
            self._messageTooBig = True
            return
        self._hops.feed(data)
        (self._spool or message).write(data)

    def _contentEnded(self) -> Result:
        """The final dot, or the end of a BDAT chunk, has arrived."""
        if isinstance(self._reader, ChunkReader):
            size, last, problem = self._chunk
            self._reader = None
            if problem is not None:
                return problem
            if not last:
                return reply.CHUNK_OK.format(size)
            assert self._scanner is not None
            self._scanner.finish()
            problems = self._scanner.problems
        else:
            assert isinstance(self._reader, DataReader)
            problems = self._reader.problems
            self._reader = None
        return self._finishMessage(problems)

    def _finishMessage(self, problems: ContentProblems) -> Result:
        message = self._message
        assert message is not None
        refusal = None
        if self._messageTooBig:
            refusal = self._tooBig()
        elif problems.bareLineEnding and not self.settings.normaliseLineEndings:
            refusal = reply.BARE_LINE_ENDING
        elif problems.longLine:
            refusal = reply.TEXT_LINE_TOO_LONG.format(self.settings.maxTextLine)
        elif self._hops.count > self.settings.maxReceivedHeaders:
            refusal = reply.TOO_MANY_HOPS
        if refusal is not None:
            self._resetTransaction()
            raise SMTPReplyError(refusal, f"{refusal.text} (queue id {message.queueId} discarded)")
        if self._spool is None:
            return self._commit(message)
        spool = self._spool

        def checked(_: object) -> Result:
            if self._message is not message:
                return reply.CHECK_FAILED  # the client went away meanwhile; nobody hears this
            return self._commit(message)

        def failed(failure: Failure) -> Reply:
            result = reply.CHECK_FAILED if self._closing else self._commandFailed(failure)  # logs the queue id
            self._resetTransaction()
            return result

        def complete(_: object) -> object:
            if self._message is not message:
                return None  # the client went away during the checks: sign and copy nothing
            return self._completeMessage(message, spool)

        d = defer.succeed(None)
        if self.messagePolicies:
            d = defer.maybeDeferred(self._checked, "checkMessage", lambda: _NO_REPLY, spool)
        d.addCallback(complete)
        return d.addCallbacks(checked, failed)

    def _completeMessage(self, message: IIncomingMessage, spool: Spool) -> defer.Deferred[None]:
        """Put the checks' fields and the modifiers' on top of the spooled message and
        write it all into the queue file (see :mod:`jsmail.smtp.assembly`)."""
        additions = self.session.additions()
        authservId = self.settings.authservId or self.settings.hostname
        fields = [h for v in additions for h in v.headers]
        results = [r for v in additions for r in v.results]
        if results:
            fields.insert(0, authResultsField(authservId, results))
        prefix = _fields(fields)

        def forged(field: bytes) -> bool:
            return claimsAuthservId(field, authservId)

        if self.modifiers:
            d: defer.Deferred[bytes] = spool.read().addCallback(lambda data: self._modify(prefix + dropFields(data, forged)))
        else:
            d = defer.succeed(b"")
        return d.addCallback(lambda added: transfer(spool, message, added + prefix, forged, self.clock))

    @defer.inlineCallbacks
    def _modify(self, message: bytes) -> Any:
        """Run the modifiers in order; each sees the fields earlier ones added on top."""
        added = b""
        for modifier in self.modifiers:
            fields = yield defer.maybeDeferred(modifier.modify, self.session, added + message)
            added = _fields(fields) + added
        return added

    def _commit(self, message: IIncomingMessage) -> Result:
        sender, count = str(self.session.sender), len(self.session.recipients)
        self._message = None
        self._resetTransaction()
        size = message.size
        d = message.commit()

        def queued(queueId: str) -> Reply:
            maillog.queued(queueId, sender, count, size, self.session.client)
            return reply.QUEUED.format(queueId)

        def notQueued(failure: Failure) -> Reply:
            if failure.check(SMTPReplyError):  # the queue said why (e.g. a qmail-queue program)
                return self._refused(failure.value)
            _log.failure("Could not queue message {queueId}", failure, queueId=message.queueId)
            return reply.QUEUE_FAILED

        return d.addCallbacks(queued, notQueued)

    def smtp_STARTTLS(self, argument: str) -> Result:
        if argument:
            return reply.BAD_SYNTAX.withText("STARTTLS takes no argument")
        if self.session.tls:
            return reply.TLS_ACTIVE
        if self.tls is None:
            return reply.TLS_UNAVAILABLE
        if self.session.sender is not None:
            return reply.TLS_IN_TRANSACTION
        self.transport.write(b"".join(reply.TLS_READY.lines()))
        # RFC 3207 section 4.2 and CVE-2011-0411: anything the client sent after
        # STARTTLS in plaintext is dropped, and all that was learnt before is forgotten.
        self._buffer = b""
        self._resetTransaction()
        self.session.helo, self.session.esmtp, self.session.tls = None, False, True
        self.transport.startTLS(self.tls)
        return _NO_REPLY

    def smtp_AUTH(self, argument: str) -> Result:
        if self.portal is None:
            return reply.AUTH_UNAVAILABLE
        if self.settings.requireTLS and not self.session.tls:
            return reply.STARTTLS_FIRST
        if not self._authOffered():
            return reply.AUTH_ALREADY if self.session.user is not None else reply.AUTH_ENCRYPTION_REQUIRED
        if self.session.helo is None:
            return reply.HELO_FIRST
        if self.session.sender is not None:
            return reply.AUTH_IN_TRANSACTION
        name, _, initial = argument.strip().partition(" ")
        mechanism = MECHANISMS.get(name.upper())
        if mechanism is None:
            return reply.AUTH_UNKNOWN_MECHANISM
        self._sasl = PlainMechanism(self.settings.allowProxyAuth) if mechanism is PlainMechanism else mechanism()
        if not initial:
            return reply.AUTH_CHALLENGE.withText(self._sasl.challenge())
        return self._saslResponse((b"" if initial == "=" else initial.encode("utf-8")))

    def _saslResponse(self, line: bytes) -> Result:
        """One client line of a SASL exchange: a challenge back, or a login attempt."""
        mechanism = self._sasl
        assert mechanism is not None
        try:
            answer = mechanism.respond(line.decode("ascii", "replace"))
        except SMTPReplyError:
            self._sasl = None
            raise
        if isinstance(answer, str):
            return reply.AUTH_CHALLENGE.withText(answer)
        self._sasl = None
        d = self.portal.login(answer, None, IMailUser)  # type: ignore[union-attr]
        return d.addCallbacks(self._authenticated, self._authFailed, errbackArgs=(answer.username,))

    def _authenticated(self, result: tuple[Any, IMailUser, Any]) -> Reply:
        _, user, _ = result
        self.session.user = user
        maillog.auth(self.session.client, user.name, "ok")
        return reply.AUTH_OK

    def _authFailed(self, failure: Failure, username: bytes) -> Result:
        name = username.decode("utf-8", "replace")
        if failure.check(TemporaryAuthFailure):
            maillog.auth(self.session.client, name, f"temporary failure: {failure.getErrorMessage()}")
            return reply.AUTH_TEMPORARY
        if not failure.check(UnauthorizedLogin):
            _log.failure("Authentication of {name} failed", failure, name=name)
            return reply.AUTH_TEMPORARY
        self._authFailures += 1
        maillog.auth(self.session.client, name, f"bad credentials (failure {self._authFailures})")
        if self._authFailures > self.settings.maxAuthFailures:
            return reply.AUTH_TOO_MANY_FAILURES
        delay = self.settings.authFailureDelay * 2 ** (self._authFailures - 1)
        return deferLater(self.clock, delay, lambda: reply.AUTH_BAD_CREDENTIALS)

    def smtp_RSET(self, argument: str) -> Result:
        self._resetTransaction()
        return reply.RESET_OK

    def smtp_NOOP(self, argument: str) -> Result:
        return reply.OK

    def smtp_VRFY(self, argument: str) -> Result:
        if not argument.strip():
            return reply.BAD_SYNTAX.withText("Syntax: VRFY <address>")
        return reply.CANNOT_VRFY

    def smtp_HELP(self, argument: str) -> Result:
        return reply.HELP

    def smtp_QUIT(self, argument: str) -> Result:
        self.transport.write(b"".join(reply.CLOSING.lines()))
        self._close()
        return _NO_REPLY

    # -- helpers ----------------------------------------------------------------------

    def _resetTransaction(self) -> None:
        self._abortMessage()
        self.session.resetTransaction()
        self._scanner = None

    def _abortMessage(self) -> None:
        if self._message is not None:
            self._message.abort()
            self._message = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _withProtocol(self) -> str:
        """The RFC 3848 / RFC 6531 "with" keyword: ESMTP, ESMTPS, ESMTPA, ESMTPSA, ..."""
        if not self.session.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if "SMTPUTF8" in self.session.mailParams else "ESMTP"
        return base + ("S" if self.session.tls else "") + ("A" if self.session.user is not None else "")

    def _receivedHeader(self, queueId: str) -> bytes:
        """The trace header of RFC 5321 section 4.4, written before the content."""
        session = self.session
        stamp = format_datetime(datetime.fromtimestamp(self.clock.seconds(), timezone.utc))
        forClause = f"\r\n\tfor <{session.recipients[0].address}>" if len(session.recipients) == 1 else ""
        comments = ""
        tcpInfo = f"{session.clientHost} " if session.clientHost else ""  # RFC 5321 4.4 TCP-info
        if session.tlsInfo:
            comments += f"\r\n\t(using {session.tlsInfo})"
        if session.user is not None and self.settings.showAuthInReceived:
            comments += f"\r\n\t(authenticated as {_sanitise(session.user.name)})"
        header = (
            f"Received: from {_sanitise(session.helo or 'unknown')} ({tcpInfo}[{session.clientAddress}]){comments}\r\n"
            f"\tby {self.settings.hostname} (jsmail) with {self._withProtocol()} id {queueId}"
            f"{forClause};\r\n\t{stamp}\r\n"
        ).encode("utf-8")
        return header


def _isXtext(value: str | None, limit: int) -> bool:
    """RFC 3461 section 4: printable ASCII but "+" and "=", or "+XX" hex escapes."""
    if not value or len(value) > limit:
        return False
    return re.fullmatch(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+", value) is not None


def _sanitise(text: str) -> str:
    """Keep a client-supplied name from breaking the header it is put in."""
    return "".join(c if c.isprintable() and c not in "()\\;" else "?" for c in text)


_NO_REPLY = Reply(0, "", "")


def _fields(fields: Iterable[str]) -> bytes:
    return "".join(f + "\r\n" for f in fields).encode("utf-8")


class _Refuse(Protocol):
    """Says one 421 reply and hangs up: used when connection limits are reached."""

    def __init__(self, refusal: Reply) -> None:
        self.refusal = refusal

    def connectionMade(self) -> None:
        self.transport.write(b"".join(self.refusal.lines()))
        self.transport.loseConnection()


class ESMTPServerFactory(Factory):
    """Builds :class:`ESMTPServer` sessions for one listener, enforcing the limits on
    connections in total and per client address."""

    noisy = False

    def __init__(
        self,
        settings: ServerSettings,
        queue: IMessageSink,
        clock: iinternet.IReactorTime,
        policies: Sequence[IPolicy] = (),
        listener: str = "smtp",
        tls: Any = None,
        portal: Portal | None = None,
        implicitTLS: bool = False,
        modifiers: Sequence[IModifier] = (),
        runInThread: RunInThread | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.policies = tuple(policies)
        self.modifiers = tuple(modifiers)
        self.runInThread = runInThread
        self.listener = listener
        self.tls = tls
        self.portal = portal
        self.implicitTLS = implicitTLS
        self.connections = 0
        self.perClient: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> Protocol:
        host = getattr(addr, "host", "unknown")
        if self.connections >= self.settings.maxConnections:
            maillog.reject(f"[{host}]", "CONNECT", reply.TOO_MANY_CONNECTIONS, "connection limit reached")
            return _Refuse(reply.TOO_MANY_CONNECTIONS)
        if self.perClient.get(host, 0) >= self.settings.maxConnectionsPerClient:
            maillog.reject(f"[{host}]", "CONNECT", reply.TOO_MANY_FROM_ADDRESS, "per-client connection limit reached")
            return _Refuse(reply.TOO_MANY_FROM_ADDRESS)
        self.connections += 1
        self.perClient[host] = self.perClient.get(host, 0) + 1
        protocol = _CountedServer(self.settings, self.queue, self.clock, self.policies, self.listener,
                                  self.tls, self.portal, self.implicitTLS, self.modifiers, self.runInThread)
        protocol.factory = self
        protocol.countedHost = host
        return protocol

    def released(self, host: str) -> None:
        self.connections -= 1
        left = self.perClient[host] - 1
        if left:
            self.perClient[host] = left
        else:
            del self.perClient[host]


class _CountedServer(ESMTPServer):
    """A session that gives its connection slot back when it ends."""

    countedHost = ""

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        self.factory.released(self.countedHost)

"""The ESMTP server (qmail-smtpd's job): RFC 5321 with PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN, STARTTLS and AUTH.

One :class:`ESMTPServer` per connection reads commands, asks its checks
(:class:`jsmail.interfaces.IPolicy`, run by :class:`jsmail.policy.chain.PhaseRunner`),
and streams message content into the queue (:mod:`jsmail.smtp.assembly` says what goes
on top of it).  What a listener's sessions share is one :class:`~jsmail.smtp.listener.Listener`.

Why not :mod:`twisted.mail.smtp`: it answers pipelined commands out of order when a
check is asynchronous (Twisted ticket 8126), ignores MAIL/RCPT parameters and never makes
the queue durable before saying 250.  Here every command is answered in order: while a
reply is pending (a check or the queue commit returned an unfired Deferred) the
transport is paused and later commands wait in the buffer, so a pipelining client sees
its replies in the order of its commands (RFC 2920 section 3.1).

Commands end in CR LF; a bare LF is tolerated there (as qmail and Postfix do), because
a command line cannot smuggle anything.  Message content is stricter: see
:mod:`jsmail.smtp.data`.

Nothing a client does can hold the server's memory, time or a connection slot for
long (:mod:`jsmail.smtp.limits` has the rules); NOOP, RSET, VRFY and HELP past
``maxJunkCommands`` count as errors.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import maillog, metrics, reply
from jsmail._transport import StreamTransport, writeNow
from jsmail.address import parsePath
from jsmail.envelope import Recipient
from jsmail.error import SMTPReplyError
from jsmail.reply import Reply
from jsmail.smtp.assembly import sanitise
from jsmail.smtp.limits import Refuse, ReplyBackPressure, TimeLimits, clientKey
from jsmail.smtp.listener import Listener, ServerSettings
from jsmail.smtp.params import checkMailParams, checkRcptParams, ehloKeywords, isHeloName, octets
from jsmail.smtp.receive import NO_REPLY, Result, Transaction
from jsmail.smtp.sasl import MECHANISMS, AuthExchange
from jsmail.smtp.session import Session

__all__ = ["ESMTPServer", "ESMTPServerFactory", "Listener", "ServerSettings", "Session"]

_log = Logger()

_JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELP"})


@implementer(IHandshakeListener)
class ESMTPServer(Protocol):
    """One SMTP session.  See the module docstring for the rules it keeps."""
    transport: StreamTransport  # type: ignore[assignment]  # narrower than Twisted's Optional[ITransport]: set before any use

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.clock = listener.clock
        self.session = Session("unknown")
        self.transaction = Transaction(self)
        self._auth: AuthExchange | None = None
        self._buffer = b""
        self._discardingLongLine = False
        self._paused: frozenset[str] = frozenset()  # why reading is paused: a pending reply, unsent replies
        self._errors = 0
        self._junk = 0
        self._closing = False
        self._timeLimits = TimeLimits(self.clock, self.settings, self._expired)

    # -- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        # Each reply goes out as soon as it is written: Nagle's algorithm would hold
        # the reply after a pipelined group until the client's delayed ACK (40 ms).
        getattr(self.transport, "setTcpNoDelay", lambda enabled: None)(True)
        clientAddress, clientPort = self.clientOf(self.transport)
        self.session = Session(clientAddress=clientAddress, clientPort=clientPort, listener=self.listener.name,
                               tls=self.listener.implicitTLS, sessionId=maillog.newSessionId())
        if self.listener.portal is not None:
            settings = self.settings
            self._auth = AuthExchange(self.listener.portal, self.session, self.clock, settings.allowProxyAuth,
                                      settings.maxAuthFailures, settings.authFailureDelay, self.listener.authFailures,
                                      clientKey(clientAddress, settings.clientPrefix6),
                                      settings.maxClientAuthFailures)
        maillog.connect(self.session.client, self.listener.name, self.session.sessionId)
        if not self.listener.implicitTLS:  # over TLS from the first byte: once the handshake is done
            self._watchUnsentReplies()
        self._timeLimits.start()
        self._runCommand(lambda: self.checked("checkConnect", lambda: self.listener.greeting))

    def clientOf(self, transport: Any) -> tuple[str, int]:
        """The client's address and port (a UCSPI server takes them from tcpserver's
        environment instead)."""
        peer = transport.getPeer()
        return getattr(peer, "host", "unknown"), getattr(peer, "port", 0)

    def _watchUnsentReplies(self) -> None:
        registerProducer = getattr(self.transport, "registerProducer", None)
        if registerProducer is not None:
            registerProducer(ReplyBackPressure(self), True)

    def handshakeCompleted(self) -> None:
        if self.listener.implicitTLS:
            self._watchUnsentReplies()
        connection = self.transport.getHandle()
        self.session.tlsInfo = f"{connection.get_protocol_version_name()} with cipher {connection.get_cipher_name()}"
        maillog.tls(self.session.client, self.session.tlsInfo, self.session.sessionId)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is not None and reason.check(SSL.Error) and not self.session.tlsInfo:
            maillog.tlsFailed(self.session.client, reason.getErrorMessage(), self.session.sessionId)
        self._closing = True
        self._timeLimits.stop()
        self.transaction.abort()

    def _expired(self, why: Reply) -> None:
        """A time limit ran out: say which, and hang up."""
        self._sendReply(why)
        self._close()

    def _close(self) -> None:
        self._closing = True
        self.transaction.abort()
        self.transport.loseConnection()

    @property
    def closing(self) -> bool:
        """Whether the session is ending (the client left, or it is being closed)."""
        return self._closing

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.transaction.reader is not None:
            self._timeLimits.credit(len(data))
        self._buffer += data
        self._process()

    def pauseReading(self, why: str) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused |= {why}  # a new frozenset: an idle session shares the empty one

    def resumeReading(self, why: str) -> None:
        if why not in self._paused:
            return
        self._paused -= {why}
        if not self._paused and not self._closing:
            self.transport.resumeProducing()
            self._process()

    def _process(self) -> None:
        """Handle buffered input until it runs out or a reply must be waited for."""
        while self._buffer and not self._paused and not self._closing:
            reader = self.transaction.reader
            if reader is not None:
                rest = reader.feed(self._buffer)
                self._buffer = b""
                if rest is None:
                    return
                self._buffer = rest
                self._runCommand(self.transaction.contentEnded)
                continue
            lf = self._buffer.find(b"\n")
            if lf < 0:
                if len(self._buffer) > self.settings.maxCommandLine:
                    self._buffer = b""
                    if not self._discardingLongLine:
                        self._discardingLongLine = True
                        self._sendReply(self._lineTooLong())
                return
            line, self._buffer = self._buffer[:lf], self._buffer[lf + 1 :]
            if self._discardingLongLine:
                self._discardingLongLine = False
                continue
            self._timeLimits.resetTimeout()  # the idle time runs from a command line's start, not its last byte
            if len(line) + 1 > self.settings.maxCommandLine:
                self._sendReply(self._lineTooLong())
                continue
            if self._auth is not None and self._auth.inProgress:
                auth = self._auth
                self._runCommand(partial(auth.respond, line.removesuffix(b"\r")))
                continue
            self._runCommand(partial(self._dispatch, line.removesuffix(b"\r")))

    def _lineTooLong(self) -> Reply:
        """Alike in one read or many; a SASL response that long ends the exchange too."""
        return self._auth.lineTooLong() if self._auth is not None and self._auth.inProgress else reply.LINE_TOO_LONG

    def _runCommand(self, command: Callable[[], Result]) -> None:
        """Run one command; if its reply is not ready, hold all later input until it is."""
        try:
            result = command()
        except SMTPReplyError as e:
            result = self.refused(e)
        except Exception:
            _log.failure("Unexpected error handling a command from {client}", client=self.session.client)
            result = reply.CHECK_FAILED
        if isinstance(result, defer.Deferred):
            self._timeLimits.setTimeout(None)
            self.pauseReading("reply")
            result.addErrback(self.commandFailed)
            result.addCallback(self._commandDone)
        else:
            self._sendReply(result)

    def commandFailed(self, failure: Failure) -> Reply:
        """The reply for a command whose Deferred failed: its refusal, else 451."""
        if isinstance(failure.value, SMTPReplyError):
            return self.refused(failure.value)
        _log.failure("Unexpected error handling a command from {client}", failure, client=self.session.client)
        return reply.CHECK_FAILED

    def _commandDone(self, result: Reply) -> None:
        if self._closing:
            return  # the client went away while its reply was pending
        self._sendReply(result)
        if self._closing:
            return
        self._timeLimits.setTimeout(self.settings.idleTimeout)
        self.resumeReading("reply")

    def refused(self, error: SMTPReplyError) -> Reply:
        """Log a refusal (with its private reason) and give its public reply."""
        maillog.reject(self.session.client, self._currentCommand, error.reply, error.reason, self.transaction.queueId,
                       self.session.sessionId, self.listener.name)
        return error.reply

    def _sendReply(self, result: Reply) -> None:
        if result is NO_REPLY:
            return
        if result.code >= 400 and result.code != 421:
            self._errors += 1
        elif self._currentCommand in _JUNK:
            self._junk += 1
            self._errors += self._junk > self.settings.maxJunkCommands
        if self._buffer:  # pipelined commands follow: their replies go out with this one (RFC 2920)
            self.transport.write(result.wire)
        else:
            writeNow(self.transport, result.wire)
        metrics.replySent(self._currentCommand, result.code, result.enhanced)
        if result.code == 421 or (self._currentCommand == "CONNECT" and result.code >= 400):
            self._close()
        elif self._errors >= self.settings.maxErrors:
            writeNow(self.transport, reply.TOO_MANY_ERRORS.wire)
            self._close()

    def checked(self, phase: str, accept: Callable[[], Result], *args: Any) -> Result:
        """``accept()`` once every check of ``phase`` has said yes."""
        result: Result = self.listener.phases.run(phase, self.session, self.session.added, accept, *args)
        return result

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
        if self.settings.strictHelo and not isHeloName(name):
            return reply.BAD_HELO_NAME
        self.resetTransaction()

        def accept() -> Reply:
            self.session.helo, self.session.esmtp = name, esmtp
            greets = reply.GREETS.format(self.settings.hostname, sanitise(name))
            if not esmtp:
                return greets
            startTLS = self.listener.tls is not None and not self.session.tls
            keywords = ehloKeywords(self.settings.maxMessageSize, startTLS, MECHANISMS if self._authOffered() else ())
            return greets.withText("\n".join([greets.text, *keywords]))

        return self.checked("checkHelo", accept, name)

    def _authOffered(self) -> bool:
        return (self._auth is not None and self.session.user is None
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
        checkMailParams(params, self.session.esmtp, self.settings.maxMessageSize, self.listener.portal is not None)
        if "SMTPUTF8" not in params and not argument.isascii():
            return reply.SMTPUTF8_REQUIRED
        size = int(params.get("SIZE") or 0)
        roomFor = self.listener.roomFor
        if roomFor is not None and not roomFor(size + self.settings.minFreeSpace):
            raise SMTPReplyError(reply.INSUFFICIENT_STORAGE, "queue file system below the free-space minimum")
        user = self.session.user
        if user is not None and not user.maySendAs(str(address)):
            text = f"Sender <{address}> not allowed for user {user.name}"
            raise SMTPReplyError(reply.SENDER_NOT_OWNED.withText(text), f"user {user.name} tried sender <{address}>")

        def accept() -> Reply:
            self.session.sender, self.session.mailParams = address, params
            return reply.SENDER_OK

        return self.checked("checkSender", accept, address, params)

    def smtp_RCPT(self, argument: str) -> Result:
        if self.session.sender is None:
            return reply.MAIL_FIRST
        if self.transaction.scanner is not None:  # the envelope went into the queue with the first chunk
            return reply.RCPT_AFTER_BDAT
        if argument[:3].upper() != "TO:":
            return reply.BAD_SYNTAX.withText("Syntax: RCPT TO:<address> [parameters]")
        if len(self.session.recipients) >= self.settings.maxRecipients:
            return reply.TOO_MANY_RECIPIENTS
        utf8 = "SMTPUTF8" in self.session.mailParams
        address, params = parsePath(argument[3:], allowNull=False, utf8=utf8, postmasterDomain=self.settings.postmasterDomain or self.settings.hostname)  # noqa: E501 (the module is at 500 lines)
        checkRcptParams(params, utf8)

        def accept() -> Reply:
            self.session.recipients.append(Recipient(str(address), params))
            return reply.RECIPIENT_OK

        return self.checked("checkRecipient", accept, address, params)

    def smtp_DATA(self, argument: str) -> Result:
        if argument:
            return reply.BAD_SYNTAX.withText("DATA takes no argument")
        problem = self._transactionProblem()
        if problem is not None:
            return problem
        if self.transaction.scanner is not None:  # this transaction's content came by BDAT
            return reply.BDAT_MIXED
        self.transaction.startData()
        return reply.START_DATA

    def smtp_BDAT(self, argument: str) -> Result:
        words = argument.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        size = octets(words[0]) if words else None
        if size is None or len(words) > 2 or (len(words) == 2 and not last):
            return reply.BAD_SYNTAX.withText("Syntax: BDAT <size> [LAST]")
        return self.transaction.startChunk(size, last, self._transactionProblem())

    def _transactionProblem(self) -> Reply | None:
        if self.session.sender is None:
            return reply.MAIL_FIRST
        if not self.session.recipients:
            return reply.RCPT_FIRST.withText("No valid recipients")
        return None

    def smtp_STARTTLS(self, argument: str) -> Result:
        if argument:
            return reply.BAD_SYNTAX.withText("STARTTLS takes no argument")
        if self.session.tls:
            return reply.TLS_ACTIVE
        if self.listener.tls is None:
            return reply.TLS_UNAVAILABLE
        if self.session.sender is not None:
            return reply.TLS_IN_TRANSACTION
        self.transport.write(reply.TLS_READY.wire)
        # RFC 3207 section 4.2 and CVE-2011-0411: anything the client sent after
        # STARTTLS in plaintext is dropped, and all that was learnt before is forgotten.
        self._buffer = b""
        self.resetTransaction()
        self.session.helo, self.session.esmtp, self.session.tls = None, False, True
        self.session.user, self.session.notes = None, {}  # an AUTH made in plaintext too
        self.transport.startTLS(self.listener.tls)
        return NO_REPLY

    def smtp_AUTH(self, argument: str) -> Result:
        if self._auth is None:
            return reply.AUTH_UNAVAILABLE
        if self.settings.requireTLS and not self.session.tls:
            return reply.STARTTLS_FIRST
        if not self._authOffered():
            return reply.AUTH_ALREADY if self.session.user is not None else reply.AUTH_ENCRYPTION_REQUIRED
        if self.session.helo is None:
            return reply.HELO_FIRST
        if self.session.sender is not None:
            return reply.AUTH_IN_TRANSACTION
        return self._auth.start(argument)

    def smtp_RSET(self, argument: str) -> Result:
        self.resetTransaction()
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
        writeNow(self.transport, reply.CLOSING.wire)
        self._close()
        return NO_REPLY

    def resetTransaction(self) -> None:
        """Forget the current transaction (RSET, EHLO, STARTTLS, a refused message)."""
        self.transaction.abort()
        self.transaction.scanner = None
        self.session.resetTransaction()


class ESMTPServerFactory(Factory):
    """Builds :class:`ESMTPServer` sessions for one listener, enforcing the limits on
    connections in total and per client address."""

    noisy = False

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.connections = 0
        self.perClient: dict[str, int] = {}

    def admit(self, host: str) -> tuple[str, Reply | None]:
        """Count a connection from ``host``: its client key, and its (logged) refusal past
        a limit.  Asked before a hand-over to a receiving process, so limits span them all."""
        key = clientKey(host, self.settings.clientPrefix6)
        if self.connections >= self.settings.maxConnections:
            maillog.reject(f"[{host}]", "CONNECT", reply.TOO_MANY_CONNECTIONS, "connection limit reached")
            return key, reply.TOO_MANY_CONNECTIONS
        if self.perClient.get(key, 0) >= self.settings.maxConnectionsPerClient:
            maillog.reject(f"[{host}]", "CONNECT", reply.TOO_MANY_FROM_ADDRESS, "per-client connection limit reached")
            return key, reply.TOO_MANY_FROM_ADDRESS
        self.connections += 1
        self.perClient[key] = self.perClient.get(key, 0) + 1
        return key, None

    def buildProtocol(self, addr: Any) -> Protocol:
        key, refusal = self.admit(getattr(addr, "host", "unknown"))
        if refusal is not None:
            return Refuse(refusal)
        protocol = _CountedServer(self.listener)
        protocol.factory = self
        protocol.countedHost = key
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

    def connectionLost(self, reason: Failure | None = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.released(self.countedHost)

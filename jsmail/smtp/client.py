"""The ESMTP client (qmail-remote's protocol half): RFC 5321 with PIPELINING (RFC 2920),
SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), STARTTLS
(RFC 3207) and AUTH PLAIN or LOGIN (RFC 4954).

An :class:`ESMTPClient` is one connection: it sets the session up, then delivers
messages one at a time and answers each with one
:class:`~jsmail.interfaces.DeliveryResult` per recipient.  It never fails a delivery's
Deferred: a dropped connection, a timeout or a reply it cannot read becomes a temporary
result with a made-up reply saying why, so the scheduler never guesses from exceptions.
:func:`sendmail` is the same for embedders, one message per connection.

Decisions, and why:

- Every command waits for its reply in one queue, and replies are matched to commands
  in order, so the pipelined dialog and the one-command-at-a-time dialog are the same
  code (RFC 2920 section 3.1).  A broken connection answers every waiting command with
  the made-up reply, which is how it becomes a temporary result.
- A refused greeting or EHLO/HELO is a temporary failure whatever its code, as in
  qmail-remote: another MX, or the same one later, may take the message.
- Message data streams from the file (a pull producer, so the transport's backpressure
  is honoured) in 16 KiB reads, dot-stuffed by :class:`DotStuffer`.  Only a dot after
  CR LF is stuffed: that is a line start to a strict peer (RFC 5321 section 4.5.2), and
  the only CR LF . CR LF on the wire is the one that ends the message.
- Content is never altered to suit the peer: 8-bit data to a peer without 8BITMIME, or
  a message needing SMTPUTF8 to a peer without it, fails permanently (RFC 6152 section
  3, RFC 6531 section 3.4); jsmail does not downgrade.
- After STARTTLS's 220, bytes already read in plaintext are thrown away (RFC 3207
  section 4.2; CVE-2011-0411 seen from the client side), and EHLO is said again.
- Credentials go only over TLS, unless the settings say ``tls="none"``.
- With TLSA records (DANE, RFC 7672) STARTTLS is required and the records, not the CA
  store, say which certificate is right: the handshake checks nothing, and the chain is
  matched against the records afterwards (:func:`jsmail.remote.dane.matchesTLSA`).  No usable
  record still means TLS is required, unauthenticated (section 2.2).  Nothing about a
  DANE session falls back to plaintext: ``tlsFailed`` stays false.
- RSET goes before every transaction but the first on a connection (it also checks that
  a reused connection still works), and at once after a transaction that ended before
  its final dot, since the server still holds that transaction.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Mapping, Sequence

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (IDelayedCall, IHandshakeListener, IOpenSSLClientConnectionCreator,
                                         IPullProducer, IReactorTime)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail.remote.dane import TLSARecord, matchesTLSA
from jsmail.envelope import Recipient
from jsmail import reply as replies
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryResult, DeliveryStatus
from jsmail.reply import PeerReply, Reply

__all__ = ["ClientSettings", "DotStuffer", "ESMTPClient", "OutgoingMessage", "clientTLS", "readySession",
           "sendmail"]

_log = Logger()

TLS_MODES = ("none", "opportunistic", "verify", "implicit")
CHUNK = 16 * 1024  # octets read from the message file at a time
MAX_REPLY = 64 * 1024  # octets one reply may take, all its lines together


@dataclass(frozen=True)
class ClientSettings:
    """How to talk to one peer.

    ``tls``: ``"none"`` never uses TLS; ``"opportunistic"`` uses STARTTLS when offered,
    without checking the certificate (RFC 7435); ``"verify"`` requires STARTTLS and a
    certificate valid for ``tlsHostname`` under ``trustRoot`` (platform trust when
    ``None``); ``"implicit"`` means the caller made the transport TLS already (port 465).
    ``tlsa``: the DNSSEC-validated TLSA records of ``tlsHostname`` (DANE, RFC 7672);
    when given they replace ``tls``'s certificate check and require STARTTLS.
    With ``username`` set, AUTH is required.  The timeouts are RFC 5321 section
    4.5.3.2's; ``commandTimeout`` covers the replies it gives no figure for (EHLO,
    STARTTLS and the handshake, AUTH, RSET, QUIT), ``connectTimeout`` the connection
    :func:`sendmail` makes.
    """

    heloName: str = "localhost"
    tls: str = "opportunistic"
    tlsHostname: str | None = None
    trustRoot: Any = None
    tlsa: tuple[TLSARecord, ...] = ()
    username: str | None = None
    password: str | None = None
    maxRecipients: int = 100
    connectTimeout: float = 60.0
    greetingTimeout: float = 300.0
    mailTimeout: float = 300.0
    rcptTimeout: float = 300.0
    dataTimeout: float = 120.0
    dataBlockTimeout: float = 180.0
    finalDotTimeout: float = 600.0
    commandTimeout: float = 300.0

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {self.tls!r}")
        if self.maxRecipients < 1:
            raise ValueError("maxRecipients must be at least 1")
        if self.tlsa and self.tls not in ("opportunistic", "verify"):
            raise ValueError(f'TLSA records are checked after STARTTLS: not with tls="{self.tls}"')


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to deliver: ``open`` gives its bytes (CR LF lines, not dot-stuffed).
    ``mailParams`` are as received; a SIZE among them is ignored (``size`` is sent).
    ``eightBit`` says whether the content has octets above 127; left None, the client
    reads the message to find out (on the reactor thread: a caller that can, should
    find out in a thread, as remote delivery does)."""

    sender: str
    recipients: Sequence[Recipient]
    mailParams: Mapping[str, str | None]
    size: int
    open: Callable[[], BinaryIO]
    eightBit: bool | None = None


@dataclass(frozen=True)
class _Reason(Reply):
    """A reply jsmail makes up for a local reason (one of :mod:`jsmail.reply`'s), with
    the private detail for the log: the peer's name, what went wrong."""

    detail: str = ""


def _local(template: Reply, detail: str = "") -> _Reason:
    return _Reason(template.code, template.enhanced, template.text, detail)


def _split(reply: Reply) -> tuple[Reply, str]:
    """The public reply and the private detail: a made-up reply's detail stays out of
    what a bounce may show."""
    if isinstance(reply, _Reason):
        return Reply(reply.code, reply.enhanced, reply.text), reply.detail
    return reply, ""


def _result(address: str, status: DeliveryStatus, reply: Reply) -> DeliveryResult:
    return DeliveryResult(address, status, *_split(reply))


def _error(reply: Reply, permanent: bool = False) -> DeliveryError:
    """Why the session could not be set up."""
    public, detail = _split(reply)
    return DeliveryError(public, permanent, detail)


def _failed(reply: Reply) -> DeliveryStatus:
    """The status of a refusal: permanent for 5xx, temporary for anything else."""
    return DeliveryStatus.PERMANENT if reply.code >= 500 else DeliveryStatus.TEMPORARY


def _final(reply: Reply) -> DeliveryStatus:
    """The status after the final dot: 2xx is delivered."""
    return DeliveryStatus.DELIVERED if 200 <= reply.code < 300 else _failed(reply)


def _accepted(reply: Reply) -> bool:
    return 200 <= reply.code < 300


_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # could end a command line early: never sent from an address


def clientTLS(settings: ClientSettings) -> Any:
    """The client TLS options for ``settings``: with TLSA records, naming ``tlsHostname``
    but checking nothing (the records are matched after the handshake); verifying
    ``tlsHostname`` when set (for ``"verify"`` and ``"implicit"``); else encrypting
    without checking the certificate."""
    if settings.tlsa and settings.tlsHostname is not None:
        return _UncheckedWithServerName(settings.tlsHostname)
    if settings.tls in ("verify", "implicit") and settings.tlsHostname is not None:
        return ssl.optionsForClientTLS(settings.tlsHostname, trustRoot=settings.trustRoot)
    return ssl.CertificateOptions()


@implementer(IOpenSSLClientConnectionCreator)
class _UncheckedWithServerName:
    """TLS that checks no certificate but still sends the host name (SNI, RFC 6066), so
    a server with several certificates shows the one its TLSA records are for (RFC 7672
    section 8.1)."""

    def __init__(self, hostname: str) -> None:
        self._options = ssl.CertificateOptions()
        self._hostname = hostname.rstrip(".").encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection


class DotStuffer:
    """Dot-stuffs message content for DATA (RFC 5321 section 4.5.2) one read at a time.

    A line's CR LF may end one read and its leading dot start the next (or the CR and
    the LF may be split), so the last two octets seen are kept between reads.
    """

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the message starts at a line start

    def feed(self, chunk: bytes) -> bytes:
        stuffed = chunk.replace(b"\r\n.", b"\r\n..")
        if chunk.startswith(b".") and self._tail == b"\r\n":
            stuffed = b"." + stuffed
        elif chunk.startswith(b"\n.") and self._tail.endswith(b"\r"):
            stuffed = b"\n." + stuffed[1:]
        self._tail = (self._tail + chunk)[-2:]
        return stuffed

    def end(self) -> bytes:
        """The end of data: the final dot, after a CR LF if the content lacks one."""
        return b".\r\n" if self._tail == b"\r\n" else b"\r\n.\r\n"


@implementer(IPullProducer)
class _ContentProducer:
    """Streams the message file, dot-stuffed, whenever the transport has room; ``done``
    fires once the final dot is written or the connection is gone."""

    def __init__(self, client: ESMTPClient, file: BinaryIO) -> None:
        self._client = client
        self._file = file
        self._stuffer = DotStuffer()
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        client = self._client
        client._setTimer(client.settings.dataBlockTimeout, "room to send message data")
        try:
            chunk = self._file.read(CHUNK)
        except OSError as e:
            client._hangUp(_local(replies.CANNOT_READ_MESSAGE, str(e)))
            return
        if chunk:
            client.transport.write(self._stuffer.feed(chunk))
            return
        client.transport.unregisterProducer()
        client.transport.write(self._stuffer.end())
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


@implementer(IHandshakeListener)
class ESMTPClient(Protocol):
    """One SMTP session.  After ``connectionMade`` it reads the greeting, says EHLO
    (HELO if EHLO is refused), does STARTTLS and AUTH as the settings say, then serves
    :meth:`send` calls one at a time until :meth:`quit`.

    ``tlsFailed`` becomes true when the connection broke while TLS was being set up,
    so the caller may try again without TLS (never with TLSA records: RFC 7672
    section 2.2 forbids it).  ``peerExtensions`` maps the EHLO keywords
    the peer offered (upper case) to their parameters.
    """

    def __init__(self, settings: ClientSettings, reactor: IReactorTime) -> None:
        if settings.tls == "verify" and settings.tlsHostname is None:
            raise ValueError('tls="verify" needs a tlsHostname to verify the certificate against')
        if settings.tlsa and settings.tlsHostname is None:
            raise ValueError("TLSA records need the tlsHostname they are for")
        if (settings.username is None) != (settings.password is None):
            raise ValueError("username and password go together")
        self.settings = settings
        self.clock = reactor
        self.peerExtensions: dict[str, str] = {}
        self.tlsFailed = False
        self.peer = "the peer"
        self._secure = settings.tls == "implicit"
        self._tlsPhase = settings.tls == "implicit"  # a break now is a TLS failure
        self._handshaking = False
        self._buffer = b""
        self._lines: list[str] = []
        self._replySize = 0
        self._waiters: deque[_Waiter] = deque()
        self._timer: IDelayedCall | None = None
        self._producer: _ContentProducer | None = None
        self._broken: Reply | None = None  # why the session cannot go on
        self._setupDone = False
        self._setupError: DeliveryError | None = None
        self._readyWaiters: list[Deferred[None]] = []
        self._lostWaiters: list[Deferred[None]] = []
        self._needReset = False
        self._lock = DeferredLock()
        self._lock.acquire()  # held until the session is set up

    # -- the public face --------------------------------------------------------------

    @property
    def ready(self) -> Deferred[None]:
        """Fires once the session is set up, or fails with :class:`~jsmail.error.DeliveryError`.

        Each access gives a new Deferred, so a failure nobody asked about is never
        logged as unhandled."""
        d: Deferred[None] = Deferred()
        if not self._setupDone:
            self._readyWaiters.append(d)
        elif self._setupError is not None:
            d.errback(self._setupError)
        else:
            d.callback(None)
        return d

    @property
    def closed(self) -> bool:
        """Whether the session can no longer deliver (broken, refused or quit)."""
        return self._broken is not None

    def send(self, message: OutgoingMessage) -> Deferred[list[DeliveryResult]]:
        """Deliver ``message``: one result per recipient, in order; never fails."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._deliver(message)))

    def quit(self) -> Deferred[None]:
        """Say QUIT once the sends before it are done; fires when the connection is closed."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._quit()))

    # -- connection events ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", self.peer)
        # SMTP is a dialogue of small writes: with Nagle's algorithm the final "." after
        # the body waits for the peer's delayed ACK (~40 ms a message).
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        Deferred.fromCoroutine(self._setUp())

    def handshakeCompleted(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self._replyReceived(_Reason(220, "", "TLS handshake done"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._cancelTimer()
        message = reason.getErrorMessage() if reason is not None else "connection closed"
        if self._tlsPhase:
            self._break(_local(replies.PEER_TLS_FAILED, f"TLS with {self.peer} failed: {message}"))
        else:
            self._break(_local(replies.PEER_CONNECTION_LOST, f"connection to {self.peer} lost: {message}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._broken is not None or self._handshaking:
            return  # nothing said in plaintext between STARTTLS's 220 and TLS counts
        self._buffer += data
        while self._broken is None and not self._handshaking:
            lf = self._buffer.find(b"\n")
            if lf < 0:
                if len(self._buffer) > MAX_REPLY:
                    self._hangUp(_local(replies.PEER_REPLY_UNREADABLE, f"{self.peer} sent a reply line too long to read"))
                return
            line, self._buffer = self._buffer[:lf].removesuffix(b"\r"), self._buffer[lf + 1 :]
            self._lineReceived(line)

    # -- replies and timeouts ---------------------------------------------------------

    def _lineReceived(self, line: bytes) -> None:
        match = _REPLY_LINE.match(line)
        if match is None:
            self._hangUp(_local(replies.PEER_REPLY_UNREADABLE, f"{self.peer} sent a malformed reply: {line[:80]!r}"))
            return
        self._replySize += len(line)
        if self._replySize > MAX_REPLY:
            self._hangUp(_local(replies.PEER_REPLY_UNREADABLE, f"{self.peer} sent a reply too long to read"))
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
                reply = _local(replies.PEER_UNEXPECTED_REPLY, f"{self.peer} said {reply} when no reply was due")
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

    def _setTimer(self, seconds: float, what: str) -> None:
        self._cancelTimer()
        self._timer = self.clock.callLater(seconds, self._timedOut, seconds, what)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self, seconds: float, what: str) -> None:
        self._timer = None
        self._hangUp(_local(replies.PEER_TIMEOUT, f"timed out after {seconds:g} seconds waiting for {what} ({self.peer})"))

    def _hangUp(self, reason: Reply) -> None:
        """Give up on a peer that is too slow or makes no sense: drop the connection."""
        self._break(reason)
        self.transport.abortConnection()

    def _break(self, reason: Reply) -> None:
        """The session cannot go on: answer every waiting command with ``reason``."""
        if self._broken is not None:
            return
        self.tlsFailed = self.tlsFailed or (self._tlsPhase and not self.settings.tlsa)
        self._broken = reason
        self._cancelTimer()
        waiters, self._waiters = self._waiters, deque()
        if self._producer is not None:
            self._producer.stopProducing()
        for waiter in waiters:
            waiter.deferred.callback(reason)

    # -- setting the session up -------------------------------------------------------

    async def _setUp(self) -> None:
        try:
            await self._openSession()
        except DeliveryError as e:
            self._setupError = e
        except Exception:
            _log.failure("Unexpected error setting up a session with {peer}", peer=self.peer)
            self._setupError = DeliveryError(replies.DELIVERY_ERROR, False, "local error setting up the session")
        self._tlsPhase = False
        if self._setupError is not None and self._broken is None:
            self.transport.write(b"QUIT\r\n")  # RFC 5321 section 3.1; no need to wait for the 221
            self._break(_local(replies.PEER_SESSION_FAILED, f"session with {self.peer} not set up: {self._setupError}"))
            self.transport.loseConnection()
        self._setupDone = True
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            if self._setupError is not None:
                d.errback(self._setupError)
            else:
                d.callback(None)
        self._lock.release()

    async def _openSession(self) -> None:
        greeting = await self._expect(self.settings.greetingTimeout, "the greeting")
        if greeting.code != 220:
            raise _error(greeting)
        await self._hello()
        if self._wantsTLS():
            await self._startTLS()
        if self.settings.username is not None:
            await self._authenticate()

    async def _hello(self) -> None:
        name = self.settings.heloName
        reply = await self._command(f"EHLO {name}", self.settings.commandTimeout)
        if reply.code == 250:
            self.peerExtensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, parameters = line.partition(" ")
                self.peerExtensions[keyword.upper()] = parameters.strip()
            return
        if 500 <= reply.code < 600:  # an SMTP-only server (RFC 5321 section 3.2)
            reply = await self._command(f"HELO {name}", self.settings.commandTimeout)
            if reply.code == 250:
                self.peerExtensions = {}
                return
        raise _error(reply)

    def _wantsTLS(self) -> bool:
        if self.settings.tls in ("none", "implicit"):
            return False
        if "STARTTLS" in self.peerExtensions:
            return True
        if self.settings.tls == "verify" or self.settings.tlsa:
            raise _error(_local(replies.PEER_NO_STARTTLS, f"{self.peer} does not offer STARTTLS"))
        return False

    async def _startTLS(self) -> None:
        reply = await self._command("STARTTLS", self.settings.commandTimeout, discardRest=True)
        if reply.code != 220:
            if self._broken is None and self.settings.tls == "opportunistic" and not self.settings.tlsa:
                return  # refused: go on in plaintext on this connection
            raise _error(_local(replies.PEER_STARTTLS_REFUSED, f"{self.peer}: STARTTLS failed: {reply}"))
        self._tlsPhase = self._handshaking = True
        handshake = self._expect(self.settings.commandTimeout, "the TLS handshake")
        self.transport.startTLS(clientTLS(self.settings))
        reply = await handshake
        if reply.code != 220:
            raise _error(reply)
        if any(record.usable for record in self.settings.tlsa) and not self._matchesTLSA():
            host = self.settings.tlsHostname
            mismatch = _local(replies.PEER_TLSA_MISMATCH, f"certificate of {host} does not match its TLSA records")
            self._hangUp(mismatch)  # not even QUIT to a server that may be an impostor
            raise _error(mismatch)
        self._secure = True
        await self._hello()

    def _matchesTLSA(self) -> bool:
        """Whether the chain the server sent satisfies the settings' TLSA records."""
        chain = self.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
        return matchesTLSA(self.settings.tlsa, [c.public_bytes(Encoding.DER) for c in chain],
                           self.settings.tlsHostname or "")

    async def _authenticate(self) -> None:
        """AUTH PLAIN, else LOGIN (RFC 4954); refusing to send credentials in the clear."""
        if "AUTH" not in self.peerExtensions:
            raise _error(_local(replies.PEER_NO_AUTH, f"{self.peer} does not offer AUTH"))
        if not self._secure and self.settings.tls != "none":
            raise _error(_local(replies.PEER_AUTH_WITHOUT_TLS, f"{self.peer} did not offer STARTTLS"))
        mechanisms = self.peerExtensions["AUTH"].upper().split()
        username = (self.settings.username or "").encode("utf-8")
        password = (self.settings.password or "").encode("utf-8")
        timeout = self.settings.commandTimeout
        if "PLAIN" in mechanisms:
            reply = await self._command("AUTH PLAIN " + _b64(b"\0" + username + b"\0" + password), timeout,
                                        "the reply to AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = await self._command("AUTH LOGIN", timeout)
            for secret in (username, password):
                if reply.code != 334:
                    break
                reply = await self._command(_b64(secret), timeout, "the reply to AUTH LOGIN")
        else:
            raise _error(_local(replies.PEER_NO_AUTH, f"{self.peer} offers neither AUTH PLAIN nor LOGIN"))
        if reply.code != 235:
            raise _error(reply, permanent=reply.code >= 500)

    # -- delivering -------------------------------------------------------------------

    async def _deliver(self, message: OutgoingMessage) -> list[DeliveryResult]:
        try:
            return await self._deliverAll(message)
        except Exception:
            _log.failure("Unexpected error delivering to {peer}", peer=self.peer)
            return _all(message.recipients, DeliveryStatus.TEMPORARY,
                        _local(replies.DELIVERY_ERROR, f"local error while delivering to {self.peer}"))

    async def _deliverAll(self, message: OutgoingMessage) -> list[DeliveryResult]:
        recipients = list(message.recipients)
        if not recipients:
            return []
        if self._setupError is not None:
            return DeliveryResult.forAll(recipients, self._setupError)
        if self._broken is not None:
            return _all(recipients, DeliveryStatus.TEMPORARY, self._broken)
        if _UNSAFE.search(message.sender):
            return _all(recipients, DeliveryStatus.PERMANENT, _local(replies.BAD_SENDER_ADDRESS, f"sender {message.sender!r}"))
        try:
            file = message.open()
        except OSError as e:
            return _all(recipients, DeliveryStatus.TEMPORARY, _local(replies.CANNOT_READ_MESSAGE, str(e)))
        with file:
            start = file.tell()  # a queue file opens past its envelope line
            mail = self._mailCommand(message, file, start)
            if isinstance(mail, Reply):
                return _all(recipients, _failed(mail), mail)
            results: dict[int, DeliveryResult] = {}
            batch: list[tuple[int, Recipient]] = []
            for i, recipient in enumerate(recipients):
                if _UNSAFE.search(recipient.address):
                    results[i] = _result(recipient.address, DeliveryStatus.PERMANENT,
                                         _local(replies.BAD_RECIPIENT_ADDRESS, f"recipient {recipient.address!r}"))
                else:
                    batch.append((i, recipient))
            size = self.settings.maxRecipients
            for first in range(0, len(batch), size):
                part = batch[first : first + size]
                outcome = await self._transaction(mail, [r for _, r in part], file, start)
                results.update(zip((i for i, _ in part), outcome))
        return [results[i] for i in range(len(recipients))]

    def _mailCommand(self, message: OutgoingMessage, file: BinaryIO, start: int) -> str | Reply:
        """The MAIL command for ``message``, or why this peer cannot take it (refused here,
        before anything is sent)."""
        peer, extensions = self.peer, self.peerExtensions
        params = {key.upper(): value for key, value in message.mailParams.items()}
        limit = extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < message.size:
            return _local(replies.PEER_SIZE_LIMIT.format(message.size, limit), f"{peer} takes at most {limit} octets")
        utf8 = ("SMTPUTF8" in params or not message.sender.isascii()
                or not all(r.address.isascii() for r in message.recipients))
        if utf8 and "SMTPUTF8" not in extensions:
            return _local(replies.PEER_NO_SMTPUTF8, f"{peer} does not offer SMTPUTF8")
        declared8 = (params.get("BODY") or "").upper() == "8BITMIME"
        has8bit = message.eightBit if message.eightBit is not None else _has8bit(file, start)
        if "8BITMIME" in extensions:
            body8 = declared8 or has8bit
        elif has8bit:
            return _local(replies.PEER_NO_8BITMIME, f"{peer} does not offer 8BITMIME")
        else:
            body8 = False
        words = [f"MAIL FROM:<{message.sender}>"]
        if "SIZE" in extensions:
            words.append(f"SIZE={message.size}")
        if body8:
            words.append("BODY=8BITMIME")
        if utf8:
            words.append("SMTPUTF8")
        if "DSN" in extensions:
            words += _dsnParams(params, ("RET", "ENVID"))
        return " ".join(words)

    def _rcptCommand(self, recipient: Recipient) -> str:
        words = [f"RCPT TO:<{recipient.address}>"]
        if "DSN" in self.peerExtensions:
            words += _dsnParams({key.upper(): value for key, value in recipient.params.items()}, ("NOTIFY", "ORCPT"))
        return " ".join(words)

    async def _transaction(self, mail: str, recipients: list[Recipient], file: BinaryIO,
                           start: int) -> list[DeliveryResult]:
        """One MAIL, its RCPTs and DATA: one result per recipient."""
        settings = self.settings
        if self._needReset:
            reset = await self._command("RSET", settings.commandTimeout)
            if reset.code != 250:
                return _all(recipients, DeliveryStatus.TEMPORARY, reset)
        self._needReset = True
        rcpts = [(self._rcptCommand(r), settings.rcptTimeout) for r in recipients]
        dataReply: Reply | None = None
        if "PIPELINING" in self.peerExtensions:
            waiters = self._commands((mail, settings.mailTimeout), *rcpts, ("DATA", settings.dataTimeout))
            mailReply = await waiters[0]
            rcptReplies = [await w for w in waiters[1:-1]]
            dataReply = await waiters[-1]
        else:
            mailReply = await self._command(mail, settings.mailTimeout)
            rcptReplies = []
            if _accepted(mailReply):
                rcptReplies = [await self._command(line, timeout) for line, timeout in rcpts]
                if any(_accepted(r) for r in rcptReplies):
                    dataReply = await self._command("DATA", settings.dataTimeout)
        answers = rcptReplies if _accepted(mailReply) else [mailReply] * len(recipients)
        accepted = [i for i, r in enumerate(answers) if _accepted(r)]
        results = [_result(r.address, _failed(answer), answer) for r, answer in zip(recipients, answers)]
        if dataReply is not None and dataReply.code == 354:
            if accepted:
                final = await self._sendContent(file, start)
                for i in accepted:
                    results[i] = _result(recipients[i].address, _final(final), final)
                return results
            # DATA accepted although no RCPT was: send an empty message (RFC 2920 section 3.1).
            await self._command(".", settings.finalDotTimeout)
        elif dataReply is not None:
            for i in accepted:
                results[i] = _result(recipients[i].address, _failed(dataReply), dataReply)
        if (await self._command("RSET", settings.commandTimeout)).code == 250:
            self._needReset = False
        return results

    async def _sendContent(self, file: BinaryIO, start: int) -> Reply:
        """Stream the message from ``start`` after DATA's 354; the reply to the final dot."""
        file.seek(start)
        producer = self._producer = _ContentProducer(self, file)
        self.transport.registerProducer(producer, False)
        await producer.done
        self._producer = None
        return await self._expect(self.settings.finalDotTimeout, "the reply to the final dot")

    async def _quit(self) -> None:
        if self._broken is None:
            await self._command("QUIT", self.settings.commandTimeout)
            self._break(_local(replies.PEER_SESSION_ENDED, f"the session with {self.peer} has ended"))
        if self.connected:
            lost: Deferred[None] = Deferred()
            self._lostWaiters.append(lost)
            self.transport.loseConnection()
            # A TLS close waits for the peer's close_notify: do not wait for ever.
            self._setTimer(self.settings.commandTimeout, "the connection to close")
            await lost


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _has8bit(file: BinaryIO, start: int) -> bool:
    """Whether the message from ``start`` has an octet above 127, read in chunks."""
    file.seek(start)
    while chunk := file.read(CHUNK):
        if not chunk.isascii():
            return True
    return False


def _dsnParams(params: Mapping[str, str | None], keys: Sequence[str]) -> list[str]:
    """The DSN parameters (RFC 3461) among ``params``, as received (they are xtext)."""
    return [key if params[key] is None else f"{key}={params[key]}"
            for key in keys if key in params and not _UNSAFE.search(params[key] or "")]


def _all(recipients: Sequence[Recipient], status: DeliveryStatus, reply: Reply) -> list[DeliveryResult]:
    return [_result(r.address, status, reply) for r in recipients]


async def readySession(connect: Callable[[ClientSettings], Deferred[ESMTPClient]],
                       settings: ClientSettings) -> ESMTPClient:
    """A session set up with ``connect(settings)``; with opportunistic TLS and no
    credentials, a failed TLS handshake is followed by one more try in plaintext
    (RFC 7435; never with TLSA records, whose sessions never report ``tlsFailed``, nor
    with credentials, which go only over TLS).  Fails with :class:`DeliveryError`."""
    client = await connect(settings)
    try:
        await client.ready
        return client
    except DeliveryError as e:
        if not (client.tlsFailed and settings.tls == "opportunistic" and settings.username is None):
            raise
        _log.warn("TLS with {peer} failed ({error}); trying again without TLS", peer=client.peer, error=str(e))
    client = await connect(replace(settings, tls="none", tlsHostname=None, tlsa=()))
    await client.ready
    return client


def sendmail(reactor: Any, host: str, port: int, message: OutgoingMessage,
             settings: ClientSettings = ClientSettings()) -> Deferred[list[DeliveryResult]]:
    """Connect to ``host`` (a name or an IPv4 or IPv6 address), deliver ``message``, say
    QUIT.  ``reactor`` provides TCP and time.  Never fails: not reaching the peer is a
    temporary result for every recipient (see :func:`readySession` for TLS)."""
    return Deferred.fromCoroutine(_sendmail(reactor, host, port, message, settings))


async def _sendmail(reactor: Any, host: str, port: int, message: OutgoingMessage,
                    settings: ClientSettings) -> list[DeliveryResult]:
    async def connect(settings: ClientSettings) -> ESMTPClient:
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=settings.connectTimeout)
        if settings.tls == "implicit":
            endpoint = wrapClientTLS(clientTLS(settings), endpoint)
        try:
            return await connectProtocol(endpoint, ESMTPClient(settings, reactor))
        except Exception as e:
            raise _error(_local(replies.CANNOT_CONNECT, f"cannot connect to {host} port {port}: {e}")) from None

    try:
        client = await readySession(lambda s: Deferred.fromCoroutine(connect(s)), settings)
    except DeliveryError as e:
        return DeliveryResult.forAll(message.recipients, e)
    results = await client.send(message)
    await client.quit()
    return results

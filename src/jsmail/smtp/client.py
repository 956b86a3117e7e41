"""The ESMTP client (qmail-remote's protocol half): RFC 5321 with PIPELINING (RFC 2920),
SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), STARTTLS
(RFC 3207) and AUTH PLAIN or LOGIN (RFC 4954).

An :class:`ESMTPClient` is one connection: it sets the session up, then delivers
messages one at a time and answers each with one
:class:`~jsmail.interfaces.DeliveryResult` per recipient.  It never fails a delivery's
Deferred: a dropped connection, a timeout or a reply it cannot read becomes a temporary
result with a made-up reply saying why, so the scheduler never guesses from exceptions.
:mod:`jsmail.smtp.connect` makes sessions ready (and has :func:`sendmail` for
embedders); :mod:`jsmail.smtp.commands` says what goes on the wire for a message.

Decisions, and why:

- Commands and replies go through a :class:`~jsmail.smtp.pipeline.CommandPipeline`:
  the pipelined dialog and the one-command-at-a-time dialog are the same code, and a
  broken connection answers every waiting command with a made-up reply.
- A refused greeting or EHLO/HELO is a temporary failure whatever its code, as in
  qmail-remote: another MX, or the same one later, may take the message.
- After STARTTLS's 220, bytes already read in plaintext are thrown away (RFC 3207
  section 4.2; CVE-2011-0411 seen from the client side), and EHLO is said again.
- Credentials go only over TLS whose certificate was verified (``verify``, ``implicit``
  with a host name, or DANE records that matched): an attacker in the path, or one who
  forged the relay's DNS, would otherwise get them (security review M-3).  This holds
  whatever the configuration checks said: ``allowInsecureAuth`` alone lets them go over
  unverified TLS, or in plaintext with ``tls="none"``.
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
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Sequence

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import reply as replies
from jsmail.envelope import Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryResult, DeliveryStatus, Handoff
from jsmail.remote.dane import TLSARecord, matchesTLSA
from jsmail.reply import Reply
from jsmail.route import TLS_MODES
from jsmail.smtp.commands import UNSAFE, OutgoingMessage, has8bit, mailCommand, rcptCommand
from jsmail.smtp.pipeline import CommandPipeline, Reason
from jsmail.smtp.tls import clientTLS

__all__ = ["ClientSettings", "ESMTPClient"]

_log = Logger()



@dataclass(frozen=True)
class ClientSettings:
    """How to talk to one peer.

    ``tls``: ``"none"`` never uses TLS; ``"opportunistic"`` uses STARTTLS when offered,
    without checking the certificate (RFC 7435); ``"verify"`` requires STARTTLS and a
    certificate valid for ``tlsHostname`` under ``trustRoot`` (platform trust when
    ``None``); ``"implicit"`` means the caller made the transport TLS already (port 465).
    ``tlsa``: the DNSSEC-validated TLSA records of ``tlsHostname`` (DANE, RFC 7672);
    when given they replace ``tls``'s certificate check and require STARTTLS.
    With ``username`` set, AUTH is required, and only over verified TLS unless
    ``allowInsecureAuth`` (then unverified TLS, or plaintext with ``tls="none"``, will
    do).  The timeouts are RFC 5321 section
    4.5.3.2's; ``commandTimeout`` covers the replies it gives no figure for (EHLO,
    STARTTLS and the handshake, AUTH, RSET, QUIT), ``connectTimeout`` the connection
    (:func:`jsmail.smtp.connect.connectTo`).
    """

    heloName: str = "localhost"
    tls: str = "opportunistic"
    tlsHostname: str | None = None
    trustRoot: Any = None
    tlsa: tuple[TLSARecord, ...] = ()
    username: str | None = None
    password: str | None = None
    allowInsecureAuth: bool = False
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

    def tlsOptions(self) -> Any:
        """The TLS options for this peer: see :func:`jsmail.smtp.tls.clientTLS`."""
        return clientTLS(self.tlsHostname, self.tls in ("verify", "implicit"), self.trustRoot, bool(self.tlsa))


def _result(address: str, status: DeliveryStatus, reply: Reply) -> DeliveryResult:
    return DeliveryResult(address, status, *Reason.split(reply))


def _error(reply: Reply, permanent: bool = False) -> DeliveryError:
    """Why the session could not be set up."""
    public, detail = Reason.split(reply)
    return DeliveryError(public, permanent, detail)


def _failed(reply: Reply) -> DeliveryStatus:
    """The status of a refusal: permanent for 5xx, temporary for anything else."""
    return DeliveryStatus.PERMANENT if reply.code >= 500 else DeliveryStatus.TEMPORARY


def _final(reply: Reply) -> DeliveryStatus:
    """The status after the final dot: 2xx is delivered."""
    return DeliveryStatus.DELIVERED if 200 <= reply.code < 300 else _failed(reply)


def _accepted(reply: Reply) -> bool:
    return 200 <= reply.code < 300


@implementer(IHandshakeListener)
class ESMTPClient(CommandPipeline):
    """One SMTP session.  After ``connectionMade`` it reads the greeting, says EHLO
    (HELO if EHLO is refused), does STARTTLS and AUTH as the settings say, then serves
    :meth:`send` calls one at a time until :meth:`quit`.

    ``tlsFailed`` becomes true when the connection broke while TLS was being set up,
    so the caller may try again without TLS (never with TLSA records: RFC 7672
    section 2.2 forbids it).  ``resetFailed`` becomes true when a :meth:`send` found
    the session gone at its first RSET (the peer closed a reused session meanwhile):
    nothing of the message was sent, so the caller may try it on a new session.
    ``peerExtensions`` maps the EHLO keywords the peer offered (upper case) to their
    parameters.
    """

    def __init__(self, settings: ClientSettings, reactor: IReactorTime) -> None:
        if settings.tls == "verify" and settings.tlsHostname is None:
            raise ValueError('tls="verify" needs a tlsHostname to verify the certificate against')
        if settings.tlsa and settings.tlsHostname is None:
            raise ValueError("TLSA records need the tlsHostname they are for")
        if (settings.username is None) != (settings.password is None):
            raise ValueError("username and password go together")
        super().__init__(reactor)
        self.settings = settings
        self.peerExtensions: dict[str, str] = {}
        self.tlsFailed = False
        self._secure = settings.tls == "implicit"
        # Whether the peer proved who it is: implicit TLS checks the name it is given.
        self._verified = settings.tls == "implicit" and settings.tlsHostname is not None
        self._tlsPhase = settings.tls == "implicit"  # a break now is a TLS failure
        self._setupDone = False
        self._setupError: DeliveryError | None = None
        self._readyWaiters: list[Deferred[None]] = []
        self._lostWaiters: list[Deferred[None]] = []
        self._needReset = False
        self.resetFailed = False
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
            self._replyReceived(Reason(220, "", "TLS handshake done"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._cancelTimer()
        message = reason.getErrorMessage() if reason is not None else "connection closed"
        if self._tlsPhase:
            self._break(Reason.of(replies.PEER_TLS_FAILED, f"TLS with {self.peer} failed: {message}"))
        else:
            self._break(Reason.of(replies.PEER_CONNECTION_LOST, f"connection to {self.peer} lost: {message}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def _break(self, reason: Reply) -> None:
        if self._broken is None:
            self.tlsFailed = self.tlsFailed or (self._tlsPhase and not self.settings.tlsa)
        super()._break(reason)

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
            self._break(Reason.of(replies.PEER_SESSION_FAILED,
                                  f"session with {self.peer} not set up: {self._setupError}"))
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
            raise _error(Reason.of(replies.PEER_NO_STARTTLS, f"{self.peer} does not offer STARTTLS"))
        return False

    async def _startTLS(self) -> None:
        reply = await self._command("STARTTLS", self.settings.commandTimeout, discardRest=True)
        if reply.code != 220:
            if self._broken is None and self.settings.tls == "opportunistic" and not self.settings.tlsa:
                return  # refused: go on in plaintext on this connection
            raise _error(Reason.of(replies.PEER_STARTTLS_REFUSED, f"{self.peer}: STARTTLS failed: {reply}"))
        self._tlsPhase = self._handshaking = True
        handshake = self._expect(self.settings.commandTimeout, "the TLS handshake")
        self.transport.startTLS(self.settings.tlsOptions())
        reply = await handshake
        if reply.code != 220:
            raise _error(reply)
        if any(record.usable for record in self.settings.tlsa) and not self._matchesTLSA():
            host = self.settings.tlsHostname
            mismatch = Reason.of(replies.PEER_TLSA_MISMATCH, f"certificate of {host} does not match its TLSA records")
            self._hangUp(mismatch)  # not even QUIT to a server that may be an impostor
            raise _error(mismatch)
        self._secure = True
        usable = any(record.usable for record in self.settings.tlsa)
        self._verified = usable or (self.settings.tls == "verify" and not self.settings.tlsa)
        await self._hello()

    def _matchesTLSA(self) -> bool:
        """Whether the chain the server sent satisfies the settings' TLSA records."""
        chain = self.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
        return matchesTLSA(self.settings.tlsa, [c.public_bytes(Encoding.DER) for c in chain],
                           self.settings.tlsHostname or "")

    async def _authenticate(self) -> None:
        """AUTH PLAIN, else LOGIN (RFC 4954); refusing to send credentials in the clear or
        to a peer that did not prove its name (see the module docstring)."""
        if "AUTH" not in self.peerExtensions:
            raise _error(Reason.of(replies.PEER_NO_AUTH, f"{self.peer} does not offer AUTH"))
        if not self._secure and self.settings.tls != "none":
            raise _error(Reason.of(replies.PEER_AUTH_WITHOUT_TLS, f"{self.peer} did not offer STARTTLS"))
        if not self._verified and not self.settings.allowInsecureAuth:
            how = "TLS without a verified certificate" if self._secure else "no TLS"
            raise _error(Reason.of(replies.PEER_AUTH_UNVERIFIED, f"{self.peer}: {how}, tls={self.settings.tls}"))
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
            raise _error(Reason.of(replies.PEER_NO_AUTH, f"{self.peer} offers neither AUTH PLAIN nor LOGIN"))
        if reply.code != 235:
            raise _error(reply, permanent=reply.code >= 500)

    # -- delivering -------------------------------------------------------------------

    async def _deliver(self, message: OutgoingMessage) -> list[DeliveryResult]:
        try:
            return await self._deliverAll(message)
        except Exception:
            _log.failure("Unexpected error delivering to {peer}", peer=self.peer)
            return _all(message.recipients, DeliveryStatus.TEMPORARY,
                        Reason.of(replies.DELIVERY_ERROR, f"local error while delivering to {self.peer}"))

    async def _deliverAll(self, message: OutgoingMessage) -> list[DeliveryResult]:
        self.resetFailed = False
        recipients = list(message.recipients)
        if not recipients:
            return []
        if self._setupError is not None:
            return DeliveryResult.forAll(recipients, self._setupError)
        if self._broken is not None:
            return _all(recipients, DeliveryStatus.TEMPORARY, self._broken)
        if UNSAFE.search(message.sender):
            return _all(recipients, DeliveryStatus.PERMANENT,
                        Reason.of(replies.BAD_SENDER_ADDRESS, f"sender {message.sender!r}"))
        try:
            file = message.open()
        except OSError as e:
            return _all(recipients, DeliveryStatus.TEMPORARY, Reason.of(replies.CANNOT_READ_MESSAGE, str(e)))
        with file:
            start = file.tell()  # a queue file opens past its envelope line
            if message.eightBit is None:
                message = replace(message, eightBit=has8bit(file, start))
            try:
                mail = mailCommand(message, self.peerExtensions)
            except DeliveryError as e:
                return DeliveryResult.forAll(recipients, DeliveryError(e.reply, e.permanent, f"{self.peer} {e.detail}"))
            results: dict[int, DeliveryResult] = {}
            batch: list[tuple[int, Recipient]] = []
            for i, recipient in enumerate(recipients):
                if UNSAFE.search(recipient.address):
                    results[i] = _result(recipient.address, DeliveryStatus.PERMANENT,
                                         Reason.of(replies.BAD_RECIPIENT_ADDRESS, f"recipient {recipient.address!r}"))
                else:
                    batch.append((i, recipient))
            size = self.settings.maxRecipients
            for first in range(0, len(batch), size):
                part = batch[first : first + size]
                outcome = await self._transaction(mail, [r for _, r in part], file, start, first == 0)
                results.update(zip((i for i, _ in part), outcome, strict=False))
        # A peer that offered DSN took NOTIFY and ORCPT with the message and reports
        # from now on; to one that did not, the message was "relayed" (RFC 3461 5.2.1-5.2.2).
        handoff = Handoff.PASSED_ON if "DSN" in self.peerExtensions else Handoff.RELAYED
        return [replace(results[i], handoff=handoff) if results[i].status is DeliveryStatus.DELIVERED else results[i]
                for i in range(len(recipients))]

    async def _transaction(self, mail: str, recipients: list[Recipient], file: BinaryIO,
                           start: int, first: bool) -> list[DeliveryResult]:
        """One MAIL, its RCPTs and DATA: one result per recipient.  ``first``: the
        first transaction of this :meth:`send`."""
        settings = self.settings
        if self._needReset:
            reset = await self._command("RSET", settings.commandTimeout)
            if reset.code != 250:
                # A reused session that the peer closed (or is closing, 421) as it was
                # taken up: nothing of the message went, so a new session may try at once.
                self.resetFailed = first and (self._broken is not None or reset.code == 421)
                return _all(recipients, DeliveryStatus.TEMPORARY, reset)
        self._needReset = True
        rcpts = [(rcptCommand(r, self.peerExtensions), settings.rcptTimeout) for r in recipients]
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
        results = [_result(r.address, _failed(answer), answer) for r, answer in zip(recipients, answers, strict=False)]
        if dataReply is not None and dataReply.code == 354:
            if accepted:
                final = await self._sendContent(file, start, settings.dataBlockTimeout, settings.finalDotTimeout)
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

    async def _quit(self) -> None:
        if self._broken is None:
            await self._command("QUIT", self.settings.commandTimeout)
            self._break(Reason.of(replies.PEER_SESSION_ENDED, f"the session with {self.peer} has ended"))
        if self.connected:
            lost: Deferred[None] = Deferred()
            self._lostWaiters.append(lost)
            self.transport.loseConnection()
            # A TLS close waits for the peer's close_notify: do not wait for ever.
            self._setTimer(self.settings.commandTimeout, "the connection to close")
            await lost


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _all(recipients: Sequence[Recipient], status: DeliveryStatus, reply: Reply) -> list[DeliveryResult]:
    return [_result(r.address, status, reply) for r in recipients]

"""The local submission listener: jsmail's SMTP server on a UNIX socket that every
user of this host may connect to, knowing each one by the socket's peer credentials.

Why a socket, and SMTP on it.  The queue stays the jsmail user's alone (qmail needs a
setuid qmail-queue for this, Postfix a setgid postdrop and a world-writable-by-group
maildrop); the kernel names the connecting process's uid (SO_PEERCRED), which no
client can forge; and the session is jsmail's SMTP server with every bound it keeps
for the Internet (line lengths, message size, recipients, time), because a local user
may send anything, huge, slow or malformed.  ``jsmail-sendmail`` speaks it (as
OpenSMTPD's ``sendmail`` talks SMTP to its daemon over ``smtpd.sock``), and
``sendmail -bs`` passes the user's own SMTP through.

What a session gets.  The user name is looked up (in a thread: NSS may ask a network
directory) before the greeting; a uid without one is refused, as sendmail refuses
"You do not exist".  No AUTH, no TLS, no relay control (a local user may mail
anywhere, as with any sendmail), no policy checks.  An address without a domain
(``root``, as cron writes it) gets a local one
(:func:`~jsmail.submit.settings.qualifyingDomain`).  The envelope sender is checked by
the user's :class:`LocalUser` (``docs/submission.rst`` compares the rules of sendmail,
Postfix, qmail and Exim).  Each message gets a Received field naming the uid, the
login name and the pid, in Postfix's "from userid" form, and through the funnel the
Date and Message-ID a submission is owed (RFC 6409 section 8).  Connections count
against ``smtp.max_connections`` and, per uid, ``smtp.max_connections_per_client``.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import maillog, reply
from jsmail._threads import RunInThread
from jsmail.auth import IMailUser
from jsmail.config import Config
from jsmail.listen import ListenerService
from jsmail.queue.funnel import Funnel, Owed
from jsmail.smtp.assembly import Assembler, sanitise
from jsmail.smtp.listener import Listener
from jsmail.smtp.server import ESMTPServer
from jsmail.smtp.session import Session
from jsmail.smtp.settings import ServerSettings
from jsmail.submit.endpoint import SubmissionEndpoint
from jsmail.submit.settings import SubmitSettings, qualifyingDomain
from jsmail.submit.unix import PeerCredentials, peerCredentials

_log = Logger()

NAME = "local"  # the listener's name in the operator log
LOOKUP_TIMEOUT = 30.0  # seconds the user-name lookup may take before the client is told to come back
USER_CACHE_SIZE = 256
USER_CACHE_TIME = 60.0  # seconds a looked-up name is reused
_EARLY_INPUT = 65536  # octets held from a client that talks before its greeting


class UnknownUser(Exception):
    """The uid has no entry in the user database."""


@implementer(IMailUser)
@dataclass(frozen=True)
class LocalUser:
    """A local user, known by uid, and the envelope senders they may give."""

    name: str
    uid: int
    trusted: bool = False  # may give any sender
    own: frozenset[str] = frozenset()  # their own addresses, lower case
    patterns: tuple[str, ...] = ()  # more: addresses, "@domain" or "*"
    mayRelay = True

    def maySendAs(self, sender: str) -> bool:
        if self.trusted or sender == "" or "*" in self.patterns:
            return True
        sender = sender.lower()
        return sender in self.own or sender in self.patterns or "@" + sender.rpartition("@")[2] in self.patterns

    def mayWriteAs(self, author: str) -> bool:
        """Any From or Sender: cron writes "From: root (Cron Daemon)" as the job's own
        user, and mail readers the user's address elsewhere.  What the user is held
        to is the envelope sender, and the Received field names their uid; mail from
        this socket is never DKIM-signed (docs/submission.rst)."""
        return True


@dataclass(frozen=True)
class SenderRule:
    """Makes each user's :class:`LocalUser`: root, the user this process runs as (with
    ``trustOwnUser``; asked at each connection, since twistd drops root after the
    gateway is made) and the logins in ``trustedNames`` may give any sender; others
    ``login@`` one of ``domains``, the null sender, and their ``patterns``."""

    domains: tuple[str, ...]
    trustedNames: frozenset[str] = frozenset()
    patterns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    trustOwnUser: bool = True

    @classmethod
    def fromSettings(cls, settings: SubmitSettings, domains: tuple[str, ...]) -> SenderRule:
        return cls(domains, frozenset(settings.trustedUsers), dict(settings.senders))

    def userFor(self, uid: int, login: str) -> LocalUser:
        trusted = uid == 0 or (self.trustOwnUser and uid == os.geteuid()) or login in self.trustedNames
        return LocalUser(login, uid, trusted,
                         frozenset(f"{login}@{domain}".lower() for domain in self.domains),
                         self.patterns.get(login, ()))


class LocalAssembler(Assembler):
    """Writes the local submission's trace field: who handed the message in, by uid,
    login name and process, as Postfix's pickup writes "from userid"."""

    def receivedHeader(self, session: Session, queueId: str) -> bytes:
        user = session.user
        assert isinstance(user, LocalUser), "a local session has its user before any message"
        stamp = format_datetime(datetime.fromtimestamp(self.clock.seconds(), UTC))
        forClause = f"\r\n\tfor <{session.recipients[0].address}>" if len(session.recipients) == 1 else ""
        return (f"Received: by {self.hostname} (jsmail, from userid {user.uid} ({sanitise(user.name)}) "
                f"pid {session.clientPort})\r\n\tid {queueId}{forClause};\r\n\t{stamp}\r\n").encode()


@dataclass(frozen=True)
class LocalListener(Listener):
    """A :class:`Listener` whose messages get :class:`LocalAssembler`'s trace field."""

    @cached_property
    def assembler(self) -> Assembler:
        settings = self.settings
        return LocalAssembler(settings.hostname, settings.authservId, False, self.modifiers,
                              bool(self.phases.messagePolicies), self.clock, self.runInThread, self.owed)


_BARE_PATH = re.compile(r' *<([^<>@"\\\s:,]+)>')


def qualified(argument: str, prefix: str, domain: str) -> str:
    """A MAIL or RCPT argument whose path has no domain (``TO:<root>``) with
    ``@domain`` added; anything else unchanged (the server judges it)."""
    if argument[: len(prefix)].upper() != prefix:
        return argument
    match = _BARE_PATH.match(argument, len(prefix))
    if match is None:
        return argument
    return f"{argument[: match.end(1)]}@{domain}{argument[match.end(1):]}"


class LocalSession(ESMTPServer):
    """One local client: its peer credentials and user name come first, then the SMTP
    session; what it sends before that waits (at most :data:`_EARLY_INPUT` octets)."""

    def __init__(self, listener: Listener, factory: LocalSubmissionFactory) -> None:
        super().__init__(listener)
        self.factory = factory
        self.peer: PeerCredentials | None = None
        self._admitted = False
        self._started = False
        self._gone = False
        self._timer: Any = None
        self._early = b""

    @property
    def _transport(self) -> Any:
        """The UNIX socket's transport (typed as a bare ITransport by Protocol)."""
        return self.transport

    def clientOf(self, transport: Any) -> tuple[str, int]:
        assert self.peer is not None
        return f"uid={self.peer.uid}", self.peer.pid  # "[uid=1000]:4242" in the operator log

    def connectionMade(self) -> None:
        try:
            self.peer = peerCredentials(self._transport.getHandle())
        except OSError as e:
            self._refuse(reply.LOCAL_NO_CREDENTIALS, f"no peer credentials: {e}")
            return
        if not self.factory.admit(self.peer.uid):
            self._refuse(reply.TOO_MANY_FROM_USER, "per-user connection limit reached")
            return
        self._admitted = True
        self._timer = self.clock.callLater(LOOKUP_TIMEOUT, self._lookupTooSlow)
        self.factory.userFor(self.peer.uid).addBoth(self._known)

    def _lookupTooSlow(self) -> None:
        self._timer = None
        self._refuse(reply.LOCAL_USER_LOOKUP_FAILED, f"no user name after {LOOKUP_TIMEOUT:g} s")

    def _known(self, user: LocalUser | Failure) -> None:
        if self._gone:
            return  # the client left, or the lookup took too long and it was told so
        self._timer.cancel()
        self._timer = None
        if isinstance(user, Failure):
            assert self.peer is not None
            if user.check(UnknownUser):
                self._refuse(reply.LOCAL_USER_UNKNOWN.format(self.peer.uid), "uid has no user name")
            else:
                _log.failure("Cannot look up uid {uid}", user, uid=self.peer.uid)
                self._refuse(reply.LOCAL_USER_LOOKUP_FAILED, f"user lookup failed: {user.getErrorMessage()}")
            return
        self._started = True
        super().connectionMade()
        self.session.user = user
        early, self._early = self._early, b""
        if early:
            super().dataReceived(early)

    def _refuse(self, refusal: reply.Reply, reason: str) -> None:
        client = f"[uid={self.peer.uid}]:{self.peer.pid}" if self.peer is not None else "[local]"
        maillog.reject(client, "CONNECT", refusal, reason, listener=NAME)
        self._gone = True
        self._transport.write(b"".join(refusal.lines()))
        self._transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            super().dataReceived(data)
        elif not self._gone:
            self._early += data  # sent before the greeting, read once the session starts
            if len(self._early) > _EARLY_INPUT:
                self._refuse(reply.LINE_TOO_LONG, "too much input before the greeting")

    def smtp_MAIL(self, argument: str) -> Any:
        return super().smtp_MAIL(qualified(argument, "FROM:", self.factory.qualifier))

    def smtp_RCPT(self, argument: str) -> Any:
        return super().smtp_RCPT(qualified(argument, "TO:", self.factory.qualifier))

    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self._gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._started:
                super().connectionLost(reason)
        finally:
            if self._admitted:
                self._admitted = False
                self.factory.release(self.peer.uid)  # type: ignore[union-attr]


class LocalSubmissionFactory(Factory):
    """Builds :class:`LocalSession` sessions; counts connections in all and per uid,
    and keeps user names found recently (at most :data:`USER_CACHE_SIZE`)."""

    noisy = False

    def __init__(self, listener: Listener, rule: SenderRule, qualifier: str, runInThread: RunInThread) -> None:
        self.listener = listener
        self.rule = rule
        self.qualifier = qualifier
        self.runInThread = runInThread
        self.connections = 0
        self.perUser: dict[int, int] = {}
        self._names: dict[int, tuple[str, float]] = {}

    def buildProtocol(self, addr: Any) -> LocalSession:
        return LocalSession(self.listener, self)

    def admit(self, uid: int) -> bool:
        settings = self.listener.settings
        if self.connections >= settings.maxConnections or self.perUser.get(uid, 0) >= settings.maxConnectionsPerClient:
            return False
        self.connections += 1
        self.perUser[uid] = self.perUser.get(uid, 0) + 1
        return True

    def release(self, uid: int) -> None:
        self.connections -= 1
        left = self.perUser.pop(uid) - 1
        if left:
            self.perUser[uid] = left

    def userFor(self, uid: int) -> defer.Deferred[LocalUser]:
        """The user with ``uid``, by a name found recently or looked up in a thread."""
        known = self._names.get(uid)
        if known is not None and known[1] > self.listener.clock.seconds():
            return defer.succeed(self.rule.userFor(uid, known[0]))

        def found(name: str) -> LocalUser:
            if len(self._names) >= USER_CACHE_SIZE:
                self._names.pop(next(iter(self._names)))
            self._names[uid] = (name, self.listener.clock.seconds() + USER_CACHE_TIME)
            return self.rule.userFor(uid, name)

        return self.runInThread(loginName, uid).addCallback(found)


def loginName(uid: int) -> str:
    """The user name of ``uid`` (blocking: NSS may ask a directory server)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise UnknownUser(uid) from None


def localSubmission(reactor: Any, path: str, funnel: Funnel, settings: ServerSettings, rule: SenderRule,
                    qualifier: str, runInThread: RunInThread, roomFor: Callable[[int], bool] | None = None,
                    checks: Sequence[object] = ()) -> ListenerService:
    """The listener service for the socket at ``path``, queueing through ``funnel``
    (owing what a submission is owed) under ``settings``' limits; ``roomFor`` says
    whether the queue has room for a message (see :class:`Listener`); ``checks``
    judge recipients (unknown local ones are refused at RCPT, not bounced)."""
    settings = replace(settings, greeting="", requireTLS=False, requireAuth=False, normaliseLineEndings=True,
                       strictHelo=False)
    owed = Owed(complete=True, hostname=settings.hostname)
    listener = LocalListener(settings, funnel.owing(owed), reactor, NAME, tuple(checks), runInThread=runInThread,
                             roomFor=roomFor, owed=owed)
    description = "unix:" + path.replace("\\", "\\\\").replace(":", "\\:")  # for the log; not parsed again
    service = ListenerService(reactor, description, LocalSubmissionFactory(listener, rule, qualifier, runInThread),
                              NAME)
    service.endpoint = SubmissionEndpoint(reactor, path)
    return service


def forGateway(config: Config, funnel: Funnel, reactor: Any, runInThread: RunInThread,
               roomFor: Callable[[int], bool] | None = None, checks: Sequence[object] = ()) -> ListenerService:
    """The gateway's local submission listener, as ``config`` says (``[submit]``, the
    ``[smtp]`` limits, the host name and local domains)."""
    server = config.server
    qualifier = qualifyingDomain(config)
    domains = tuple(dict.fromkeys((server.hostname, qualifier, *server.domains)))
    rule = SenderRule.fromSettings(config.submit, domains)
    return localSubmission(reactor, config.submit.socket, funnel, config.smtp, rule, qualifier, runInThread, roomFor,
                           checks)

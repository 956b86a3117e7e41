"""The SMTP AUTH exchange (RFC 4954) and its SASL mechanisms.

The mechanisms turn client lines into
:class:`~twisted.cred.credentials.UsernamePassword` credentials for the portal
(:mod:`jsmail.auth`): :class:`PlainMechanism` is RFC 4616, :class:`LoginMechanism` the
widely used draft-murchison-sasl-login.  :class:`AuthExchange` runs one session's
exchange: challenges, the login, and the slowdown after failed attempts.
"""

from __future__ import annotations

import binascii
from collections import OrderedDict
from typing import Any

from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail import maillog, reply
from jsmail.auth import IMailUser, TemporaryAuthFailure
from jsmail.error import SMTPReplyError
from jsmail.reply import Reply
from jsmail.smtp.session import Session

_log = Logger()


def _decode(line: str) -> bytes:
    if line.strip() == "*":
        raise SMTPReplyError(reply.AUTH_CANCELLED)
    try:
        return binascii.a2b_base64(line.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SMTPReplyError(reply.AUTH_BAD_BASE64) from None


def _text(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("Credentials are not UTF-8")) from None
    if any(c in text for c in "\r\n\x00"):
        raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("Credentials contain CR, LF or NUL"))
    return text


class PlainMechanism:
    """SASL PLAIN (RFC 4616): ``authzid NUL authcid NUL passwd`` in one response.

    The authorisation identity must be empty or equal the authentication identity
    unless ``allowProxy`` (acting for another user is not something jsmail grants).
    """

    name = "PLAIN"

    def __init__(self, allowProxy: bool = False) -> None:
        self.allowProxy = allowProxy

    def challenge(self) -> str:
        return ""

    def respond(self, line: str) -> credentials.UsernamePassword | str:
        parts = _decode(line).split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("PLAIN needs authzid NUL authcid NUL password"))
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid and authzid != authcid and not self.allowProxy:
            raise SMTPReplyError(reply.AUTH_BAD_CREDENTIALS, f"{authcid} asked to act as {authzid}")
        return credentials.UsernamePassword(authcid.encode("utf-8"), password.encode("utf-8"))


class LoginMechanism:
    """The LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def challenge(self) -> str:
        return "VXNlcm5hbWU6"  # "Username:"

    def respond(self, line: str) -> credentials.UsernamePassword | str:
        value = _text(_decode(line)).encode("utf-8")
        if self._username is None:
            self._username = value
            return "UGFzc3dvcmQ6"  # "Password:"
        return credentials.UsernamePassword(self._username, value)


MECHANISMS = {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism}


class FailureCounter:
    """Failed logins by key (a client's address or network, a user name), across
    sessions: a guesser gains nothing by hanging up and connecting again.  A failure is
    forgotten ``window`` seconds after it happened; at most ``maxKeys`` keys are kept
    (the oldest go first), so the map is bounded whatever the attacker sends."""

    def __init__(self, window: float = 900.0, maxKeys: int = 10_000) -> None:
        self.window = window
        self.maxKeys = maxKeys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.pop(0)
        if not times:
            del self._failures[key]
        return len(times)

    def add(self, key: str, now: float) -> None:
        times = self._failures.pop(key, [])
        times.append(now)
        self._failures[key] = times[-64:]  # more are not needed to decide anything
        while len(self._failures) > self.maxKeys:
            self._failures.popitem(last=False)


class AuthExchange:
    """One session's AUTH: a mechanism's challenges while it runs, then the login
    through the portal.

    Guessing is slowed down across sessions (security review M-10): after failures from
    the client's address (its /64 for IPv6) or for the user name, every answer, success
    or failure alike, waits ``failureDelay`` seconds doubling with each (at most
    ``MAX_DELAY``), so the time of the answer tells nothing; ``maxClientFailures``
    failures from one client within the counter's window get 421 without a password
    check; and in one session the failure after ``maxFailures`` closes it with 421."""

    MAX_DELAY = 30.0

    def __init__(self, portal: Portal, session: Session, clock: IReactorTime, allowProxy: bool,
                 maxFailures: int, failureDelay: float, counter: FailureCounter | None = None,
                 clientKey: str = "", maxClientFailures: int = 10) -> None:
        self.portal = portal
        self.session = session
        self.clock = clock
        self.allowProxy = allowProxy
        self.maxFailures = maxFailures
        self.failureDelay = failureDelay
        self.counter = counter if counter is not None else FailureCounter()
        self.clientKey = clientKey or session.clientAddress
        self.maxClientFailures = maxClientFailures
        self.failures = 0
        self._mechanism: PlainMechanism | LoginMechanism | None = None

    @property
    def inProgress(self) -> bool:
        """Whether the next client line is a SASL response, not a command."""
        return self._mechanism is not None

    def start(self, argument: str) -> Reply | defer.Deferred[Reply]:
        """``AUTH <mechanism> [initial-response]``."""
        name, _, initial = argument.strip().partition(" ")
        mechanism = MECHANISMS.get(name.upper())
        if mechanism is None:
            return reply.AUTH_UNKNOWN_MECHANISM
        self._mechanism = PlainMechanism(self.allowProxy) if mechanism is PlainMechanism else mechanism()
        if not initial:
            return reply.AUTH_CHALLENGE.withText(self._mechanism.challenge())
        return self.respond(b"" if initial == "=" else initial.encode("utf-8"))

    def respond(self, line: bytes) -> Reply | defer.Deferred[Reply]:
        """One client line of the exchange: a challenge back, or a login attempt."""
        mechanism = self._mechanism
        assert mechanism is not None
        try:
            answer = mechanism.respond(line.decode("ascii", "replace"))
        except SMTPReplyError:
            self._mechanism = None
            raise
        if isinstance(answer, str):
            return reply.AUTH_CHALLENGE.withText(answer)
        self._mechanism = None
        now = self.clock.seconds()
        name = answer.username.decode("utf-8", "replace")
        if self.counter.count(self.clientKey, now) >= self.maxClientFailures:
            maillog.auth(self.session.client, name, "refused: too many failures from this client lately",
                         self.session.sessionId)
            return reply.AUTH_TOO_MANY_FAILURES
        earlier = max(self.counter.count(self.clientKey, now), self.counter.count("user:" + name.lower(), now),
                      self.failures)
        delay = min(self.failureDelay * 2 ** (earlier - 1), self.MAX_DELAY) if earlier else 0.0
        d = self.portal.login(answer, None, IMailUser).addCallbacks(self._authenticated, self._failed,
                                                                    errbackArgs=(name,))
        if not delay:
            return d
        return d.addCallback(lambda answered: deferLater(self.clock, delay, lambda: answered))

    def lineTooLong(self) -> Reply:
        """A response over the command-line limit ends the exchange (RFC 4954 section 6:
        500 5.5.6), so what follows it is read as commands again."""
        self._mechanism = None
        return reply.AUTH_LINE_TOO_LONG

    def _authenticated(self, result: tuple[Any, IMailUser, Any]) -> Reply:
        _, user, _ = result
        self.session.user = user
        maillog.auth(self.session.client, user.name, "ok", self.session.sessionId)
        return reply.AUTH_OK

    def _failed(self, failure: Failure, name: str) -> Reply:
        if failure.check(TemporaryAuthFailure):
            maillog.auth(self.session.client, name, f"temporary failure: {failure.getErrorMessage()}",
                         self.session.sessionId)
            return reply.AUTH_TEMPORARY
        if not failure.check(UnauthorizedLogin):
            _log.failure("Authentication of {name} failed", failure, name=name)
            return reply.AUTH_TEMPORARY
        self.failures += 1
        now = self.clock.seconds()
        self.counter.add(self.clientKey, now)
        self.counter.add("user:" + name.lower(), now)
        maillog.auth(self.session.client, name, f"bad credentials (failure {self.failures})", self.session.sessionId)
        if self.failures > self.maxFailures:
            return reply.AUTH_TOO_MANY_FAILURES
        return reply.AUTH_BAD_CREDENTIALS

"""Who may authenticate (twisted.cred's side of SMTP AUTH, RFC 4954): the mail-user
realm, jsmail's own checkers, and the portal the listeners share.  The SASL exchange on
the wire is :mod:`jsmail.smtp.sasl`.

- :class:`MailRealm` gives each authenticated user an :class:`IMailUser` avatar that
  says whether the user may relay and which sender addresses the user may use.
- :class:`HashedPasswordFile` checks bcrypt hashes from a ``user:hash`` file (see the
  ``jsmail passwd`` command); :class:`CheckpasswordChecker` runs a program speaking
  the checkpassword interface (https://cr.yp.to/checkpwd/interface.html): it reads
  ``user\\0password\\0timestamp\\0`` on fd 3 and exits 0 (good), 1 (bad) or
  111 (temporary trouble).  Both are also twisted.cred checker plugins (``--auth
  hashed:FILE``, ``--auth checkpassword:PROGRAM``), beside Twisted's own
  (``memory:``, ``file:``, ``unix``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, NoReturn

import bcrypt
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from jsmail._disk import openNew
from jsmail._process import Finished, run
from jsmail._threads import RunInThread, reactorThreads

_log = Logger()


@dataclass(frozen=True)
class AuthSettings:
    """Who may authenticate (``config.auth``, the ``[auth]`` section): the password
    file (empty: ``passwd`` in the data directory), more twisted.cred checkers by
    description (``memory:...``, ``file:...``, ``hashed:...``), and which senders an
    authenticated user may use ("any", or "own": only the user's own address)."""

    passwordFile: str = ""
    checkers: tuple[str, ...] = ()
    senderRule: str = "own"


class TemporaryAuthFailure(Exception):
    """The checker could not decide now (checkpassword exit 111): 454 4.7.0."""


class IMailUser(Interface):
    """What an authenticated client may do."""

    name = Attribute("The authentication identity.")
    mayRelay = Attribute("Whether the user may send to non-local domains.")

    def maySendAs(sender: str) -> bool:
        """Whether the user may use ``sender`` as the MAIL FROM address."""

    def mayWriteAs(author: str) -> bool:
        """Whether the user may name ``author`` in the From or Sender header field."""


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    """A user of the submission service.  ``senderRule`` is ``"any"`` (any address)
    or ``"own"`` (only the user's own address: the name itself when it is an address,
    else ``name@domain`` for a local domain)."""

    name: str
    localDomains: frozenset[str] = frozenset()
    senderRule: str = "own"
    mayRelay: bool = True

    def maySendAs(self, sender: str) -> bool:
        if self.senderRule == "any":
            return True
        own = {self.name.lower()} if "@" in self.name else {f"{self.name}@{d}".lower() for d in self.localDomains}
        return sender.lower() in own

    def mayWriteAs(self, author: str) -> bool:
        return self.maySendAs(author)  # submission signs with DKIM: the author is held to the same rule


@implementer(IRealm)
class MailRealm:
    """Makes :class:`MailUser` avatars with the configured sender rule."""

    def __init__(self, localDomains: Iterable[str] = (), senderRule: str = "own") -> None:
        self.localDomains = frozenset(d.lower() for d in localDomains)
        self.senderRule = senderRule

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, MailUser, Any]:
        if IMailUser not in interfaces:
            raise NotImplementedError("jsmail's realm only makes IMailUser avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return IMailUser, MailUser(name, self.localDomains, self.senderRule), lambda: None


# -- checkers ---------------------------------------------------------------------------


class UnfitChecker(ValueError):
    """A checker that cannot judge a user name and password, so cannot serve SMTP AUTH."""


def forSMTPAuth(checker: ICredentialsChecker, description: str = "") -> ICredentialsChecker:
    """``checker`` made fit for SMTP AUTH, whose credentials are a user name and password
    in bytes; raises :class:`UnfitChecker` for a checker that cannot judge them (an
    anonymous checker would let anyone relay, an SSH-key one fails every AUTH).

    Twisted's ``memory:`` checker keeps str names and passwords, which a bytes lookup
    never finds, so it gets a bytes copy of its table."""
    name = description.partition(":")[0] or type(checker).__name__
    if credentials.IUsernamePassword not in tuple(checker.credentialInterfaces):
        raise UnfitChecker(
            f"the {name!r} checker cannot check a user name and password, so it cannot be used for SMTP AUTH"
        )
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        users = {_asBytes(user): _asBytes(password) for user, password in checker.users.items()}
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.users = users
    return checker


def _asBytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value



@implementer(ICredentialsChecker)
class AnyOfCheckers:
    """Tries several checkers in order; the first to accept wins.  (A Portal keeps one
    checker per credentials interface, so several user databases need this.)  When all
    refuse, a temporary failure among them makes the answer temporary."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, checkers: Iterable[ICredentialsChecker]) -> None:
        self.checkers = tuple(checkers)

    @defer.inlineCallbacks
    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> Any:
        temporary = None
        for checker in self.checkers:
            if not any(iface.providedBy(creds) for iface in checker.credentialInterfaces):
                continue  # e.g. an anonymous or SSH-key checker: it cannot judge a password
            try:
                return (yield defer.maybeDeferred(checker.requestAvatarId, creds))
            except TemporaryAuthFailure as e:
                temporary = e
            except (error.UnauthorizedLogin, error.UnhandledCredentials):
                pass
        raise temporary if temporary is not None else error.UnauthorizedLogin()



@implementer(ICredentialsChecker)
class HashedPasswordFile:
    """``user:bcrypt-hash`` lines; the file is read again when it changes.  Hash checks
    run in a thread (bcrypt is slow on purpose).

    A user whose hash is not a bcrypt hash (empty, ``!``, ``*``, or ``!`` put before a
    hash) is locked: always refused.  Every attempt costs one bcrypt check (against a
    dummy hash for unknown and locked users), so timing does not tell them apart."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: str, runInThread: RunInThread | None = None) -> None:
        self.path = path
        self._runInThread = runInThread
        self._stamp: tuple[float, int] | None = None
        self._hashes: dict[bytes, bytes] = {}

    def _current(self) -> dict[bytes, bytes]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return {}  # no users yet: "jsmail passwd" makes the file
        if (stat.st_mtime, stat.st_size) != self._stamp:
            self._hashes = readPasswordFile(self.path)
            self._stamp = (stat.st_mtime, stat.st_size)
        return self._hashes

    def reload(self) -> None:
        """Read the file at the next AUTH even if its time stamp and size look unchanged
        (SIGHUP: a file rewritten within one time-stamp tick is not missed)."""
        self._stamp = None

    def userNames(self) -> frozenset[str]:
        """The users in the file, lower-cased (blocking: it may read the file)."""
        try:
            return frozenset(name.decode("utf-8", "replace").lower() for name in self._current())
        except OSError:
            return frozenset()

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes | tuple[()]]:
        runInThread = self._runInThread
        if runInThread is None:
            from twisted.internet import reactor

            runInThread = reactorThreads(reactor)

        def check() -> bool:
            """In a thread: the file's stat (and reading, when it changed) as well as
            bcrypt stay off the reactor."""
            hashed = self._current().get(creds.username)
            usable = hashed if hashed is not None and _BCRYPT_HASH.match(hashed) else None
            return checkPassword(creds.password, usable)

        def checked(ok: bool) -> bytes:
            if ok:
                return creds.username
            raise error.UnauthorizedLogin()

        def unreadable(failure: Failure) -> NoReturn:
            failure.trap(OSError)
            assert isinstance(failure.value, OSError)
            raise TemporaryAuthFailure(f"cannot read {self.path}: {failure.value.strerror}")

        return runInThread(check).addCallbacks(checked, unreadable)


#: What bcrypt makes (``$2b$``, cost, 22 octets of salt and 31 of hash); anything else
#: in the hash column is a locked account.
_BCRYPT_HASH = re.compile(rb"\$2[abxy]?\$[0-9]{2}\$[./A-Za-z0-9]{53}\Z")
#: bcrypt reads at most 72 octets of a password (bcrypt 5 refuses longer ones).
_BCRYPT_MAX = 72


def _bcryptInput(password: bytes) -> bytes:
    """What is given to bcrypt for ``password``: itself up to 72 octets; a longer one
    pre-hashed (base64 of its SHA-256), so that every octet of it counts."""
    if len(password) <= _BCRYPT_MAX:
        return password
    return base64.b64encode(hashlib.sha256(password).digest())


def _bcryptCheck(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a NUL in the password, or a hash bcrypt cannot read
        return False


def checkPassword(password: bytes, hashed: bytes | None) -> bool:
    """Whether ``password`` matches the bcrypt hash ``hashed`` (blocking).  None (no such
    user, or a locked one) is checked against a dummy hash and is always False.

    A password over 72 octets is checked in its pre-hashed form (what :func:`setPassword`
    writes) and, for hashes written by bcrypt before 5.0, which cut passwords at 72
    octets, as its first 72 octets; both checks always run, so the time taken does not
    depend on which matched."""
    target = hashed or _dummyHash()
    ok = _bcryptCheck(_bcryptInput(password), target)
    if len(password) > _BCRYPT_MAX:
        ok = _bcryptCheck(password[:_BCRYPT_MAX], target) | ok
    return ok and hashed is not None


@functools.cache
def _dummyHash() -> bytes:
    return bcrypt.hashpw(b"no such user", bcrypt.gensalt())


def readPasswordFile(path: str) -> dict[bytes, bytes]:
    """User name to hash, from ``user:hash`` lines (``#`` starts a comment).  A line
    without a usable hash locks its user, and is logged (without the line's text past
    the user name); a line without a user name is logged and skipped."""
    hashes = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            user, _, hashed = line.partition(b":")
            if not user:
                _log.warn("{path} line {number}: no user name; line ignored", path=path, number=number)
                continue
            if not _BCRYPT_HASH.match(hashed):
                _log.warn("{path} line {number}: no bcrypt hash for {user!r}; the account is locked",
                          path=path, number=number, user=user)
            hashes[user] = hashed
    return hashes


def setPassword(path: str, user: str, password: str) -> None:
    """Add or replace ``user`` in a hashed password file (written atomically).  A
    password over 72 octets is hashed in its pre-hashed form (see :func:`checkPassword`)."""
    if ":" in user or not user or any(c.isspace() for c in user):
        raise ValueError(f"bad user name {user!r}: no colon or white space")
    hashes = readPasswordFile(path) if os.path.exists(path) else {}
    hashes[user.encode("utf-8")] = bcrypt.hashpw(_bcryptInput(password.encode("utf-8")), bcrypt.gensalt())
    _writePasswordFile(path, hashes)


def removeUser(path: str, user: str) -> bool:
    """Take ``user`` out of a hashed password file (written atomically); False if the
    user was not in it, and then the file is left as it was."""
    hashes = readPasswordFile(path) if os.path.exists(path) else {}
    if hashes.pop(user.encode("utf-8"), None) is None:
        return False
    _writePasswordFile(path, hashes)
    return True


def _writePasswordFile(path: str, hashes: dict[bytes, bytes]) -> None:
    tmp = path + ".tmp"
    with os.fdopen(openNew(tmp, exclusive=False), "wb") as f:  # 0600, and the gateway's when root writes it
        f.write(b"".join(u + b":" + h + b"\n" for u, h in sorted(hashes.items())))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@implementer(ICredentialsChecker)
class CheckpasswordChecker:
    """Runs ``program /bin/true`` per attempt (the checkpassword interface); a program
    that takes longer than ``timeout`` seconds is killed: a temporary failure."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, program: str, reactor: Any = None, timeout: float = 30.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.program = program
        self.reactor = reactor
        self.timeout = timeout

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes | tuple[()]]:
        payload = b"%s\x00%s\x00%d\x00" % (creds.username, creds.password, int(time.time()))
        # Only fd 3 is a pipe: a program that leaves children behind holding its stdout
        # cannot keep the check waiting.
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            d = run(self.reactor, [self.program, "/bin/true"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    inputs={3: payload}, files={0: devnull, 1: devnull, 2: 2}, timeout=self.timeout)
        finally:
            os.close(devnull)

        def decided(finished: Finished) -> bytes:
            code = finished.code
            if finished.timedOut:
                raise TemporaryAuthFailure(f"{self.program} took longer than {self.timeout:g} s")
            if code == 0:
                return creds.username
            if code == 1:
                raise error.UnauthorizedLogin()
            raise TemporaryAuthFailure(f"{self.program} exited with {code}")

        return d.addCallback(decided)


@implementer(ICheckerFactory, IPlugin)
class HashedPasswordFileFactory:
    authType = "hashed"
    authHelp = "A file of user:bcrypt-hash lines, as written by 'jsmail passwd'; re-read when it changes."
    argStringFormat = "The path of the file."
    credentialInterfaces = HashedPasswordFile.credentialInterfaces

    def generateChecker(self, argstring: str) -> HashedPasswordFile:
        return HashedPasswordFile(argstring)


@implementer(ICheckerFactory, IPlugin)
class CheckpasswordFactory:
    authType = "checkpassword"
    authHelp = "Run a checkpassword-interface program (user, password on fd 3; exit 0 ok, 1 bad, 111 retry)."
    argStringFormat = "The path of the program, then :timeout=SECONDS if 30 is not right."
    credentialInterfaces = CheckpasswordChecker.credentialInterfaces

    def generateChecker(self, argstring: str) -> CheckpasswordChecker:
        program, option, value = argstring.rpartition(":timeout=")
        if not option:
            program, timeout = argstring, 30.0
        else:
            try:
                timeout = float(value)
            except ValueError:
                timeout = 0.0
            if not 0 < timeout <= 3600:
                raise ValueError(f"timeout={value!r}: give the seconds a program may take, above 0 and at most 3600")
        if not os.access(program, os.X_OK):
            raise ValueError(f"{program!r} is not an executable program")
        return CheckpasswordChecker(program, timeout=timeout)

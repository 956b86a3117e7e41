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

import functools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred import strcred
from twisted.cred.portal import IRealm, Portal
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from jsmail._process import Finished, run
from jsmail._threads import RunInThread, reactorThreads


if TYPE_CHECKING:
    from jsmail.config import Config

_log = Logger()


class TemporaryAuthFailure(Exception):
    """The checker could not decide now (checkpassword exit 111): 454 4.7.0."""


class IMailUser(Interface):
    """What an authenticated client may do."""

    name = Attribute("The authentication identity.")
    mayRelay = Attribute("Whether the user may send to non-local domains.")

    def maySendAs(sender: str) -> bool:
        """Whether the user may use ``sender`` as the MAIL FROM address."""


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    """A user of the submission service.  ``senderRule`` is ``"any"`` (any address)
    or ``"own"`` (only the user's own address: the name itself when it is an address,
    else ``name@domain`` for a local domain)."""

    name: str
    localDomains: frozenset[str] = frozenset()
    senderRule: str = "any"
    mayRelay: bool = True

    def maySendAs(self, sender: str) -> bool:
        if self.senderRule == "any":
            return True
        own = {self.name.lower()} if "@" in self.name else {f"{self.name}@{d}".lower() for d in self.localDomains}
        return sender.lower() in own


@implementer(IRealm)
class MailRealm:
    """Makes :class:`MailUser` avatars with the configured sender rule."""

    def __init__(self, localDomains: Iterable[str] = (), senderRule: str = "any") -> None:
        self.localDomains = frozenset(d.lower() for d in localDomains)
        self.senderRule = senderRule

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, MailUser, Any]:
        if IMailUser not in interfaces:
            raise NotImplementedError("jsmail's realm only makes IMailUser avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return IMailUser, MailUser(name, self.localDomains, self.senderRule), lambda: None


# -- checkers ---------------------------------------------------------------------------


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
    run in a thread (bcrypt is slow on purpose)."""

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

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes]:
        import bcrypt

        try:
            hashed = self._current().get(creds.username)
        except OSError as e:
            return defer.fail(TemporaryAuthFailure(f"cannot read {self.path}: {e.strerror}"))
        # Check unknown users against a dummy hash, so timing does not tell them apart.
        runInThread = self._runInThread
        if runInThread is None:
            from twisted.internet import reactor

            runInThread = reactorThreads(reactor)
        d = runInThread(bcrypt.checkpw, creds.password, hashed or _dummyHash())

        def checked(ok: bool) -> bytes:
            if ok and hashed is not None:
                return creds.username  # type: ignore[no-any-return]
            raise error.UnauthorizedLogin()

        return d.addCallback(checked)


@functools.cache
def _dummyHash() -> bytes:
    import bcrypt

    return bcrypt.hashpw(b"no such user", bcrypt.gensalt())


def readPasswordFile(path: str) -> dict[bytes, bytes]:
    hashes = {}
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(b"#"):
                user, _, hashed = line.partition(b":")
                hashes[user] = hashed
    return hashes


def setPassword(path: str, user: str, password: str) -> None:
    """Add or replace ``user`` in a hashed password file (written atomically)."""
    import bcrypt

    if ":" in user or not user or any(c.isspace() for c in user):
        raise ValueError(f"bad user name {user!r}: no colon or white space")
    hashes = readPasswordFile(path) if os.path.exists(path) else {}
    hashes[user.encode("utf-8")] = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt())
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
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

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes]:
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
                return creds.username  # type: ignore[no-any-return]
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
    argStringFormat = "The path of the program."
    credentialInterfaces = CheckpasswordChecker.credentialInterfaces

    def generateChecker(self, argstring: str) -> CheckpasswordChecker:
        if not os.access(argstring, os.X_OK):
            raise ValueError(f"{argstring!r} is not an executable program")
        return CheckpasswordChecker(argstring)


def makePortal(config: Config, extraCheckers: Sequence[ICredentialsChecker] = (),
               runInThread: RunInThread | None = None) -> Portal:
    """AUTH users: the password file under the data directory (``jsmail passwd``), then
    the configured checkers, then any given on the command line (``--auth``).  Password
    hashes are checked with ``runInThread``."""
    checkers: list[ICredentialsChecker] = [HashedPasswordFile(os.path.abspath(config.passwordPath), runInThread)]
    checkers += [strcred.makeChecker(description) for description in config.authCheckers]
    checkers += list(extraCheckers)
    return Portal(MailRealm(config.domains, config.senderRule), [AnyOfCheckers(checkers)])

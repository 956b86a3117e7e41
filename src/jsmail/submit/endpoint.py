"""Listening on the local submission socket, in a directory no one else controls.

Every local user may connect (the socket is 0666, its directory 0755), so what the
socket's place must guarantee is that the socket they reach is the gateway's: its
directory must be a real directory (not a symlink), owned by root or by the gateway's
user, and writable by no one else, or an unprivileged user could put a socket of
their own there and read what others submit.  A socket left by a gateway that died is
removed at start (once nothing answers on it); anything else under the socket's name
is left alone, and starting fails with the reason.

The socket is made when the gateway binds its ports (``privilegedStartService``),
before ``twistd --uid`` drops root, so a directory only root may write (``/run/jsmail``)
works.  After the drop the gateway may no longer be able to remove the socket when it
stops; that is harmless, since the next start removes it.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import address, defer, tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail.submit.unix import connect, reachable

_log = Logger()


class SocketPlaceError(Exception):
    """The socket cannot be made where it is configured: the message says why."""


def preparePlace(path: str) -> None:
    """Make the socket's directory if it is missing (0755) and check it; remove a
    socket nothing answers on.  Raises :class:`SocketPlaceError`."""
    directory = os.path.dirname(path)
    try:
        try:
            os.mkdir(directory)
            os.chmod(directory, 0o755)  # not mkdir's mode, which the umask may narrow
        except FileExistsError:
            pass
        st = os.lstat(directory)
    except OSError as e:
        raise SocketPlaceError(f"cannot make the directory {directory}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPlaceError(f"{directory} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise SocketPlaceError(f"{directory} belongs to uid {st.st_uid}, which is neither root nor this process's "
                               f"user; give the socket a directory of its own")
    if st.st_mode & 0o022:
        raise SocketPlaceError(f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                               f"give the socket a directory of its own")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPlaceError(f"{path} exists and is not a socket; not removing it")
    if _answers(path):
        raise SocketPlaceError(f"another process listens on {path}")
    os.unlink(path)


def closedDirectory(path: str) -> str | None:
    """The first directory above ``path`` that other users may not pass through
    (no search permission for others), or None: through it only its owner and
    group reach the socket, which is fine for the jsmail user's own programs but
    not for cron and other users (a data directory is often 0700 or 0750)."""
    directory = os.path.dirname(path)
    parents = []
    while True:
        parents.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for directory in reversed(parents):
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        except OSError:
            return directory
    return None


def _answers(path: str) -> bool:
    try:
        connect(path, 1.0).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # left by a gateway that is gone
    except OSError:
        return True  # e.g. its listen queue is full: someone is there
    return True


class _Port(unix.Port):
    """A UNIX port that reports its real path (it may be bound through
    ``/proc/self/fd``) and removes its socket when it stops only if the socket is still
    its own and it still may."""

    def __init__(self, bindName: str, factory: Any, backlog: int, reactor: Any, path: str) -> None:
        super().__init__(bindName, factory, backlog, 0o666, reactor)  # type: ignore[arg-type]
        self.path = path
        self._made: os.stat_result | None = None

    def startListening(self) -> None:
        super().startListening()
        self._made = os.lstat(self.path)

    def getHost(self) -> address.UNIXAddress:
        return address.UNIXAddress(self.path)

    def connectionLost(self, reason: Failure) -> None:
        try:
            if self._made is not None and os.path.samestat(os.lstat(self.path), self._made):
                os.unlink(self.path)
        except OSError:
            pass  # gone already, or no longer ours to remove (root was dropped): the next start removes it
        tcp.Port.connectionLost(self, reason)  # not unix.Port's, which unlinks the bound name unconditionally


@implementer(IStreamServerEndpoint)
class SubmissionEndpoint:
    """Listens on the socket at ``path`` (absolute), made as the module docstring says."""

    def __init__(self, reactor: Any, path: str, backlog: int = 128) -> None:
        self.reactor = reactor
        self.path = path
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        try:
            preparePlace(self.path)
            with reachable(self.path) as name:
                port = _Port(name, factory, self.backlog, self.reactor, self.path)
                port.startListening()
        except SocketPlaceError as e:
            return defer.fail(e)
        except Exception as e:
            return defer.fail(SocketPlaceError(str(getattr(e, "socketError", None) or e)))
        closed = closedDirectory(self.path)
        if closed is not None:
            _log.warn("Local submission: other users cannot reach {path}, since {closed} is closed to them; only "
                      "its owner and group can use jsmail-sendmail.  Set [submit] socket to a path every user can "
                      "reach, such as /run/jsmail/submit.sock", path=self.path, closed=closed)
        return defer.succeed(port)

"""Allow and deny lists for client addresses, HELO names, senders and recipients.

Each list is a text file (one entry per line, ``#`` comments) or a CDB file (a name
ending in ``.cdb``: its keys are the entries, as qmail's ``morercpthosts.cdb`` and
tcprules databases are built).  A file is read again, in a thread, when it changes
(checked at most once a second) and on SIGHUP.  An allow list wins over the deny list
of the same kind.  Entries:

- client addresses: an address or a network (``192.0.2.0/24``, ``2001:db8::/32``); in
  a CDB, the address or a tcprules-style prefix (``192.0.2.``);
- HELO names: a name, or ``.example.org`` for every name under it;
- senders and recipients (qmail's badmailfrom syntax and more): ``user@domain``,
  ``@domain`` for any address at the domain, ``.example.org`` for any address at a
  domain under it, ``user@`` for that local part at any domain.  The null sender
  ``<>`` is matched by the entry ``<>``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
import time
from typing import Any, Callable, Iterator, Mapping

import cdblib
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail import reply
from jsmail._threads import RunInThread
from jsmail.address import Address
from jsmail.policy.base import Policy
from jsmail.policy.plugin import Options, PolicyContext
from jsmail.policy.verdict import Verdict

_RECHECK = 1.0  # seconds between looks at a list file's modification time

_log = Logger()


class AccessList:
    """One list file, matched by ``keys``: the candidate entries for a value, most
    specific first (see :func:`addressKeys`, :func:`clientKeys`, :func:`heloKeys`).

    Given ``runInThread``, a changed file is read in a thread (a list may be large,
    and the reactor thread must not wait on a disk), the list as it was answering
    meanwhile; without it, it is read at once.  The first read is always at once, so
    a bad file is a configuration error at start."""

    def __init__(self, path: str, keys: Callable[[str], Iterator[str]], clock: Callable[[], float] = time.monotonic,
                 runInThread: RunInThread | None = None) -> None:
        self.path, self.keys, self._clock = path, keys, clock
        self._runInThread = runInThread
        self._reading = False
        self._failing = ""  # why the last read in a thread failed, said once
        self._stamp: tuple[int, int, int] | None = None
        self._entries: set[str] = set()
        self._networks: list[Any] = []
        self._cdb: cdblib.Reader | None = None
        self._checked = self._clock()
        self._apply(_read(path, None))

    def reload(self) -> None:
        """Read the file again if it changed (a missing file is an empty list, so one
        can be added later)."""
        self._checked = self._clock()
        if self._runInThread is None:
            self._apply(_read(self.path, self._stamp))
        elif not self._reading:
            self._reading = True
            d = self._runInThread(_read, self.path, self._stamp)
            d.addCallbacks(self._apply, self._readFailed).addBoth(self._readDone)

    def _apply(self, contents: _Contents | None) -> None:
        if contents is not None:
            self._stamp, self._entries, self._networks, self._cdb = contents
        if self._failing:
            self._failing = ""
            _log.info("The access list {path} can be read again", path=self.path)

    def _readFailed(self, failure: Failure) -> None:
        """Say why, once for as long as the same error lasts (a read is tried every
        second while mail comes in)."""
        error = failure.getErrorMessage()
        if error != self._failing:
            self._failing = error
            _log.error("Cannot read the access list {path}, so it stays as it was: {error}", path=self.path,
                       error=error)

    def _readDone(self, _: object) -> None:
        self._reading = False

    def __contains__(self, value: str) -> bool:
        if self._clock() - self._checked >= _RECHECK:
            self.reload()
        for key in self.keys(value.lower()):
            if self._cdb is not None:
                if self._cdb.get(key.encode("utf-8")) is not None:
                    return True
            elif key in self._entries:
                return True
        return self._cdb is None and bool(self._networks) and _inNetworks(value, self._networks)


#: A list file's (identity, entries, networks, CDB reader), as :func:`_read` finds it.
_Contents = tuple[tuple[int, int, int] | None, set[str], list[Any], cdblib.Reader | None]


def _read(path: str, stamp: tuple[int, int, int] | None) -> _Contents | None:
    """The list in the file at ``path``, or None when it is still the one read as
    ``stamp`` (its inode, size and modification time).  Only a regular file is read,
    opened without waiting (a FIFO or a device put there cannot hold the thread), and
    its stamp is that of the file opened.  Blocking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, set(), [], None
    if (st.st_ino, st.st_size, st.st_mtime_ns) == stamp:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:  # removed since the look
        return None, set(), [], None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        now = (st.st_ino, st.st_size, st.st_mtime_ns)
        f = open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read()
    if path.endswith(".cdb"):
        return now, set(), [], cdblib.Reader(data)
    lines = (line.split(b"#", 1)[0].strip().decode("utf-8", "replace").lower() for line in data.splitlines())
    entries = {line for line in lines if line}
    return now, entries, [n for n in map(_network, entries) if n is not None], None  # any IPv6 spelling


def _network(entry: str) -> Any:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _clientIP(value: str) -> Any:
    """The address, an IPv4-mapped IPv6 one (a dual-stack listener's view of an IPv4
    client) as IPv4; None for a value that is no address."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None else ip


def _inNetworks(value: str, networks: list[Any]) -> bool:
    ip = _clientIP(value)
    return ip is not None and any(ip in n for n in networks)


def addressKeys(address: str) -> Iterator[str]:
    if not address:
        yield "<>"
        return
    yield address
    local, _, domain = address.rpartition("@")
    yield "@" + domain
    labels = domain.split(".")
    for i in range(1, len(labels)):  # domains above it, as for HELO names
        yield "." + ".".join(labels[i:])
    yield local + "@"


def heloKeys(name: str) -> Iterator[str]:
    yield name
    labels = name.split(".")
    for i in range(1, len(labels)):
        yield "." + ".".join(labels[i:])


def clientKeys(clientAddress: str) -> Iterator[str]:
    """The address, then tcprules-style prefixes ``a.b.c.``, ``a.b.``, ``a.``."""
    ip = _clientIP(clientAddress)
    clientAddress = str(ip) if ip is not None else clientAddress
    yield clientAddress
    if "." in clientAddress and ":" not in clientAddress:
        parts = clientAddress.split(".")
        for i in range(len(parts) - 1, 0, -1):
            yield ".".join(parts[:i]) + "."


class AccessLists(Policy):
    """Refuses clients, HELO names, senders and recipients on deny lists unless they
    are on the matching allow list; each list is optional."""

    def __init__(self, lists: Mapping[str, AccessList]) -> None:
        self.lists = dict(lists)

    def _denied(self, kind: str, value: str) -> bool:
        deny, allow = self.lists.get("deny_" + kind), self.lists.get("allow_" + kind)
        return deny is not None and value in deny and not (allow is not None and value in allow)

    def reload(self) -> None:
        for access in self.lists.values():
            access.reload()

    def checkConnect(self, session: Any) -> Verdict | None:
        if self._denied("clients", session.clientAddress):
            return Verdict.reject(reply.CLIENT_DENIED.format(session.clientAddress), "client on the deny list")
        return None

    def checkHelo(self, session: Any, name: str) -> Verdict | None:
        if self._denied("helo", name.lower()):
            return Verdict.reject(reply.HELO_DENIED.format(name), "HELO name on the deny list")
        return None

    def checkSender(self, session: Any, address: Address, params: dict) -> Verdict | None:
        if self._denied("senders", str(address)):
            return Verdict.reject(reply.SENDER_DENIED.format(address), "sender on the deny list")
        return None

    def checkRecipient(self, session: Any, address: Address, params: dict) -> Verdict | None:
        if self._denied("recipients", str(address)):
            return Verdict.reject(reply.RECIPIENT_DENIED.format(address), "recipient on the deny list")
        return None


_KEYS = {"clients": clientKeys, "helo": heloKeys, "senders": addressKeys, "recipients": addressKeys}


def build(options: Mapping[str, Any], context: PolicyContext) -> AccessLists:
    o = Options(options)
    lists = {}
    for kind, keys in _KEYS.items():
        for which in ("allow", "deny"):
            path = o.get(f"{which}_{kind}", "")
            if path:
                path = os.path.join(context.dataDir, path)
                try:
                    lists[f"{which}_{kind}"] = AccessList(path, keys, runInThread=context.runInThread)
                except OSError as e:  # unreadable, or not a CDB: say so at start, not in a traceback
                    raise ValueError(f"{which}_{kind}: cannot read {path}: {e.strerror or e}") from None
    o.done()
    return AccessLists(lists)

"""Who jsmail runs as: the user named by ``[server] user`` / ``group`` (or twistd's
``--uid`` / ``--gid``), and the one way root is given up.

qmail runs each part as a user of its own and only qmail-lspawn as root; jsmail keeps
root only as long as it takes to bind the listening ports, make the data tree for the
user that will write it and start the local spawner (:mod:`jsmail.local.spawner`),
then drops it for good (``setgroups``, ``setgid``, ``setuid``: real, effective and
saved ids).  ``docs/security.rst`` has the whole model.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Any, Callable


class PrivilegeError(Exception):
    """The user or group cannot be used, or the switch failed; the message says why in
    one line."""


@dataclass(frozen=True)
class Identity:
    """A user to run as: its name (for messages), uid, primary gid and every group."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def isCurrent(self) -> bool:
        """Whether this process already runs as this user and group, nothing more."""
        return (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (self.uid, self.uid, self.gid, self.gid)


def _lookupUser(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"no such user {user!r}") from None


def _lookupGroup(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError):
        raise PrivilegeError(f"no such group {group!r}") from None


def accountSetting(kind: str) -> Callable[[Any], str]:
    """The check of ``[server] user`` (``kind`` "user") or ``group``: a name or a
    number that exists here, or empty for none; raises ValueError."""
    lookup: Callable[[str], object] = _lookupUser if kind == "user" else _lookupGroup

    def check(value: Any) -> str:
        name = str(value) if type(value) is int else value
        if not isinstance(name, str):
            raise ValueError(f"expected a {kind} name or number, got {value!r}")
        try:
            if name.strip():
                lookup(name.strip())
        except PrivilegeError as e:
            raise ValueError(str(e)) from None
        return name.strip()

    return check


def identityOf(user: str, group: str = "") -> Identity:
    """The identity for ``user`` (a name or a number) and ``group`` (a name, a number,
    or empty for the user's own primary group), with the user's supplementary groups
    as login would give them.  Root is refused: it is what jsmail gives up."""
    entry = _lookupUser(user)
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {user!r} is root; name the unprivileged user jsmail should run as")
    gid = _lookupGroup(group) if group else entry.pw_gid
    try:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    except OSError:
        groups = (gid,)
    return Identity(entry.pw_name, entry.pw_uid, gid, groups)


def becomeUser(identity: Identity) -> None:
    """Give up root for ``identity``, for good, and check that it cannot be taken
    back.  Raises :class:`PrivilegeError`."""
    try:
        os.setgroups(list(identity.groups))
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as e:
        raise PrivilegeError(f"cannot become user {identity.name}: {e.strerror}") from None
    if not identity.isCurrent() or sorted(os.getgroups()) != sorted(identity.groups):
        raise PrivilegeError(f"switching to user {identity.name} did not take")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"after switching to user {identity.name}, root could be taken back")


def isRoot() -> bool:
    return os.geteuid() == 0

"""Where a command finds jsmail's data directory (the queue, the mail, the TLS and
password files) when it is not told in a configuration file: ``--data``, else
``$JSMAIL_DATA``, else ``./jsmail-data``; and the one rule for what the tree under it
looks like: who owns it and who may look in.

The ``jsmail`` command, ``jsmail-queue``, ``jsmail-sendmail`` and ``jsmail-smtpd``
all ask here, so that they find the same queue as each other; it is a module of its
own because it is needed on both sides of the package's layers (the administration
command and the qmail programs) and depends on nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable

from jsmail._disk import makeDirectories, spreadBelow

DEFAULT = "jsmail-data"
#: The gateway's configuration where no ``--config``/``-C`` or ``$JSMAIL_CONFIG`` names
#: one: jsmail-sendmail and the ``jsmail`` command both look here.
DEFAULT_CONFIG = "/etc/jsmail/jsmail.toml"

#: Directories under ``queue/tmp/`` for the queue's spare files, made in turn in each:
#: the directories are spread over the file system's block groups (:func:`spreadBelow`).
SPARE_DIRECTORIES = tuple(str(i) for i in range(8))
#: What the gateway writes, relative to the data directory; each made 0700 (and, in
#: ``queue/tmp``, the spare directories: :func:`makeSpareDirectories`).
TREE = ("queue", "queue/tmp", "queue/active", "queue/corrupt", "mail", "tls")
#: Handed over whole to the gateway's user (the queue is bounded; ``tls`` and
#: ``passwd`` are a few files); ``mail`` only when it was not the user's already.
WHOLE = ("queue", "tls", "passwd")


class DataTreeError(Exception):
    """The data tree cannot be used by the user jsmail runs as; the message says how
    to fix it, in one line."""


def makeSpareDirectories(tmpDir: str) -> list[str]:
    """The spare directories in the queue's ``tmpDir``; those missing are made 0700,
    after ``tmpDir`` is marked to spread them over block groups (:func:`spreadBelow`:
    a directory keeps the group it was made in)."""
    paths = [os.path.join(tmpDir, name) for name in SPARE_DIRECTORIES]
    if not all(os.path.isdir(path) for path in paths):
        spreadBelow(tmpDir)
        for path in paths:
            makeDirectories(path)
    return paths


def removeFromTmp(tmpDir: str, chosen: Callable[[str], bool]) -> list[str]:
    """Remove what ``chosen`` picks by name among the files in the queue's ``tmpDir``
    and in its spare directories; returns their names.  Root runs this in a tree the
    gateway's user writes, so each directory is opened without following a link and
    each file removed relative to it: a directory swapped for a link meanwhile cannot
    point the removal elsewhere (``/root/.ssh``, say)."""
    removed: list[str] = []
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        top = os.open(tmpDir, flags)
    except FileNotFoundError:
        return removed
    try:
        directories = [top]
        for name in SPARE_DIRECTORIES:
            try:
                directories.append(os.open(name, flags, dir_fd=top))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                if e.errno != errno.ELOOP:  # a link in its place: not ours to look into
                    raise
        for fd in directories:
            for entry in os.scandir(fd):
                if not entry.is_dir(follow_symlinks=False) and chosen(entry.name):
                    try:
                        os.unlink(entry.name, dir_fd=fd)
                    except FileNotFoundError:
                        continue
                    removed.append(entry.name)
    finally:
        for fd in directories:
            os.close(fd)
    return removed


def dataDirectory(argument: str | None, default: str = DEFAULT) -> str:
    """``argument`` (a ``--data`` value) if given, else ``$JSMAIL_DATA``, else
    ``default``."""
    return argument or os.environ.get("JSMAIL_DATA") or default


def prepareDataTree(dataDir: str, owner: tuple[int, int] | None = None) -> int:
    """Make the data tree, 0700 throughout, and, when root prepares it for ``owner``
    (uid, gid), hand over to that user whatever in it is not theirs yet: a tree made
    by an earlier run as root would otherwise refuse every message after the switch.
    Returns how many entries changed owner.

    Root never follows a symbolic link inside the tree (the tree is the unprivileged
    user's to write: a link there must not make root chown ``/etc/shadow``).  Without
    root, a part of the tree this process cannot write is a :class:`DataTreeError`."""
    makeDirectories(os.path.dirname(os.path.abspath(dataDir)), 0o755)
    for name in ("", *TREE):
        makeDirectories(os.path.join(dataDir, name))
        if name == "queue/tmp":
            makeSpareDirectories(os.path.join(dataDir, name))
    handedOver = 0
    if owner is not None and os.geteuid() == 0 and owner[0] != 0:
        handedOver = _handOverTree(dataDir, *owner)
    _tighten(dataDir)
    if os.geteuid() != 0:
        for name in ("", *TREE):
            path = os.path.join(dataDir, name)
            if not os.access(path, os.W_OK | os.X_OK):
                raise DataTreeError(
                    f"{path} is not writable by uid {os.geteuid()} (it belongs to uid {os.stat(path).st_uid}): "
                    f"start jsmail as root with [server] user set, which hands the tree over, or chown -R it")
    return handedOver


def _tighten(dataDir: str) -> None:
    """Other users may not look into the data tree, nor list ``mail/`` (mailbox
    names); a group the operator gave the data directory and ``mail/`` (an IMAP
    server's) keeps its access, but not to the queue or the TLS keys."""
    for name, strip in (("", 0o007), ("queue", 0o077), ("tls", 0o077), ("mail", 0o007),
                        *((name, 0o077) for name in TREE if name.startswith("queue/"))):
        path = os.path.join(dataDir, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & strip and os.geteuid() in (0, st.st_uid):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~strip)


def _handOverTree(dataDir: str, uid: int, gid: int) -> int:
    top = os.open(dataDir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        changed = _chownIfNot(top, None, uid, gid)
        for name in (*WHOLE, "mail"):
            try:
                st = os.stat(name, dir_fd=top, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if name == "mail" and (st.st_uid, st.st_gid) == (uid, gid):
                continue  # made by this user: what is below it is too
            changed += _chownIfNot(top, name, uid, gid)
            if stat.S_ISDIR(st.st_mode):
                changed += _handOverBelow(top, name, uid, gid)
        return changed
    finally:
        os.close(top)


def _chownIfNot(dirFd: int, name: str | None, uid: int, gid: int) -> int:
    if name is None:
        st = os.fstat(dirFd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(dirFd, uid, gid)
            return 1
        return 0
    st = os.stat(name, dir_fd=dirFd, follow_symlinks=False)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(name, uid, gid, dir_fd=dirFd, follow_symlinks=False)
        return 1
    return 0


def _handOverBelow(parentFd: int, name: str, uid: int, gid: int) -> int:
    """Everything below the directory ``name``, opened without following links."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parentFd)
    except OSError:
        return 0  # replaced by something else meanwhile: not root's business
    changed = 0
    try:
        for entry in os.scandir(fd):
            changed += _chownIfNot(fd, entry.name, uid, gid)
            if entry.is_dir(follow_symlinks=False):
                changed += _handOverBelow(fd, entry.name, uid, gid)
    finally:
        os.close(fd)
    return changed

"""Crash-safe file writing shared by the queue and local delivery: a group commit.

The pattern everywhere is the Maildir one: write under a temporary name, rename it into
place, then make it durable before telling anyone.  "Durable" is one ``syncfs(2)`` of
the file system (``sync(2)`` where there is no syncfs), shared by every change made
before it started: while one sync runs, new requests wait for the next one, so a burst
of messages costs one journal commit instead of a file fsync plus a directory fsync
each.  On ext4, each fsync is a journal commit, and commits, not bytes, are what limit a
mail queue.  Syncs run through ``runInThread``, so the reactor never waits on a disk.

Why syncfs and not an ``fdatasync`` of each file of the batch plus one of its
directory: measured on ext4 (bench/README.rst, "Group commit"), syncfs commits a batch
of 10 in 0.45 ms (p50) against 1.7 ms, and of 50 in 1.5 ms against 9 ms, as the
per-file calls cost a device flush each.  Its price is the tail when another program
fills the same file system with dirty pages (p99 92 ms against 35 ms at batch 10), which
a mail queue on a file system of its own does not pay.

Files and directories are made for their owner only (0600 and 0700, every missing
directory of a path, not just the last), and a file root writes into the data tree
(an operator's ``jsmail queue requeue``, ``jsmail passwd``) is given to the owner of
the directory it lands in, so the unprivileged gateway can still read it.  See
``docs/security.rst``.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import os
import time
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from jsmail import metrics
from jsmail._bounded import LRU
from jsmail._threads import RunInThread

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def syncFileSystem(path: str) -> None:
    """Flush all data and metadata of the file system holding ``path`` (blocking)."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def unlinkQuietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def makeDirectories(path: str, mode: int = 0o700) -> None:
    """Make ``path`` and each missing directory above it with ``mode`` (``os.makedirs``
    gives the ones above the last the default mode, which left ``mail/<domain>/``
    listable by every local user)."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
    if not missing and path and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


#: ``chattr +T``: ext2, ext3 and ext4 take a directory with this flag as the top of a
#: hierarchy, and put each directory made in it in a block group of its own.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spreadBelow(path: str) -> bool:
    """Mark the directory ``path`` so that the directories made in it afterwards are
    spread over the file system's block groups, and the files made in each of them
    with it (``chattr +T``).  An ext4 without a journal passes over every inode freed
    in the last minute or so when it makes a file, so in a group where many files
    were just removed each new file costs half a millisecond or more; files made in
    several groups in turn pass over fewer.  True if the flag is set; on another file
    system, or without the right, nothing changes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
        return True
    except OSError:  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not the owner (EPERM)
        return False
    finally:
        os.close(fd)


def giveToDirectoryOwner(fd: int, directory: str) -> None:
    """When root writes a file into a directory someone else owns (the data tree of
    an unprivileged gateway), hand the file to that owner, so the gateway can read and
    remove it.  Does nothing for anyone but root."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def openNew(path: str, mode: int = 0o600, exclusive: bool = True) -> int:
    """Open ``path`` for writing, made with ``mode`` (``exclusive``: it must not exist;
    else it is emptied), never through a symbolic link; the descriptor is given to the
    directory's owner (:func:`giveToDirectoryOwner`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        giveToDirectoryOwner(fd, os.path.dirname(path) or ".")
    except OSError:
        os.close(fd)
        raise
    return fd


_suffixes = itertools.count()


def createNew(path: str, mode: int = 0o600, buffering: int = -1) -> BinaryIO:
    """A new file at ``path``, open for writing; FileExistsError if anything (a
    symlink too) is there already; given to the directory's owner
    (:func:`giveToDirectoryOwner`).  Files written and then renamed into place are made
    so: a name planted in a directory a root-run command writes into cannot redirect
    the write (L-8)."""
    return os.fdopen(openNew(path, mode, exclusive=True), "wb", buffering)


def writeAndRename(tmpPath: str, finalPath: str, data: bytes) -> None:
    """Write ``data`` to a new file named after ``tmpPath`` and rename it to
    ``finalPath`` (blocking; not yet durable: follow with :meth:`GroupSync.sync`).

    The temporary name gets a suffix of this process and call, so two writers of the
    same file (an operator's requeue beside a delivery) never share one, and a file
    a crash left under the plain name is no obstacle (the queue's start-up sweep
    removes it)."""
    path = f"{tmpPath}.{os.getpid()}.{next(_suffixes)}"
    try:
        with createNew(path) as f:
            f.write(data)
        os.replace(path, finalPath)
    except BaseException:
        unlinkQuietly(path)
        raise


class GroupSync:
    """Group commit, one queue of waiters per file system."""

    def __init__(self, runInThread: RunInThread, remembered: int = 10_000) -> None:
        self._runInThread = runInThread
        self._waiting: dict[int, list[Deferred[None]]] = {}
        self._running: set[int] = set()
        self._devices: LRU[str, int] = LRU(remembered)  # directory -> its file system

    def sync(self, path: str) -> Deferred[None]:
        """Fires once everything written and renamed under ``path`` before this call is
        on disk."""
        device = self._devices.get(path)
        if device is None:  # a stat may wait on the disk (or NFS): not on the reactor thread
            return self._runInThread(os.stat, path).addCallback(self._learned, path)
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(device, []).append(d)
        if device not in self._running:
            self._start(device, path)
        return d

    def _learned(self, status: os.stat_result, path: str) -> Deferred[None]:
        self._devices[path] = status.st_dev
        return self.sync(path)

    def _start(self, device: int, path: str) -> None:
        waiters = self._waiting.pop(device)
        self._running.add(device)
        started = time.monotonic()

        def done(result: object) -> None:
            metrics.committed(time.monotonic() - started)
            self._running.discard(device)
            if device in self._waiting:
                self._start(device, path)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        self._runInThread(syncFileSystem, path).addBoth(done)

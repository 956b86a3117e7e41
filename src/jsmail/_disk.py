"""Crash-safe file writing shared by the queue and local delivery: a group commit.

The pattern everywhere is the Maildir one: write under a temporary name, rename it into
place, then make it durable before telling anyone.  "Durable" is one ``syncfs(2)`` of
the file system (``sync(2)`` where there is no syncfs), shared by every change made
before it started: while one sync runs, new requests wait for the next one, so a burst
of messages costs one journal commit instead of a file fsync plus a directory fsync
each.  On ext4, each fsync is a journal commit, and commits, not bytes, are what limit a
mail queue.  Syncs run through ``runInThread``, so the reactor never waits on a disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

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


def writeAndRename(tmpPath: str, finalPath: str, data: bytes) -> None:
    """Write ``data`` to ``tmpPath`` and rename it to ``finalPath`` (blocking; not yet
    durable: follow with :meth:`GroupSync.sync`)."""
    with open(tmpPath, "wb") as f:
        f.write(data)
    os.replace(tmpPath, finalPath)


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
        if device is None:
            device = self._devices[path] = os.stat(path).st_dev
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(device, []).append(d)
        if device not in self._running:
            self._start(device, path)
        return d

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

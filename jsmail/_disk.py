"""Crash-safe file writing shared by the queue and local delivery.

The pattern everywhere is the Maildir one: write under a temporary name, fsync the file,
rename it into place, fsync the directory.  Directory fsyncs are grouped (a "group
commit"): every caller that renamed something before a directory sync started is
covered by that one sync, so many sessions finishing at once cost one fsync, not one
each.  All blocking calls run through ``runInThread`` so the reactor never waits on a disk.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

RunInThread = Callable[..., "Deferred[Any]"]


def fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writeDurably(tmpPath: str, finalPath: str, data: bytes) -> None:
    """Write ``data`` to ``tmpPath``, fsync it and rename it to ``finalPath`` (blocking)."""
    with open(tmpPath, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmpPath, finalPath)


class DirectorySyncer:
    """Group commit of directory fsyncs, one queue of waiters per directory."""

    def __init__(self, runInThread: RunInThread) -> None:
        self._runInThread = runInThread
        self._waiting: dict[str, list[Deferred[None]]] = {}
        self._running: set[str] = set()

    def sync(self, path: str) -> Deferred[None]:
        """Fires once ``path`` has been fsync'd after this call was made."""
        d: Deferred[None] = Deferred()
        self._waiting.setdefault(path, []).append(d)
        if path not in self._running:
            self._start(path)
        return d

    def _start(self, path: str) -> None:
        waiters = self._waiting.pop(path)
        self._running.add(path)

        def done(result: object) -> None:
            self._running.discard(path)
            if path in self._waiting:
                self._start(path)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        self._runInThread(fsyncDirectory, path).addBoth(done)

"""Maildir delivery (https://cr.yp.to/proto/maildir.html): write ``tmp/<unique>``,
rename it into ``new/``; the caller syncs before saying "delivered".  Messages are
stored with LF line ends, as Maildir readers (mutt, Dovecot, Courier) and qmail-local
and Postfix's local(8) write them."""

from __future__ import annotations

import itertools
import os
import time
from typing import BinaryIO, Callable

from jsmail._disk import makeDirectories

_COPY_CHUNK = 65536
_deliveries = itertools.count()


def uniqueName(hostname: str) -> str:
    """A Maildir unique name: ``<seconds>.M<usec>P<pid>Q<n>.<host>`` (maildir spec)."""
    now = time.time()
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_deliveries)}.{host}"


def copyAsLF(source: BinaryIO, target: BinaryIO) -> None:
    """Copy CR LF text as LF text, in chunks (a CR LF may straddle two chunks)."""
    held = b""
    while chunk := source.read(_COPY_CHUNK):
        data = held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        target.write(data[: len(data) - len(held)].replace(b"\r\n", b"\n"))
    target.write(held)


def makeMaildir(maildir: str) -> None:
    """Make ``maildir`` with its ``tmp``, ``new`` and ``cur``, and any directory above
    it that is missing, all 0700: other local users may not even list mailbox names."""
    for sub in ("tmp", "new", "cur"):
        makeDirectories(os.path.join(maildir, sub))


def writeMaildirMessage(maildir: str, headers: bytes, source: BinaryIO, hostname: str,
                        copy: Callable[[BinaryIO, BinaryIO], None] = copyAsLF) -> str:
    """Deliver into an existing ``maildir`` (the message file 0600): ``headers``, then
    ``source`` as ``copy`` writes it (CR LF made LF by default); return the path in
    ``new/``.  Blocking; durable only after a sync."""
    name = uniqueName(hostname)
    tmpPath = os.path.join(maildir, "tmp", name)
    with os.fdopen(os.open(tmpPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as f:
        try:
            f.write(headers)
            copy(source, f)
        except BaseException:
            os.unlink(tmpPath)
            raise
    newPath = os.path.join(maildir, "new", name)
    os.rename(tmpPath, newPath)
    return newPath

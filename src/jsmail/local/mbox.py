"""Appending to an mbox file, as qmail-local does (qmail-interfaces reference, 9.7).

The file is opened for appending (made, mode 0600, if missing) and locked with an
exclusive ``flock``, waited for at most ``lockTimeout`` seconds (qmail: 30): two
writers, in this process or any other that locks the same way (mutt, procmail,
another jsmail), never interleave.  Where the file system cannot lock, delivery goes
on unlocked, as qmail-local's does.  The message is written after a ``From_`` line
(:func:`fromLine`), with ``>`` put before every line matching ``^>*From`` and a space (mboxrd
quoting, so readers can undo it), a final newline if it lacks one, then one empty
line; the file is fsync'd.  If writing fails the file is cut back to its old length,
so a reader never sees half a message.  All of it blocks: run it in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from typing import BinaryIO

from jsmail import reply
from jsmail.error import DeliveryError

_FROM = re.compile(rb"^>*From ")


def fromLine(sender: str, when: float) -> bytes:
    """``From <sender> <ctime>`` (UFLINE): white space in the sender becomes ``-``, an
    empty sender is ``MAILER-DAEMON``; the date is UTC with the day zero-padded."""
    who = re.sub(r"[ \t\n]", "-", sender) or "MAILER-DAEMON"
    return f"From {who} {time.strftime('%a %b %d %H:%M:%S %Y', time.gmtime(when))}\n".encode("utf-8", "replace")


def _lock(fd: int, path: str, timeout: float) -> bool:
    """Take an exclusive flock within ``timeout`` seconds; False if the file system
    cannot lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DeliveryError(reply.MBOX_UNAVAILABLE, False,
                                    f"{path} has been locked for {timeout:g} seconds straight") from None
            time.sleep(0.05)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise


def appendMbox(path: str, ufline: bytes, headers: bytes, source: BinaryIO, lockTimeout: float = 30.0) -> None:
    """Append ``ufline``, ``headers`` and the LF message read from ``source``; fails
    with a temporary :class:`~jsmail.error.DeliveryError` (9.7)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY, 0o600)
    except OSError as e:
        raise DeliveryError(reply.MBOX_UNAVAILABLE, False, f"unable to open {path}: {e.strerror}") from None
    try:
        locked = _lock(fd, path, lockTimeout)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            with open(fd, "ab", closefd=False, buffering=65536) as out:
                out.write(ufline + headers)
                last = b"\n"
                for line in source:
                    out.write(b">" + line if _FROM.match(line) else line)
                    last = line
                out.write(b"\n" if last.endswith(b"\n") else b"\n\n")
            os.fsync(fd)
        except OSError as e:
            if locked:
                os.ftruncate(fd, start)
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"unable to write {path}: {e.strerror}") from None
    finally:
        os.close(fd)  # closing drops the lock

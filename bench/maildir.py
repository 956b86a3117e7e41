"""Maildir delivery shared by the Python peer servers.

Mail for ``local@domain`` goes to ``<base>/<domain>/<local>/``, the layout
jsmail and the benchmark's Postfix use.  A delivery writes into tmp/,
flushes, fsyncs and renames into new/.  It blocks, so callers run it in a
thread.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

_sequence = itertools.count()
_host = socket.gethostname()


def maildir_for(base: Path, address: str) -> Path:
    """The Maildir that mail for ``address`` (``local@domain``) goes to."""
    local, _, domain = address.rpartition("@")
    return base / domain.lower() / local


def deliver(maildir: Path, data: bytes) -> None:
    """Store ``data`` as one new message in ``maildir``, durably."""
    name = f"{time.time_ns()}.P{os.getpid()}Q{next(_sequence)}.{_host}"
    tmp = maildir / "tmp" / name
    try:
        f = open(tmp, "xb")
    except FileNotFoundError:
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        f = open(tmp, "xb")
    with f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, maildir / "new" / name)

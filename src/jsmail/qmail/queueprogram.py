"""``jsmail-queue``: jsmail's queue behind the qmail-queue program interface.

A program that would run qmail-queue (qmail-smtpd, qmail-inject, a content filter)
can run ``jsmail-queue`` instead (qmail-interfaces reference, section 3).  It reads the
message from fd 0, then the envelope from fd 1: ``F<sender>\\0`` then ``T<recipient>\\0``
for each recipient, then a final ``\\0``.  It queues the message through the funnel,
which adds the Received line owed to mail that did not come by SMTP, makes it durable,
tells a running jsmail to take it up (through ``queue/trigger``, see
:mod:`jsmail.queue.trigger`), and exits 0.  Otherwise it exits with qmail-queue's codes and queues nothing: 11 address
too long, 54 message or envelope unreadable (including an envelope without its final
NUL), 91 envelope format error, 31 envelope over 4 MiB, 53 write error, 81 bug
(:mod:`jsmail.qmail.envelope` reads the envelope).

The message arrives with LF line ends (qmail's convention) and is queued with CR LF,
jsmail's; CR LF already there is kept.  The data directory comes from ``--data``,
``$JSMAIL_DATA``, or ``./jsmail-data``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import BinaryIO, Callable

from twisted.internet import defer

from jsmail.datadir import dataDirectory
from jsmail.envelope import Envelope, Recipient
from jsmail.qmail.envelope import MAX_ENVELOPE, EnvelopeError, decode
from jsmail.queue.admin import wakeDelivery
from jsmail.queue.funnel import Funnel, Owed
from jsmail.queue.store import MaildirQueue

SPOOL_IN_MEMORY = 1 << 20  # larger messages wait in a temporary file, not in memory

QUEUED, WRITE_ERROR, READ_ERROR, BUG = 0, 53, 54, 81


class QueueRefusal(Exception):
    """Not queued, with the qmail-queue exit code that says why."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def copyAsCRLF(source: BinaryIO, write: Callable[[bytes], None]) -> None:
    """Copy LF text as CR LF text in chunks, keeping CR LF that is already there."""
    held = b""
    while chunk := source.read(65536):
        data = held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        data = data[: len(data) - len(held)]
        write(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    write(held)


def enqueue(dataDir: str, message: BinaryIO, envelope: bytes, owed: Owed = Owed(received=True),
            trusted: bool = False) -> str:
    """Queue the message durably through the funnel, with what it is ``owed``, and
    wake a running jsmail to deliver it; return its queue id (or raise QueueRefusal).
    ``trusted``: the sender is a user of this host (jsmail-sendmail); jsmail-queue
    cannot tell (qmail-smtpd runs it for anyone), so its mail is not."""
    try:
        sender, recipients = decode(envelope)
    except EnvelopeError as e:
        raise QueueRefusal(e.code, str(e)) from None
    queueDir = os.path.join(dataDir, "queue")
    queue = MaildirQueue(queueDir, defer.maybeDeferred, sweep=False, spares=0)
    funnel = Funnel(queue, lambda queueId, envelope: wakeDelivery(queueDir))  # else a jsmail takes it up when it starts
    incoming = funnel.newMessage(Envelope(sender, tuple(Recipient(r) for r in recipients), arrival=time.time(),
                                          clientAddress="127.0.0.1", helo="jsmail-queue", protocol="local",
                                          trusted=trusted), owed)
    try:
        copyAsCRLF(message, incoming.write)
    except OSError as e:
        incoming.abort()
        raise QueueRefusal(WRITE_ERROR, str(e)) from None
    result: list[object] = []
    incoming.commit().addBoth(result.append)  # synchronous: the queue runs its sync in this thread
    queue.close()
    if not isinstance(result[0], str):  # the commit (rename, then sync) failed
        raise QueueRefusal(WRITE_ERROR, str(getattr(result[0], "value", result[0])))
    return result[0]


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    dataDir = dataDirectory(arguments[1] if len(arguments) == 2 and arguments[0] == "--data" else None)
    try:
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
            try:
                with os.fdopen(0, "rb", closefd=False) as stdin:
                    while chunk := stdin.read(65536):
                        spool.write(chunk)
                with os.fdopen(1, "rb", closefd=False) as fd1:
                    envelope = fd1.read(MAX_ENVELOPE + 1)
            except OSError as e:
                raise QueueRefusal(READ_ERROR, str(e)) from None
            spool.seek(0)
            enqueue(dataDir, spool, envelope)  # type: ignore[arg-type]
    except QueueRefusal as e:
        return e.code
    except Exception:
        return BUG
    return QUEUED


if __name__ == "__main__":
    sys.exit(main())

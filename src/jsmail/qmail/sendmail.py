"""``jsmail-sendmail``: the sendmail command line, queueing into jsmail (qmail-inject's job).

Installable as ``sendmail`` for programs that send mail that way::

    jsmail-sendmail [-t] [-i | -oi] [-f sender] [-F "Full Name"] [recipient ...]
    jsmail-sendmail -bs      # SMTP on stdin/stdout, as from a local user
    jsmail-sendmail -bp      # list the queue (jsmail queue list)

The message (LF or CR LF lines) is read from stdin; with ``-t`` the recipients come
from its To, Cc and Bcc fields (Bcc is then removed).  Without ``-i`` a line holding a
single "." ends the message, as in sendmail.  The message goes into the queue under
``--data``/``$JSMAIL_DATA``/``./jsmail-data`` by the same path as ``jsmail-queue``, and
a running gateway is woken to deliver it.  On the way the funnel adds the header
fields a local submission lacks, as qmail-inject does: Date, Message-ID, and (not
with ``-bs``) From, the user with the ``-F`` name.
Exit codes are sendmail's (sysexits): 0, 64 usage, 65 bad message, 74 I/O error, 75
try again later, 70 internal error.
"""

from __future__ import annotations

import getopt
import io
import os
import pwd
import socket
import sys
import tempfile
from email.utils import formataddr, getaddresses
from typing import BinaryIO

from jsmail.datadir import dataDirectory
from jsmail.headers import dropFields, fieldName, fields, fieldValue, hasName, readHeader
from jsmail.qmail.envelope import EnvelopeError, encode
from jsmail.qmail.queueprogram import SPOOL_IN_MEMORY, QueueRefusal, enqueue
from jsmail.queue.admin import wakeDelivery
from jsmail.queue.funnel import Owed

EX_OK, EX_USAGE, EX_DATAERR, EX_SOFTWARE, EX_IOERR, EX_TEMPFAIL = 0, 64, 65, 70, 74, 75


def _user() -> str:
    for name in ("USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    return pwd.getpwuid(os.getuid()).pw_name


def readMessage(stdin: BinaryIO, dotEnds: bool) -> tempfile.SpooledTemporaryFile[bytes]:
    """The message from ``stdin`` into a spool (memory, then disk), LF line ends kept;
    with ``dotEnds`` a line of a single "." ends it."""
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
    for line in stdin:
        if dotEnds and line.rstrip(b"\r\n") == b".":
            break
        spool.write(line)
    spool.seek(0)
    return spool


def _recipientsFrom(header: bytes) -> list[str]:
    values = [fieldValue(f).decode("utf-8", "replace") for f in fields(header)
              if fieldName(f) in (b"to", b"cc", b"bcc")]
    return [address for _, address in getaddresses(values) if address]


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    try:
        options, recipients = getopt.getopt(arguments, "tio:f:F:b:r:", ["data="])
    except getopt.GetoptError as e:
        print(f"jsmail-sendmail: {e}", file=sys.stderr)
        return EX_USAGE
    dataArgument = None
    fromHeaders, dotEnds = False, True
    sender, fullName, mode = None, None, "m"
    for option, value in options:
        if option == "-t":
            fromHeaders = True
        elif option == "-i" or (option == "-o" and value == "i"):
            dotEnds = False  # other -oX options are accepted and ignored, as sendmail's clones do
        elif option in ("-f", "-r"):
            sender = value
        elif option == "-F":
            fullName = value
        elif option == "-b":
            mode = value
        elif option == "--data":
            dataArgument = value
    dataDir = dataDirectory(dataArgument)
    hostname = socket.getfqdn()
    sender = sender if sender is not None else f"{_user()}@{hostname}"
    if mode == "p":
        from jsmail.cli import main as jsmailMain

        return jsmailMain(["--data", dataDir, "queue", "list"])
    if mode == "s":
        return _smtpOnStdio(dataDir, hostname)
    if mode != "m":
        print(f"jsmail-sendmail: -b{mode} is not supported (only -bm, -bs, -bp)", file=sys.stderr)
        return EX_USAGE
    try:
        spool = readMessage(sys.stdin.buffer, dotEnds)
    except OSError as e:
        print(f"jsmail-sendmail: cannot read the message: {e}", file=sys.stderr)
        return EX_IOERR
    with spool:
        header, rest, _ = readHeader(spool)
        if fromHeaders:
            recipients = recipients + _recipientsFrom(header)
            header = dropFields(header, lambda field: hasName(field, "bcc"))  # the recipients came from them
        if not recipients:
            print("jsmail-sendmail: no recipients (give them as arguments, or use -t)", file=sys.stderr)
            return EX_USAGE
        owed = Owed(received=True, complete=True, hostname=hostname, author=formataddr((fullName or "", sender)))
        try:
            enqueue(dataDir, _Chain(header + rest, spool), encode(sender, recipients), owed,  # type: ignore[arg-type]
                    trusted=True)
        except (QueueRefusal, EnvelopeError) as e:
            print(f"jsmail-sendmail: not queued: {e}", file=sys.stderr)
            return EX_DATAERR if 11 <= e.code <= 40 or e.code == 91 else EX_TEMPFAIL
        except OSError as e:
            print(f"jsmail-sendmail: not queued: {e}", file=sys.stderr)
            return EX_TEMPFAIL
    return EX_OK


class _Chain(io.RawIOBase):
    """Reads ``head`` and then the rest of ``tail``: the header section, then the body."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self._head = io.BytesIO(head)
        self._tail = tail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._head.read(size) or self._tail.read(size)


def _smtpOnStdio(dataDir: str, hostname: str) -> int:
    """-bs: jsmail's ESMTP server on stdin/stdout, queueing into the queue on disk, as
    for a local user (no relay control: local users may send anywhere), whose mail
    is a local submission."""
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import maybeDeferred

    from jsmail.qmail.tcpserver import SessionOnStdio, reactorStopper
    from jsmail.queue.funnel import Funnel
    from jsmail.queue.store import MaildirQueue
    from jsmail.smtp.server import ESMTPServer, Listener, ServerSettings

    queueDir = os.path.join(dataDir, "queue")
    queue = MaildirQueue(queueDir, maybeDeferred, sweep=False, spares=0)
    funnel = Funnel(queue, lambda queueId, envelope: wakeDelivery(queueDir))
    sink = funnel.owing(Owed(complete=True, hostname=hostname))
    session = ESMTPServer(Listener(ServerSettings(hostname=hostname), sink, reactor, "sendmail -bs"))
    stdio.StandardIO(SessionOnStdio(session, reactorStopper(reactor)))
    reactor.run()
    queue.close()
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())

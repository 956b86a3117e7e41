"""``jsmail-sendmail``: the sendmail command, handing mail to the jsmail gateway
(qmail-inject's job).  Installable as ``sendmail`` (and ``mailq``, ``newaliases``)
for cron, web applications and mail readers::

    jsmail-sendmail [-t] [-i] [-f sender] [-F "Full Name"] [options] [recipient ...]
    jsmail-sendmail -bs      # SMTP on stdin/stdout, as a local user
    jsmail-sendmail -bp      # list the queue (jsmail queue list)

The options are in :mod:`jsmail.qmail.sendmailoptions` (``--help`` prints them).

Where the gateway is.  The configuration comes from ``-C``, else ``$JSMAIL_CONFIG``,
else ``/etc/jsmail/jsmail.toml``; ``--data``/``$JSMAIL_DATA`` name the data
directory (alone, or over the file's).  Nothing depends on the working directory: a
file whose data directory is relative is refused, since the gateway's working
directory is not known here.  With none of these there is no gateway to give mail
to, and the command says so (exit 69) rather than queue mail that nobody will read.
A caller who may not read the file (it holds passwords) tries
:data:`~jsmail.submit.settings.WELL_KNOWN_SOCKET`.

How the mail goes.  Through the gateway's local submission socket
(:mod:`jsmail.submit`), which any local user may use; the gateway knows the caller by
the socket's peer credentials, checks the envelope sender, and adds the Received
field, Date and Message-ID.  When nothing listens there, the queue's owner (the
jsmail user) writes the queue directly, as ``jsmail-queue`` does, and wakes the
delivery process; anyone else gets exit 75 (try again later) and the message is not
sent: cron and most programs then report it rather than believe it sent.

The message (LF or CR LF lines) is read from stdin; with ``-t`` the recipients come
from its To, Cc and Bcc fields too (Bcc is then removed).  Without ``-i`` a line
holding a single "." ends it.  A message without a From field gets one naming the
sender, with the ``-F`` name.  Exit codes are sendmail's (sysexits.h).
"""

from __future__ import annotations

import io
import os
import pwd
import socket
import sys
import tempfile
from dataclasses import dataclass
from email.utils import formataddr, getaddresses
from typing import Any, BinaryIO, Iterator, TextIO, cast

from jsmail.headers import dropFields, fieldName, fields, fieldValue, hasName, readHeader
from jsmail.qmail.sendmailoptions import Invocation, UsageError, parse, usage
from jsmail.submit.settings import WELL_KNOWN_SOCKET, qualifyingDomain

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE = 0, 64, 65, 67, 69
EX_IOERR, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 74, 75, 77, 78

DEFAULT_CONFIG = "/etc/jsmail/jsmail.toml"
SPOOL_IN_MEMORY = 1 << 20  # larger messages wait in a temporary file


class Refusal(Exception):
    """Stop with exit ``status`` and ``message`` on stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Place:
    """Where the gateway takes mail: its socket; the data directory when known (for
    the queue's owner); the limits and names of its configuration when readable."""

    socket: str
    dataDir: str | None = None
    config: Any = None  # jsmail.config.Config

    @property
    def queueDir(self) -> str | None:
        return os.path.join(self.dataDir, "queue") if self.dataDir else None

    def ownsQueue(self) -> bool:
        """Whether this process runs as the user the queue belongs to (the jsmail user)."""
        queueDir = self.queueDir
        try:
            return queueDir is not None and os.stat(queueDir).st_uid == os.geteuid()
        except OSError:
            return False


def locate(invocation: Invocation, environ: dict[str, str]) -> Place:
    """Find the gateway from the command line, the environment or the default file."""
    from jsmail.config import ConfigError, loadConfig

    path = invocation.config or environ.get("JSMAIL_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG)
                                                                 else None)
    data = invocation.data or environ.get("JSMAIL_DATA")
    if path is None and not data:
        raise Refusal(EX_UNAVAILABLE, f"no jsmail gateway is configured here: {DEFAULT_CONFIG} does not exist, and "
                                      f"neither -C, JSMAIL_CONFIG nor JSMAIL_DATA is given; the mail is not sent")
    overrides = {"server.data": os.path.abspath(data)} if data else {}
    if path is not None and not data and not _readable(path):
        return Place(WELL_KNOWN_SOCKET)  # it holds passwords: the packaged socket, see WELL_KNOWN_SOCKET
    try:
        config = loadConfig(path, overrides)
    except ConfigError as e:
        raise Refusal(EX_CONFIG, f"configuration error: {e}") from None
    source = config.source
    rawData, rawSocket = source.get("server", {}).get("data", ""), source.get("submit", {}).get("socket", "")
    if rawSocket == "none":
        raise Refusal(EX_UNAVAILABLE, f"local submission is turned off in {path} ([submit] socket = \"none\")")
    known = bool(data) or os.path.isabs(rawData)
    if not known and not os.path.isabs(rawSocket):
        raise Refusal(EX_CONFIG, f"{path} gives no absolute [server] data (nor [submit] socket), so the gateway's "
                                 f"socket cannot be found from here; make it an absolute path")
    return Place(config.submit.socket, config.server.dataDir if known else None, config)


def _readable(path: str) -> bool:
    """False when this user may not read the file at ``path`` (or reach it)."""
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False
    except OSError:
        return True  # missing, or worse: loadConfig says so


def readMessage(stdin: BinaryIO, dotEnds: bool, limit: int | None) -> tempfile.SpooledTemporaryFile[bytes]:
    """The message from ``stdin`` into a spool (memory, then disk), line ends kept;
    with ``dotEnds`` a line of a single "." ends it.  Refuses more than ``limit``
    octets (the gateway's size limit)."""
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
    size = 0
    while line := stdin.readline(65536):
        if dotEnds and line.rstrip(b"\r\n") == b".":
            break
        size += len(line)
        if limit is not None and size > limit:
            raise Refusal(EX_DATAERR, f"the message is larger than the gateway's limit of {limit} octets; not sent")
        spool.write(line)
    spool.seek(0)
    return spool


def _recipientsFrom(header: bytes) -> list[str]:
    values = [fieldValue(f).decode("utf-8", "replace") for f in fields(header)
              if fieldName(f) in (b"to", b"cc", b"bcc")]
    return [address for _, address in getaddresses(values) if address]


def _loginName() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise Refusal(EX_NOPERM, f"uid {os.getuid()} has no user name; local submission needs one") from None


class _Chain(io.RawIOBase):
    """Reads ``head``, then the rest of ``tail`` (seekable: a message sent more than
    once, in batches of recipients, is read from its start each time)."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self._head, self._tail, self._start = head, tail, tail.tell()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        assert offset == 0 and whence == 0, "only rewinding"
        self._pos = 0
        self._tail.seek(self._start)
        return 0

    def read(self, size: int = -1) -> bytes:
        if self._pos < len(self._head):
            data = self._head[self._pos : self._pos + size] if size >= 0 else self._head[self._pos :]
            self._pos += len(data)
            return data
        return self._tail.read(size)


class _Reader(io.RawIOBase):
    """A file that reads what an iterator of chunks gives."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._held = chunks, b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._held) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._held += chunk
        data, self._held = (self._held, b"") if size < 0 else (self._held[:size], self._held[size:])
        return data


def prepare(invocation: Invocation, spool: BinaryIO, domain: str) -> tuple[str, list[str], BinaryIO]:
    """The sender, the recipients and the message to send: ``-t``'s recipients and
    Bcc removed, a From field added where there is none (the sender, qualified with
    ``domain``)."""
    header, rest, _ = readHeader(spool)
    recipients = list(invocation.recipients)
    if invocation.fromHeaders:
        recipients += _recipientsFrom(header)
        header = dropFields(header, lambda field: hasName(field, "bcc"))
    if not recipients:
        raise Refusal(EX_USAGE, "no recipients (give them as arguments, or use -t)")
    sender = invocation.sender if invocation.sender is not None else _loginName()
    if not any(fieldName(f) == b"from" for f in fields(header)):
        author = sender or _loginName()  # the null sender names no author: the user is one
        author = author if "@" in author else f"{author}@{domain}"
        if header and not header.endswith(b"\n"):
            header += b"\n"
        header += f"From: {formataddr((invocation.fullName or '', author))}\n".encode()
    return sender, recipients, _Chain(header + rest, spool)  # type: ignore[return-value]


def send(invocation: Invocation, place: Place, stdin: BinaryIO, stderr: TextIO) -> int:
    """-bm: read the message and hand it to the gateway (or, for the queue's owner
    when no gateway listens, to the queue)."""
    from jsmail.submit.client import GatewayLost, NoGateway, submit

    config = place.config
    limit = config.smtp.maxMessageSize if config is not None else None
    with readMessage(stdin, invocation.dotEnds, limit) as spool:
        sender, recipients, message = prepare(invocation, cast(BinaryIO, spool),
                                              qualifyingDomain(config) if config is not None else socket.getfqdn())
        options = invocation.mailOptions
        if any(not a.isascii() for a in (sender, *recipients)):
            options = [*options, "SMTPUTF8"]
        try:
            outcome = submit(place.socket, sender, recipients, message, options, invocation.rcptOptions,
                             verbose=invocation.verbose)
        except NoGateway as e:
            if place.ownsQueue():
                return _enqueue(place, sender, recipients, message, stderr)
            print(f"jsmail-sendmail: {e}; the mail is not sent", file=stderr)
            return EX_TEMPFAIL
        except GatewayLost as e:
            print(f"jsmail-sendmail: {e}; the mail may not be sent", file=stderr)
            return EX_TEMPFAIL
    for recipient, (code, text) in outcome.refused.items():
        print(f"jsmail-sendmail: <{recipient}>: {code} {text}", file=stderr)
    if invocation.verbose:
        for text in outcome.queued:
            print(f"jsmail-sendmail: {text}", file=stderr)
    statuses = [statusFor(code, text) for code, text in outcome.refused.values()]
    return next((status for status in statuses if status != EX_TEMPFAIL), EX_TEMPFAIL) if statuses else EX_OK


def statusFor(code: int, text: str) -> int:
    """The exit status for a refusal (sendmail's meanings): try again later, the
    sender not allowed, a recipient unknown, the message refused, or unavailable."""
    enhanced = text.split(" ", 1)[0]
    if 400 <= code < 500:
        return EX_TEMPFAIL
    if enhanced.startswith("5.7."):
        return EX_NOPERM
    if enhanced.startswith("5.1."):
        return EX_NOUSER
    if enhanced.startswith(("5.3.4", "5.6.")):
        return EX_DATAERR
    return EX_UNAVAILABLE


def _enqueue(place: Place, sender: str, recipients: list[str], message: BinaryIO, stderr: TextIO) -> int:
    """Queue into the queue on disk, as ``jsmail-queue`` does (only the queue's owner
    gets here), and wake the delivery process."""
    from jsmail.qmail.envelope import EnvelopeError, encode
    from jsmail.qmail.queueprogram import QueueRefusal, enqueue
    from jsmail.queue.funnel import Owed
    from jsmail.submit.client import normalised

    assert place.dataDir is not None and place.config is not None
    message.seek(0)
    owed = Owed(received=True, complete=True, hostname=place.config.server.hostname)
    domain = qualifyingDomain(place.config)  # what the gateway adds to an address without one

    def qualified(address: str) -> str:
        return address if "@" in address or not address else f"{address}@{domain}"

    envelope = [qualified(address) for address in (sender, *recipients)]
    try:
        enqueue(place.dataDir, _Reader(normalised(message)), encode(envelope[0], envelope[1:]), owed,  # type: ignore[arg-type]
                trusted=True)  # a user of this host, as on the socket
    except (QueueRefusal, EnvelopeError) as e:
        print(f"jsmail-sendmail: not queued: {e}", file=stderr)
        return EX_DATAERR if 11 <= e.code <= 40 or e.code == 91 else EX_TEMPFAIL
    except OSError as e:
        print(f"jsmail-sendmail: not queued: {e}", file=stderr)
        return EX_TEMPFAIL
    return EX_OK


def main(argv: list[str] | None = None, stdin: BinaryIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, environ: dict[str, str] | None = None) -> int:
    """The command; tests give their own streams and environment."""
    program = os.path.basename(sys.argv[0]) if argv is None else "sendmail"
    arguments = sys.argv[1:] if argv is None else argv
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    environ = dict(os.environ) if environ is None else environ
    try:
        invocation = parse(arguments, program)
        if invocation.mode == "help":
            print(usage(), file=stdout, end="")
            return EX_OK
        if invocation.mode == "aliases":
            print("jsmail-sendmail: nothing to do: jsmail reads its aliases file again when it changes", file=stdout)
            return EX_OK
        place = locate(invocation, environ)
        if invocation.mode == "list":
            return _listQueue(place, stderr)
        if invocation.mode == "flush":
            return _flush(place, stdout)
        if invocation.mode == "smtp":
            return _smtp(place, stderr)
        return send(invocation, place, stdin, stderr)
    except UsageError as e:
        print(f"jsmail-sendmail: {e}", file=stderr)
        return EX_USAGE
    except Refusal as e:
        print(f"jsmail-sendmail: {e}", file=stderr)
        return e.status
    except OSError as e:
        print(f"jsmail-sendmail: {e}", file=stderr)
        return EX_IOERR


def _listQueue(place: Place, stderr: TextIO) -> int:
    queueDir = place.queueDir
    if queueDir is None or not os.access(queueDir, os.R_OK | os.X_OK):
        print("jsmail-sendmail: -bp: only the queue's owner (and root) may list the queue", file=stderr)
        return EX_NOPERM
    from jsmail.cli import main as jsmailMain

    return jsmailMain(["--data", place.dataDir, "queue", "list"])  # type: ignore[list-item]


def _flush(place: Place, stdout: TextIO) -> int:
    """-q: wake the delivery process to retry now, if this user may; otherwise the
    gateway runs its queue by itself, and there is nothing to do."""
    from jsmail.queue.admin import wakeDelivery

    queueDir = place.queueDir
    if queueDir is not None and os.access(queueDir, os.W_OK | os.X_OK) and wakeDelivery(queueDir, flush=True):
        print("jsmail-sendmail: asked the delivery process to retry the queue now", file=stdout)
    else:
        print("jsmail-sendmail: nothing to do: the gateway runs its queue by itself", file=stdout)
    return EX_OK


def _smtp(place: Place, stderr: TextIO) -> int:
    """-bs: the user's SMTP session, passed to the gateway's socket; for the queue's
    owner when no gateway listens, jsmail's SMTP server in this process."""
    from jsmail.submit.client import NoGateway, relay

    try:
        relay(place.socket, 0, 1)
    except NoGateway as e:
        if not place.ownsQueue():
            print(f"jsmail-sendmail: {e}", file=stderr)
            return EX_TEMPFAIL
        return _smtpOnStdio(place)
    except OSError as e:
        print(f"jsmail-sendmail: the session with the gateway failed: {e}", file=stderr)
        return EX_TEMPFAIL
    return EX_OK


def _smtpOnStdio(place: Place) -> int:
    """jsmail's ESMTP server on stdin/stdout, queueing into the queue on disk (no
    relay control: local users may send anywhere), whose mail is a local submission."""
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import maybeDeferred

    from jsmail.qmail.tcpserver import SessionOnStdio, reactorStopper
    from jsmail.queue.admin import wakeDelivery
    from jsmail.queue.funnel import Funnel, Owed
    from jsmail.queue.store import MaildirQueue
    from jsmail.smtp.server import ESMTPServer, Listener

    queueDir = place.queueDir
    assert queueDir is not None and place.config is not None
    queue = MaildirQueue(queueDir, maybeDeferred, sweep=False, spares=0)

    def queued(queueId: str, envelope: object) -> None:
        wakeDelivery(queueDir)

    funnel = Funnel(queue, queued)
    hostname = place.config.server.hostname
    sink = funnel.owing(Owed(complete=True, hostname=hostname))
    session = ESMTPServer(Listener(place.config.smtp, sink, reactor, "sendmail -bs"))
    stdio.StandardIO(SessionOnStdio(session, reactorStopper(reactor)))
    reactor.run()
    queue.close()
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())

"""The client side of local submission: hand one message to the gateway over its UNIX
socket, in SMTP, blocking, every wait bounded (what ``jsmail-sendmail`` uses).

The message is read from a seekable file of LF or CR LF text and sent as SMTP wants
it: every line end CR LF (a bare CR or LF too, so cron's output of a progress bar is
not refused), lines longer than :data:`LINE` octets broken (folded in the header
section, as Postfix breaks lines past its ``line_length_limit``), dots stuffed.  With
more recipients than the gateway takes in one transaction (452 4.5.3), the rest go in
the next one, with the same message.
"""

from __future__ import annotations

import os
import re
import selectors
import smtplib
import socket
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Sequence

from jsmail.submit.unix import connect

TIMEOUT = 300.0  # seconds any one wait on the gateway may take (RFC 5321 4.5.3.2 allows it 10 minutes for DATA)
LINE = 996  # octets of text a line may carry; a dot-stuffed one is still at most 999 with its CR LF
_CHUNK = 65536
_LINE_END = re.compile(rb"\r\n|\r|\n")


class NoGateway(Exception):
    """Nothing takes mail on the socket: it is missing, or nothing listens, or this
    user may not reach it."""


class GatewayLost(Exception):
    """The gateway stopped answering, or hung up, in the middle of the session."""


@dataclass
class Outcome:
    """What the gateway said: a reply per transaction it queued (``queued``, its
    "Queued as" texts) and, per recipient it refused, the code and text."""

    greeting: str = ""
    queued: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class _SocketSMTP(smtplib.SMTP):
    """smtplib's client over a socket already connected."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__(local_hostname="localhost", timeout=timeout)
        self.sock = sock


def _open(path: str, timeout: float) -> socket.socket:
    try:
        return connect(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        raise NoGateway(f"no jsmail gateway listens on {path} ({e.strerror}); try again once it runs") from None
    except PermissionError:
        raise NoGateway(f"cannot reach {path}: permission denied (every directory above the socket must be "
                        f"searchable by all users)") from None
    except OSError as e:
        raise NoGateway(f"cannot connect to {path}: {e.strerror or e}") from None


def submit(path: str, sender: str, recipients: Sequence[str], message: BinaryIO, mailOptions: Sequence[str] = (),
           rcptOptions: Sequence[str] = (), timeout: float = TIMEOUT, verbose: bool = False) -> Outcome:
    """Hand ``message`` (seekable) for ``recipients`` to the gateway on the socket at
    ``path``.  Raises :class:`NoGateway` if nothing takes it there, or
    :class:`GatewayLost`; refusals are in the :class:`Outcome`."""
    client = _SocketSMTP(_open(path, timeout), timeout)
    if verbose:
        client.set_debuglevel(1)
    outcome = Outcome()
    try:
        code, text = client.getreply()
        outcome.greeting = text.decode("utf-8", "replace")
        if code != 220:
            raise GatewayLost(f"the gateway greeted with {code} {outcome.greeting}")
        code, text = client.ehlo()
        if code != 250:
            raise GatewayLost(f"the gateway answered EHLO with {code} {text.decode('utf-8', 'replace')}")
        pending = list(recipients)
        while pending:
            pending = _transaction(client, sender, pending, message, mailOptions, rcptOptions, outcome)
        client.quit()
    except (smtplib.SMTPException, OSError) as e:
        raise GatewayLost(f"the gateway stopped answering: {e}") from None
    finally:
        client.close()
    return outcome


def _transaction(client: _SocketSMTP, sender: str, recipients: list[str], message: BinaryIO,
                 mailOptions: Sequence[str], rcptOptions: Sequence[str], outcome: Outcome) -> list[str]:
    """One transaction for as many of ``recipients`` as the gateway takes in one;
    returns those left for the next."""
    code, text = client.mail(sender, list(mailOptions))
    if code != 250:
        outcome.refused.update((r, (code, text.decode("utf-8", "replace"))) for r in recipients)
        client.rset()
        return []
    accepted: list[str] = []
    left: list[str] = []
    for i, recipient in enumerate(recipients):
        code, text = client.rcpt(recipient, list(rcptOptions))
        if code in (250, 251):
            accepted.append(recipient)
        elif code == 452 and accepted:  # too many in one transaction: the rest go in the next
            left = recipients[i:]
            break
        else:
            outcome.refused[recipient] = (code, text.decode("utf-8", "replace"))
    if not accepted:
        client.rset()
        return left
    code, text = client.docmd("DATA")
    if code == 354:
        message.seek(0)
        assert client.sock is not None, "connected"
        for chunk in wireData(message):
            client.sock.sendall(chunk)  # not client.send, which -v would make print the message
        code, text = client.getreply()
    if code == 250:
        outcome.queued.append(text.decode("utf-8", "replace"))
    else:
        outcome.refused.update((r, (code, text.decode("utf-8", "replace"))) for r in accepted)
    return left


def _lines(source: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """The text of each line (CR LF, LF or a bare CR ends one), in pieces of at most
    :data:`LINE` octets, each with whether it starts its line."""
    held, first = b"", True
    while True:
        chunk = source.read(_CHUNK)
        data, pos = held + chunk, 0
        for end in _LINE_END.finditer(data):
            if chunk and end.end() == len(data) and end.group() == b"\r":
                break  # perhaps the CR of a CR LF cut in two
            text = data[pos : end.start()]
            for start in range(0, len(text) or 1, LINE):
                yield text[start : start + LINE], first and start == 0
            pos, first = end.end(), True
        held = data[pos:]
        if not chunk:
            for start in range(0, len(held), LINE):
                yield held[start : start + LINE], first and start == 0
            return
        while len(held) > LINE:  # a long line without its end yet: send what there is
            yield held[:LINE], first
            held, first = held[LINE:], False


def _folded(source: BinaryIO) -> Iterator[bytes]:
    """Each line's text, a long one broken (and folded in the header section)."""
    inHeader = True
    for text, first in _lines(source):
        if inHeader and first and not text:
            inHeader = False
        elif inHeader and not first:
            text = b" " + text
        yield text


def _chunks(lines: Iterator[bytes], end: bytes) -> Iterator[bytes]:
    out = bytearray()
    for line in lines:
        out += line + b"\r\n"
        if len(out) >= _CHUNK:
            yield bytes(out)
            out.clear()
    out += end
    yield bytes(out)


def normalised(source: BinaryIO) -> Iterator[bytes]:
    """The message from ``source`` as CR LF text with no line longer than
    :data:`LINE` octets, in chunks of about 64 KiB (see the module docstring)."""
    return _chunks(_folded(source), b"")


def wireData(source: BinaryIO) -> Iterator[bytes]:
    """The same as DATA content: dots stuffed, and the final dot line."""
    return _chunks((b"." + line if line.startswith(b".") else line for line in _folded(source)), b".\r\n")


def relay(path: str, stdin: int, stdout: int, timeout: float = TIMEOUT) -> None:
    """``sendmail -bs``: pass the SMTP session on ``stdin``/``stdout`` to the gateway
    and its replies back, until the gateway hangs up; an idle ``timeout`` ends it too.
    Raises :class:`NoGateway` if nothing listens."""
    sock = _open(path, timeout)
    with sock, selectors.SelectSelector() as selector:  # select(2): stdin may be a plain file
        selector.register(stdin, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        while events := selector.select(timeout):  # none: idle for too long
            for key, _ in events:
                if key.fileobj is sock:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view):]
                else:
                    data = os.read(stdin, _CHUNK)
                    if data:
                        sock.sendall(data)
                    else:
                        selector.unregister(stdin)
                        sock.shutdown(socket.SHUT_WR)

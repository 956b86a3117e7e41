"""What the ESMTP client puts on the wire for one message: the MAIL and RCPT commands,
pure functions of the message and the peer's EHLO keywords (so every rule is tested
without a connection), and the dot-stuffed content.

- Content is never altered to suit the peer: 8-bit data to a peer without 8BITMIME, or
  a message needing SMTPUTF8 to a peer without it, fails permanently (RFC 6152 section
  3, RFC 6531 section 3.4); jsmail does not downgrade.
- Only a dot after CR LF is stuffed: that is a line start to a strict peer (RFC 5321
  section 4.5.2), and the only CR LF . CR LF on the wire is the one that ends the
  message.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Mapping, Sequence

from jsmail import reply
from jsmail.envelope import Recipient
from jsmail.error import DeliveryError

__all__ = ["CHUNK", "UNSAFE", "DotStuffer", "OutgoingMessage", "bareLineEnding", "has8bit", "mailCommand",
           "rcptCommand", "withCRLF"]

CHUNK = 16 * 1024  # octets read from the message file at a time
UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # could end a command line early: never sent from an address
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def withCRLF(data: bytes) -> bytes:
    """``data`` with every line ending CR LF, as SMTP carries mail (RFC 5321 section
    2.3.8): Python's ``EmailMessage.as_bytes()`` ends lines with LF alone."""
    return _LINE_END.sub(b"\r\n", data)


def bareLineEnding(data: bytes) -> bool:
    """Whether ``data`` has a CR or LF that is not part of a CR LF."""
    return _BARE.search(data) is not None


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to deliver: ``open`` gives its bytes (CR LF lines, not dot-stuffed).
    ``mailParams`` are as received; a SIZE among them is ignored (``size`` is sent).
    ``eightBit`` says whether the content has octets above 127; left None, the client
    reads the message to find out (on the reactor thread: a caller that can, should
    find out in a thread, as remote delivery does)."""

    sender: str
    recipients: Sequence[Recipient]
    mailParams: Mapping[str, str | None]
    size: int
    open: Callable[[], BinaryIO]
    eightBit: bool | None = None

    @classmethod
    def fromBytes(cls, sender: str, recipients: Sequence[str | Recipient], data: bytes,
                  mailParams: Mapping[str, str | None] | None = None) -> OutgoingMessage:
        """A message held in memory, its lines made to end with CR LF (:func:`withCRLF`)."""
        data = withCRLF(data)
        return cls(sender, tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
                   dict(mailParams or {}), len(data), lambda: io.BytesIO(data), has8bit(io.BytesIO(data), 0))


def mailCommand(message: OutgoingMessage, extensions: Mapping[str, str]) -> str:
    """The MAIL command for ``message`` to a peer that offered ``extensions`` (upper-case
    EHLO keywords and their parameters).  ``message.eightBit`` must be known.  Fails
    with a permanent :class:`DeliveryError` when the peer cannot take the message as it
    is, before anything is sent; its detail says what the peer lacks."""
    if message.eightBit is None:
        raise ValueError("whether the message has 8-bit data must be known")
    params = {key.upper(): value for key, value in message.mailParams.items()}
    limit = extensions.get("SIZE", "")
    if limit.isdigit() and 0 < int(limit) < message.size:
        raise DeliveryError(reply.PEER_SIZE_LIMIT.format(message.size, limit), True, f"takes at most {limit} octets")
    utf8 = ("SMTPUTF8" in params or not message.sender.isascii()
            or not all(r.address.isascii() for r in message.recipients))
    if utf8 and "SMTPUTF8" not in extensions:
        raise DeliveryError(reply.PEER_NO_SMTPUTF8, True, "does not offer SMTPUTF8")
    if message.eightBit and "8BITMIME" not in extensions:
        raise DeliveryError(reply.PEER_NO_8BITMIME, True, "does not offer 8BITMIME")
    words = [f"MAIL FROM:<{message.sender}>"]
    if "SIZE" in extensions:
        words.append(f"SIZE={message.size}")
    if "8BITMIME" in extensions and (message.eightBit or (params.get("BODY") or "").upper() == "8BITMIME"):
        words.append("BODY=8BITMIME")
    if utf8:
        words.append("SMTPUTF8")
    if "DSN" in extensions:
        words += _dsnParams(params, ("RET", "ENVID"))
    return " ".join(words)


def rcptCommand(recipient: Recipient, extensions: Mapping[str, str]) -> str:
    """The RCPT command for ``recipient``, with its DSN parameters when the peer offers DSN."""
    words = [f"RCPT TO:<{recipient.address}>"]
    if "DSN" in extensions:
        words += _dsnParams({key.upper(): value for key, value in recipient.params.items()}, ("NOTIFY", "ORCPT"))
    return " ".join(words)


def _dsnParams(params: Mapping[str, str | None], keys: Sequence[str]) -> list[str]:
    """The DSN parameters (RFC 3461) among ``params``, as received (they are xtext)."""
    return [key if params[key] is None else f"{key}={params[key]}"
            for key in keys if key in params and not UNSAFE.search(params[key] or "")]


def has8bit(file: BinaryIO, start: int) -> bool:
    """Whether the message from ``start`` has an octet above 127, read in chunks."""
    file.seek(start)
    while chunk := file.read(CHUNK):
        if not chunk.isascii():
            return True
    return False


class DotStuffer:
    """Dot-stuffs message content for DATA (RFC 5321 section 4.5.2) one read at a time.

    A line's CR LF may end one read and its leading dot start the next (or the CR and
    the LF may be split), so the last two octets seen are kept between reads.
    """

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the message starts at a line start

    def feed(self, chunk: bytes) -> bytes:
        stuffed = chunk.replace(b"\r\n.", b"\r\n..")
        if chunk.startswith(b".") and self._tail == b"\r\n":
            stuffed = b"." + stuffed
        elif chunk.startswith(b"\n.") and self._tail.endswith(b"\r"):
            stuffed = b"\n." + stuffed[1:]
        self._tail = (self._tail + chunk)[-2:]
        return stuffed

    def end(self) -> bytes:
        """The end of data: the final dot, after a CR LF if the content lacks one."""
        return b".\r\n" if self._tail == b"\r\n" else b"\r\n.\r\n"

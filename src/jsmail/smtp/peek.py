"""The Message-ID of a message as it streams in, for the operator log (``queued``), so
that ``jsmail trace --message-id`` can find a message its author knows only by that."""

from __future__ import annotations

import re

#: Header octets kept: a Message-ID further down than this is not looked for.
LIMIT = 16384

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\s]{1,250}>)")


class MessageIdPeek:
    """Keeps the start of the header section (at most :data:`LIMIT` octets) while the
    content streams past, and finds the Message-ID there once it is complete."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._complete = False

    def feed(self, data: bytes) -> None:
        if self._complete:
            return
        start = max(0, len(self._head) - 3)
        self._head += data[: LIMIT - len(self._head)]
        if len(self._head) >= LIMIT or self._head.find(b"\n\r\n", start) >= 0 or self._head.find(b"\n\n", start) >= 0:
            self._complete = True

    @property
    def messageId(self) -> str:
        """The Message-ID with its angle brackets, or "" where there is none."""
        if self._head.startswith((b"\r\n", b"\n")):
            return ""  # no header section at all
        match = _MESSAGE_ID.search(self._head)
        return match.group(1).decode("ascii", "replace") if match else ""

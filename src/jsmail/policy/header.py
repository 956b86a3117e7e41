"""The header section of a message as the checks read it: at most :data:`MAX_HEADER`
octets, read from the start of the spooled message (never the whole message), and
split into fields in linear time however much a field is folded.

RFC 5322 section 2.1: the header section ends at the first empty line.  Lines end in
CR LF; a bare LF is taken as a line end too, as dkimpy does, so that every check sees
the same fields.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["MAX_HEADER", "fieldValues", "headerFields", "readHeader", "splitHeader"]

#: The most of a header section the checks read (256 KiB): far above any real message,
#: and what bounds the work done on hostile ones.
MAX_HEADER = 256 * 1024

_END = re.compile(rb"(?:\A|\n)(\r?\n)")


def splitHeader(data: bytes) -> tuple[bytes, int] | None:
    """(header section up to and including its last line end, offset of the body) if
    ``data`` holds the empty line that ends the header section; else None."""
    end = _END.search(data)
    return None if end is None else (data[:end.start(1)], end.end())


def readHeader(chunks: Iterable[bytes], limit: int = MAX_HEADER) -> tuple[bytes, int, bool]:
    """Read ``chunks`` (a message from its first octet) until the header section ends:
    (header section, offset of the body, complete).  ``complete`` is False when no
    empty line came within ``limit`` octets: the header is then cut there.  A message
    that ends first is all header, with no body (the offset is its length)."""
    held = bytearray()
    for chunk in chunks:
        start = max(0, len(held) - 2)  # the empty line may straddle two chunks
        held += chunk
        end = _END.search(held, start)
        if end is not None and end.start(1) <= limit:
            return bytes(held[:end.start(1)]), end.end(), True
        if len(held) > limit:
            return bytes(held[:limit]), limit, False
    return bytes(held), len(held), True


def headerFields(header: bytes) -> list[bytes]:
    """Split a header section into whole fields, folded lines included (CR LF kept
    inside a field, none at its end).  Linear: a field folded many times is joined once."""
    fields: list[list[bytes]] = []
    for line in header.split(b"\n"):
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif line:
            fields.append([line])
    return [b"\r\n".join(parts) for parts in fields]


def fieldValues(header: bytes, name: bytes) -> list[bytes]:
    """The values (after the colon, still folded) of the fields called ``name``, any
    case, with the obsolete white space before the colon allowed (RFC 5322 section 4.5)."""
    pattern = re.compile(rb"(?i)" + re.escape(name) + rb"[ \t]*:")
    values = []
    for field in headerFields(header):
        match = pattern.match(field)
        if match is not None:
            values.append(field[match.end():])
    return values

"""The one reader of a message's header section (RFC 5322 sections 2.2 and 3.6).

The parts that look at header fields (smtpd's assembly, the funnel, bounces, local
delivery, the sendmail command, the content filter's output, the email-authentication
checks) split and walk them here, so that they all agree on where the header section
ends, what a folded field is and which field a name picks.

- :class:`HeaderScanner` and :func:`splitHeader` find the empty line that ends the
  header section, in data that arrives in pieces, holding at most ``limit`` octets: a
  longer header section is cut at a field boundary, so fields can still be added there.
  A bare LF ends a line too, as dkimpy reads it, so every check sees the same fields.
- :func:`fields` gives whole (folded) fields; :func:`fieldName` and :func:`hasName`
  compare names without case; :func:`dropFields` leaves fields out.
- :func:`fromDomain` is the one From-domain rule (DMARC's author domain, the domain a
  DKIM signature is made for); :func:`mailboxes` the addresses a From or Sender field
  names.
- :class:`FieldWatcher` reads the header section as content streams past, counting
  Received fields and keeping a few named fields, without holding the message.

All of it is linear in its input: no pass over the data is repeated per line or per
fold, and nothing recurses, so a field folded 100,000 times or a comment nested
thousands deep costs what its length costs.
"""

from __future__ import annotations

import functools
import re
from typing import IO, Callable, Iterable, Iterator, NamedTuple

from jsmail.address import normaliseDomain
from jsmail.error import SMTPReplyError

MAX_HEADER = 256 * 1024  # octets of header section held to find its end
MAX_FROM_FIELD = 8192  # octets: a longer From field is no usable author (no real one comes near)
_READ = 65536
_WSP = b" \t"
_NAME_OCTETS = bytes(range(33, 127))  # what a field name is made of: printable US-ASCII


class Split(NamedTuple):
    """A message cut after its header section."""

    header: bytes  # whole fields, each with its line end as it came
    rest: bytes  # what was read after them: the empty line and the body so far, or the fields past the cut
    whole: bool  # False when the header section was longer than the limit and cut there

    @property
    def bodyOffset(self) -> int:
        """Where the body starts in the message, past the empty line (for a header
        section cut at the limit: where the cut is)."""
        if not self.whole:
            return len(self.header)
        return len(self.header) + (2 if self.rest.startswith(b"\r\n") else 1 if self.rest.startswith(b"\n") else 0)


class HeaderScanner:
    """Finds the end of the header section in data fed piece by piece; holds at most
    ``limit`` octets (plus the piece that crosses it) until it knows."""

    def __init__(self, limit: int = MAX_HEADER) -> None:
        self._held = bytearray()
        self._line = 0  # start of the first line not yet looked at
        self._field = 0  # start of the field that line belongs to
        self._searched = 0  # no line end before this offset, from self._line on
        self._limit = limit

    def feed(self, data: bytes) -> Split | None:
        """Take the next piece; the split once the header section's end (or the limit)
        is reached, else None."""
        held = self._held
        held += data
        while (end := held.find(b"\n", self._searched)) >= 0:
            line = self._line
            if end == line or (end == line + 1 and held[line] == 0x0D):
                return self._cut(line, True)  # the empty line
            if held[line] not in _WSP:
                self._field = line
            self._line = self._searched = end + 1
            if self._line > self._limit:
                return self._cut(self._field, False)
        self._searched = len(held)
        if len(held) > self._limit and held[self._line:] != b"\r":  # a lone CR may start the empty line
            line = self._line  # the line that crosses the limit has begun: cut before its field
            return self._cut(line if held[line] not in _WSP else self._field, False)
        return None

    def close(self) -> Split:
        """The input ended inside the header section: all of it is header."""
        return self._cut(len(self._held), True)

    def _cut(self, at: int, whole: bool) -> Split:
        held = self._held
        self._held = bytearray()
        return Split(bytes(held[:at]), bytes(held[at:]), whole)


@functools.lru_cache(maxsize=32)
def _names(names: tuple[str, ...]) -> tuple[frozenset[bytes], re.Pattern[bytes]]:
    """Field names as a watcher compares them, and a pattern that finds the lines
    starting a Received field or one of them (the name, white space, then the line's
    first colon within :attr:`FieldWatcher._NAME` octets): made once for each list of
    names (a watcher is made for every message)."""
    keep = frozenset(n.lower().encode("ascii") for n in names)
    alternatives = b"|".join(re.escape(name) for name in sorted(keep | {b"received"}))
    limit = FieldWatcher._NAME
    pattern = re.compile(rb"^(?=[^\n:]{0,%d}:)(%s)[ \t]*:" % (limit, alternatives), re.MULTILINE | re.IGNORECASE)
    return keep, pattern


_FIELD_END = re.compile(rb"\n(?![ \t])")  # a line end not followed by a folded line


def _emptyLine(data: bytes) -> int:
    """Where the first empty line of ``data``, which starts at a line's start, begins;
    -1 if there is none."""
    if data.startswith((b"\n", b"\r\n")):
        return 0
    ends = [at + 1 for at in (data.find(b"\n\n"), data.find(b"\n\r\n")) if at >= 0]
    return min(ends) if ends else -1


class FieldWatcher:
    """Watches the header section go by, piece by piece: counts its Received fields
    (the hop count of RFC 5321 section 6.3) and keeps whole the fields named in
    ``keep``, up to ``limit`` octets in all (past that, ``overflow`` is set and no more
    are kept).  Only field names are looked at otherwise, so a header section of any
    size costs one pass and no more memory than the kept fields."""

    _NAME = 32  # octets of a line read to find its field name; longer names are none we watch

    def __init__(self, keep: Iterable[str] = (), limit: int = 16 * 1024) -> None:
        self.count = 0  # Received fields
        self.kept: list[bytes] = []  # whole fields, line ends inside them as they came, the last one left off
        self.overflow = False
        self._keep, self._watched = _names(tuple(keep))
        self._room = limit
        self._inHeader = True
        self._head = b""  # the start of the current line, while its field name is not known
        self._mode = "head"  # "head": reading a line's start; "copy" or "skip": the rest of the line
        self._current: bytearray | None = None  # the kept field being read

    def feed(self, data: bytes) -> None:
        if self._inHeader and not self._head and self._current is None and self._mode == "head":
            end = _emptyLine(data)
            if end >= 0:  # the header section's rest, whole: what the steps below find, at once
                self._feedRest(data, end)
                return
        self._feedStepwise(data)

    def _feedRest(self, data: bytes, end: int) -> None:
        """Read ``data[:end]``, the rest of the header section from a line's start, with
        scans written in C; a message's header usually comes in one piece."""
        for match in self._watched.finditer(data, 0, end):
            name = match.group(1).lower()
            self.count += name == b"received"
            if name in self._keep and not self.overflow:
                fieldEnd = _FIELD_END.search(data, match.end(), end)
                assert fieldEnd is not None  # the empty line at ``end`` follows every field
                field = data[match.start() : fieldEnd.end()]
                if len(field) > self._room:
                    self.overflow = True
                else:
                    self._room -= len(field)
                    self.kept.append(_withoutLineEnd(field))
        self._inHeader = False

    def _feedStepwise(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while self._inHeader and pos < size:
            if self._mode != "head":
                lf = data.find(b"\n", pos)
                end = size if lf < 0 else lf + 1
                if self._mode == "copy":
                    self._copy(data[pos:end])
                pos = end
                if lf >= 0:
                    self._mode, self._head = "head", b""
                continue
            if not self._head and data[pos] in _WSP:  # a folded line: it goes with its field
                self._mode = "copy" if self._current is not None else "skip"
                continue
            piece = data[pos : pos + self._NAME + 1 - len(self._head)]
            lf, colon = piece.find(b"\n"), piece.find(b":")
            cut = lf if colon < 0 or 0 <= lf < colon else colon  # the first of the two, or -1
            if cut >= 0:
                piece = piece[: cut + 1]
            pos += len(piece)
            head = self._head = self._head + piece
            if head in (b"\n", b"\r\n"):
                self._finishField()
                self._inHeader = False  # the empty line ending the header section
            elif head.endswith(b":"):
                self._startField(head)
            elif head.endswith(b"\n") or len(head) > self._NAME:
                self._finishField()  # a line with no name we watch
                self._mode = "head" if head.endswith(b"\n") else "skip"
                self._head = b""

    def close(self) -> None:
        """The content ended (inside the header section, perhaps)."""
        self._finishField()
        self._inHeader = False

    def _startField(self, head: bytes) -> None:
        self._finishField()
        name = head[:-1].rstrip(_WSP).lower()
        self.count += name == b"received"
        if name in self._keep and not self.overflow:
            self._current = bytearray()
            self._mode = "copy"
            self._copy(head)
        else:
            self._mode = "skip"

    def _copy(self, data: bytes) -> None:
        if self._current is None:
            return
        if len(data) > self._room:
            self.overflow, self._current, self._mode = True, None, "skip"
            return
        self._room -= len(data)
        self._current += data

    def _finishField(self) -> None:
        if self._current is not None:
            self.kept.append(_withoutLineEnd(bytes(self._current)))
            self._current = None


class FieldDropper:
    """Streams a message to ``write``, leaving out the header fields ``drop`` picks,
    holding at most ``limit`` octets of header at a time.  A header section longer
    than that is filtered in turns (each cut falls between fields), and a single field
    longer than that is judged by its first ``limit`` octets, so a field far down goes
    as surely as the first; once the body begins, data passes straight through."""

    def __init__(self, write: Callable[[bytes], None], drop: Callable[[bytes], bool], limit: int = MAX_HEADER) -> None:
        self._write = write
        self._drop = drop
        self._limit = limit
        self._scanner: HeaderScanner | None = HeaderScanner(limit)
        self._longField: bool | None = None  # inside a field over the limit: drop it (True) or pass it (False)
        self._afterLineEnd = False  # the long field's last piece ended a line: the next octet tells if it goes on

    def write(self, data: bytes) -> None:
        while True:
            if self._longField is not None:
                after = self._restOfLongField(data)
                if after is None:
                    return
                data, self._scanner = after, HeaderScanner(self._limit)
            if self._scanner is None:
                break
            split = self._scanner.feed(data)
            if split is None:
                return
            self._write(_keptFields(split.header, self._drop))
            data = split.rest
            if split.whole:
                self._scanner = None
            elif not split.header:  # one field alone is over the limit
                self._scanner, self._longField = None, self._drop(data[: self._limit])
            else:
                self._scanner = HeaderScanner(self._limit)
        if data:
            self._write(data)

    def close(self) -> None:
        """The content ended, inside the header section perhaps: write what is held."""
        if self._scanner is not None:
            header = self._scanner.close().header
            self._scanner = None
            self._write(_keptFields(header, self._drop))

    def _restOfLongField(self, data: bytes) -> bytes | None:
        """Drop or pass the long field's octets in ``data``; what follows the field, or
        None while it goes on."""
        if not data:
            return None
        if self._afterLineEnd and data[0] not in _WSP:
            self._longField, self._afterLineEnd = None, False
            return data
        start = 0
        while (lf := data.find(b"\n", start)) >= 0 and lf + 1 < len(data):
            if data[lf + 1] not in _WSP:
                if not self._longField:
                    self._write(data[: lf + 1])
                self._longField, self._afterLineEnd = None, False
                return data[lf + 1 :]
            start = lf + 1
        self._afterLineEnd = lf >= 0
        if not self._longField:
            self._write(data)
        return None


def splitHeader(chunks: Iterator[bytes], limit: int = MAX_HEADER) -> Split:
    """Read ``chunks`` until the header section ends (or ``limit`` is passed); what
    ``chunks`` still holds after that is the rest of the message."""
    scanner = HeaderScanner(limit)
    for chunk in chunks:
        split = scanner.feed(chunk)
        if split is not None:
            return split
    return scanner.close()


def readHeader(source: IO[bytes], limit: int = MAX_HEADER) -> Split:
    """:func:`splitHeader` on an open file, read from where it stands."""
    return splitHeader(iter(lambda: source.read(_READ), b""), limit)


def headerOf(message: bytes) -> bytes:
    """The whole header section of a message held in memory."""
    return splitHeader(iter([message]), len(message)).header


def _spans(header: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each field, its line end included; a line that starts with white
    space continues the field before it (RFC 5322 section 2.2.3)."""
    start = None
    pos, size = 0, len(header)
    while pos < size:
        end = header.find(b"\n", pos)
        end = size if end < 0 else end + 1
        if header[pos] not in _WSP or start is None:
            if start is not None:
                yield start, pos
            start = None if header[pos:end].strip(b"\r\n") == b"" else pos
        pos = end
    if start is not None:
        yield start, size


def _withoutLineEnd(field: bytes) -> bytes:
    field = field[:-1] if field.endswith(b"\n") else field
    return field[:-1] if field.endswith(b"\r") else field


def fields(header: bytes) -> list[bytes]:
    """The header section's fields, whole: folded lines stay inside their field, with
    their line ends as they came; each field's final line end is left off."""
    return [_withoutLineEnd(header[start:end]) for start, end in _spans(header)]


def fieldName(field: bytes) -> bytes | None:
    """The field's name, lower-cased (white space before the colon allowed, RFC 5322
    section 4.5.3); None when the field has no well-formed name."""
    name, colon, _ = field.partition(b":")
    name = name.rstrip(_WSP)
    if not colon or not name or name.translate(None, _NAME_OCTETS):
        return None
    return name.lower()


def hasName(field: bytes, name: str) -> bool:
    """Whether ``field`` is a ``name`` field, compared without case."""
    return fieldName(field) == name.lower().encode("ascii")


def fieldValue(field: bytes) -> bytes:
    """The field's body, unfolded (RFC 5322 section 2.2.3)."""
    return field.partition(b":")[2].replace(b"\r\n", b"").replace(b"\n", b"")


def dropFields(message: bytes, drop: Callable[[bytes], bool]) -> bytes:
    """``message`` without the header fields ``drop`` picks; everything else, line ends
    included, is left as it was."""
    split = splitHeader(iter([message]), len(message))
    return _keptFields(split.header, drop) + split.rest


def _keptFields(header: bytes, drop: Callable[[bytes], bool]) -> bytes:
    """``header``, whole fields and no empty line (a :class:`Split`'s), without the
    fields ``drop`` picks."""
    return b"".join(header[start:end] for start, end in _spans(header) if not drop(_withoutLineEnd(header[start:end])))


def fromDomain(message: bytes) -> str | None:
    """The author domain (RFC 9989 section 4.4; the domain a DKIM signature is made
    for): the domain of the addresses in the message's one From field (RFC 5322 section
    3.6 allows exactly one), as a lower-case A-label.  RFC 5322 lets the field name
    several authors: one domain for all of them is that domain.  None when there is no
    From field or more than one, it holds no address or addresses of two domains, does
    not parse, is longer than :data:`MAX_FROM_FIELD`, or its domain is no usable domain
    name (an address literal included)."""
    found = [f for f in fields(headerOf(message)) if hasName(f, "from")]
    if len(found) != 1 or len(found[0]) > MAX_FROM_FIELD:
        return None
    addresses = _mailboxes(fieldValue(found[0]).decode("utf-8", "replace"))  # RFC 6532 allows UTF-8
    domains = set()
    for address in addresses or ():
        local, at, domain = address.rpartition("@")
        domain = domain.strip()
        if not at or not local.strip() or not domain or domain.startswith("["):
            return None
        try:
            domains.add(normaliseDomain(domain[:-1] if domain.endswith(".") else domain))
        except SMTPReplyError:
            return None
    return domains.pop() if len(domains) == 1 else None


def mailboxes(field: bytes) -> list[str] | None:
    """The addresses a From or Sender field names (a quoted local part reads as
    ``""``); None when the field does not parse or is longer than
    :data:`MAX_FROM_FIELD`."""
    if len(field) > MAX_FROM_FIELD:
        return None
    return _mailboxes(fieldValue(field).decode("utf-8", "replace"))


def _mailboxes(value: str) -> list[str] | None:
    """The addr-specs of a mailbox-list (no groups); None when it does not parse."""
    text = _withoutCommentsAndQuotes(value)
    if text is None:
        return None
    elements, start, angled = [], 0, False
    for i, c in enumerate(text):
        if c == "<":
            if angled:
                return None
            angled = True
        elif c == ">":
            if not angled:
                return None
            angled = False
        elif not angled and c in ":;":
            return None  # a group: From holds mailboxes only
        elif not angled and c == ",":
            elements.append(text[start:i])
            start = i + 1
    elements.append(text[start:])
    if angled:
        return None
    addresses = []
    for mailbox in (e for e in elements if e.strip()):  # obs-mbox-list allows empty elements
        if "<" not in mailbox:
            address = mailbox.strip()
            if any(c.isspace() for c in address):
                return None
        else:
            _, _, inside = mailbox.partition("<")
            address, _, after = inside.partition(">")
            if after.strip():
                return None
            address = address.rpartition(":")[2]  # obs-route: <@relay,@relay:local@domain>
        addresses.append(address)
    return addresses


def _withoutCommentsAndQuotes(value: str) -> str | None:
    """``value`` with comments (which nest) turned into a space and each quoted string
    into ``""``, so what is left can be split on its specials; None when a comment or a
    quoted string is not closed.  One pass with a depth counter: nothing recurses."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for c in value:
        if escaped:
            escaped = False
        elif (depth or quoted) and c == "\\":
            escaped = True
        elif depth:
            depth += (c == "(") - (c == ")")
            if not depth:
                out.append(" ")
        elif quoted:
            if c == '"':
                quoted = False
                out.append('""')
        elif c == "(":
            depth = 1
        elif c == '"':
            quoted = True
        else:
            out.append(c)
    return None if depth or quoted else "".join(out)

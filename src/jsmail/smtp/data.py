"""Strict readers for message content: DATA (dot-terminated) and BDAT (counted chunks).

Both are small state machines fed with whatever bytes arrive, writing content straight
to a sink (the queue file) as it comes, so no message is ever held whole in memory.

The rules, and why:

- Only CR LF . CR LF ends DATA (RFC 5321 sections 3.3 and 4.1.1.4).  A bare LF or bare
  CR never ends the message and never lets what follows be read as a command: that is
  the "SMTP smuggling" family (CVE-2023-51764 and kin), where two servers disagree on
  where a message ends.
- A bare CR or LF in content is either refused (the default: the whole message is read
  to its real end and then refused, so the session stays in step) or normalised to
  CR LF.  When normalising, a bare LF ends a *line* (so a leading dot after it is
  unstuffed, as a client that thinks in LF would have stuffed it) but a dot line after
  it still does not end the *message*: only a dot line that follows a real CR LF does.
  The same rule holds for BDAT content, so what leaves jsmail later is clean either way.
- Dot-unstuffing (RFC 5321 section 4.5.2), the line-length limit (section 4.5.3.1.6,
  counted on the wire including CR LF) and the size budget apply as bytes arrive.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable

# Where the next byte stands relative to a line start.
_MID_LINE = 0
_AFTER_BARE_LF = 1  # a line start, but one a dot line cannot end the message from
_AFTER_CRLF = 2

_NOT_CLEAN = object()  # ContentScanner._feedClean: the slow way is needed


class ContentProblems:
    """What was wrong with the content; the reader goes on reading regardless."""

    def __init__(self) -> None:
        self.bareLineEnding = False
        self.longLine = False

    def __bool__(self) -> bool:
        return self.bareLineEnding or self.longLine


class ContentScanner:
    """Checks line endings and line lengths of content as it streams to ``sink``.

    Clean content is passed on in runs as long as the bytes that came in (one slice per
    read, not one per line); only a dot to unstuff or a line to normalise splits a run.
    With ``dotStuffed`` (DATA), :meth:`feed` also finds the terminator.
    """

    def __init__(self, sink: Callable[[bytes], None], maxLine: int = 1000, normalise: bool = False,
                 dotStuffed: bool = False) -> None:
        self.sink = sink
        self.maxLine = maxLine
        self.normalise = normalise
        self.dotStuffed = dotStuffed
        self.problems = ContentProblems()
        self.lineStart = _AFTER_CRLF
        self._lineLength = 0
        self._held = b""  # a CR waiting for its LF, or the start of a possible ".\r\n"

    def feed(self, chunk: bytes) -> bytes | None:
        """Scan ``chunk``; for DATA, return what follows the terminator once it is found."""
        data = self._held + chunk if self._held else chunk
        clean = self._feedClean(data)
        if clean is not _NOT_CLEAN:
            return clean  # type: ignore[return-value]  # bytes or None
        self._held = b""
        pos, size, run = 0, len(data), 0  # run: where the bytes not yet passed on start
        while pos < size:
            if self.dotStuffed and self.lineStart != _MID_LINE and data[pos] == 0x2E:  # "."
                self._pass(data, run, pos)
                if self.lineStart == _AFTER_CRLF:
                    if data.startswith(b".\r\n", pos):
                        return data[pos + 3 :]
                    if size - pos < 3 and b".\r\n".startswith(data[pos:]):
                        self._held = data[pos:]  # cannot tell yet: wait for more bytes
                        return None
                pos = run = pos + 1  # dot-unstuffing: drop the leading dot
                self.lineStart = _MID_LINE
                continue
            lf = data.find(b"\n", pos)
            if lf < 0:
                end = size - 1 if data[-1] == 0x0D else size  # a CR that may precede an LF
                self._held = data[end:]
                if end > pos:
                    run = self._scan(data, run, pos, end, _MID_LINE)
                self._pass(data, run, end)
                return None
            ending = _AFTER_CRLF if lf > 0 and data[lf - 1] == 0x0D else _AFTER_BARE_LF
            run = self._scan(data, run, pos, lf + 1, ending)
            pos = lf + 1
        self._pass(data, run, size)
        return None

    def _feedClean(self, data: bytes) -> bytes | None | object:
        """What :meth:`feed` does with ``data`` when it is clean (every line ending a
        CR LF, no line too long, no dot beginning a line but the terminator's), found
        with a few scans written in C instead of a step per line (a 100 KiB message has
        some 1,400 lines); else :data:`_NOT_CLEAN`, and nothing is done."""
        content, rest = data, None
        if self.dotStuffed:
            dot = data.find(b"\r\n.")  # a dot after a bare LF: the bare LF is found below
            if dot >= 0:  # only the terminator may begin a line with a dot here
                if not data.startswith(b".\r\n", dot + 2):
                    return _NOT_CLEAN
                content, rest = data[: dot + 2], data[dot + 5 :]
            if self.lineStart != _MID_LINE and data[:1] == b".":
                return _NOT_CLEAN
        held = b""
        if rest is None and content.endswith(b"\r"):
            content, held = content[:-1], b"\r"  # a CR that may precede an LF
        lines = content.split(b"\r\n")
        ends = len(lines) - 1
        if content.count(b"\n") != ends or content.count(b"\r") != ends:
            return _NOT_CLEAN  # a bare LF or CR
        tail = len(lines[-1])  # the line still open at the end
        if self._lineLength + len(content) > self.maxLine:
            if not ends or tail > self.maxLine or self._lineLength + len(lines[0]) + 2 > self.maxLine:
                return _NOT_CLEAN
            if max(map(len, islice(lines, 1, ends)), default=0) + 2 > self.maxLine:
                return _NOT_CLEAN
        self._held = held
        if content:
            self.lineStart = _AFTER_CRLF if ends and not tail else _MID_LINE
            self._lineLength = tail if ends else self._lineLength + tail
            self.sink(content)
        return rest

    def finish(self) -> None:
        """The content has ended (BDAT LAST): a CR still waiting for its LF was bare."""
        if self._held:
            held, self._held = self._held, b""
            self._pass(held, self._scan(held, 0, 0, len(held), _MID_LINE), len(held))

    def _pass(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.sink(data[start:end] if start or end < len(data) else data)

    def _scan(self, data: bytes, run: int, start: int, end: int, ending: int) -> int:
        """Check ``data[start:end]`` (a line up to its LF, or a piece with no LF when
        ``ending`` is ``_MID_LINE``); return where the pending run now starts."""
        self._lineLength += end - start
        if self._lineLength > self.maxLine:
            self.problems.longLine = True
        self.lineStart = ending
        if ending != _MID_LINE:
            self._lineLength = 0
        bodyEnd = end - 2 if ending == _AFTER_CRLF else end - (ending == _AFTER_BARE_LF)
        if ending != _AFTER_BARE_LF and data.find(b"\r", start, bodyEnd) < 0:
            return run
        self.problems.bareLineEnding = True
        if not self.normalise:
            return run
        self._pass(data, run, start)
        piece = data[start:bodyEnd].replace(b"\r", b"\r\n")
        self.sink(piece + b"\r\n" if ending != _MID_LINE else piece)
        return end


class DataReader(ContentScanner):
    """Reads DATA content up to CR LF . CR LF: :meth:`ContentScanner.feed` returns ``None`` while the
    message goes on, then the bytes after the terminator (pipelined commands)."""

    def __init__(self, sink: Callable[[bytes], None], maxLine: int = 1000, normalise: bool = False) -> None:
        super().__init__(sink, maxLine, normalise, dotStuffed=True)


class ChunkReader:
    """Reads exactly ``size`` octets of one BDAT chunk (RFC 3030) into a scanner that
    the chunks of one message share, since a line (or a CR LF) may span chunks."""

    def __init__(self, scanner: ContentScanner, size: int) -> None:
        self._scanner = scanner
        self.remaining = size

    def feed(self, chunk: bytes) -> bytes | None:
        """Take this chunk's bytes; return the rest once the chunk is complete."""
        take = chunk[: self.remaining]
        self.remaining -= len(take)
        self._scanner.feed(take)
        return chunk[len(take) :] if self.remaining == 0 else None


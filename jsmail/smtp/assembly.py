"""A received message held back from the queue until end-of-data checks have run.

When a listener has checks of the whole message (DKIM, DMARC, ARC, content filters) or
modifiers (DKIM signing), smtpd streams the content into a :class:`Spool` instead of
straight into the queue file: the checks may add header fields above it (RFC 8601
section 5 and RFC 7208 section 9.1 put Authentication-Results and Received-SPF at the
top), and header fields that forge this host's Authentication-Results must go
(RFC 8601 section 5).  Small messages stay in memory; larger ones roll over to a
temporary file, so a session never holds more than ``memoryLimit`` octets.
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from jsmail._threads import RunInThread
from jsmail.interfaces import IIncomingMessage

_CHUNK = 65536
_TURN = 1024 * 1024


class Spool:
    """The message as received (smtpd's Received field first), for checks to read."""

    def __init__(self, runInThread: RunInThread, memoryLimit: int = 256 * 1024) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=memoryLimit)
        self._runInThread = runInThread
        self._memoryLimit = memoryLimit
        self._bytes: bytes | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._file.write(data)

    def read(self) -> defer.Deferred[bytes]:
        """The whole message (read once, in a thread when it is on disk); checks run
        one after another, so two reads never share the file at once."""
        if self._bytes is not None:
            return defer.succeed(self._bytes)
        d = defer.succeed(self._readAll()) if self.size <= self._memoryLimit else self._runInThread(self._readAll)

        def keep(data: bytes) -> bytes:
            self._bytes = data
            return data

        return d.addCallback(keep)

    def _readAll(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            yield chunk

    def close(self) -> None:
        self._file.close()


def headerFields(block: bytes) -> list[bytes]:
    """Split a header block (CR LF lines) into whole fields, folded lines included."""
    fields: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # joined once below: a field folded many times stays linear
        elif line:
            fields.append([line])
    return [b"\r\n".join(parts) for parts in fields]


def _splitHeader(chunks: Iterator[bytes]) -> tuple[bytes, bytes]:
    """Read chunks until the empty line that ends the header (RFC 5322 section 2.1);
    return (header block without its final CR LF CR LF, everything read after it)."""
    held = bytearray()
    for chunk in chunks:
        start = max(0, len(held) - 3)  # the empty line may straddle two chunks
        held += chunk
        end = held.find(b"\r\n\r\n", start)
        if end >= 0:
            return bytes(held[: end + 2]), bytes(held[end + 2:])
    return bytes(held), b""


def dropFields(message: bytes, dropField: Callable[[bytes], bool]) -> bytes:
    """``message`` without the header fields ``dropField`` picks."""
    header, rest = _splitHeader(iter([message]))
    return b"".join(f + b"\r\n" for f in headerFields(header) if not dropField(f)) + rest


def transfer(spool: Spool, message: IIncomingMessage, prefix: bytes, dropField: Callable[[bytes], bool],
             clock: IReactorTime) -> defer.Deferred[None]:
    """Write ``prefix`` and then the spooled message into ``message``, leaving out the
    header fields ``dropField`` picks; a large message goes in turns of ``_TURN``
    octets, so other sessions are served in between."""
    chunks = spool.chunks()
    header, rest = _splitHeader(chunks)
    message.write(prefix + b"".join(f + b"\r\n" for f in headerFields(header) if not dropField(f)) + rest)
    done: defer.Deferred[None] = defer.Deferred()

    def turn() -> None:
        try:
            for _ in range(_TURN // _CHUNK):
                chunk = next(chunks, None)
                if chunk is None:
                    done.callback(None)
                    return
                message.write(chunk)
        except Exception:
            done.errback()
            return
        clock.callLater(0, turn)

    turn()
    return done

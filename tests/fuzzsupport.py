"""What the property-based tests (``tests/test_fuzz_*.py``) and the long fuzz runs
(``fuzz/``) share: the hypothesis settings, reference decoders written apart from
jsmail's own, and the oracles that say whether an SMTP session went right.

The decoders here are deliberately naive (whole input, line by line, no state
machine), so that a streaming reader which disagrees with them has a bug, not the
same bug twice.

Hypothesis settings: every property test takes :func:`bounded` settings, so the
suite stays fast (all of them together take about 10 s).  No profile has a deadline:
the suite shares two cores with other work, and a slow example is no failure.  Under
CI (``CI`` set, as ``.ci/run`` runs) the ``ci`` profile derandomises, so a CI run
checks the same examples each time and a red run can be re-run to the same end.
``JSMAIL_HYPOTHESIS_PROFILE=long`` multiplies every test's examples (by
``JSMAIL_HYPOTHESIS_SCALE``, default 200), for long runs by hand::

    JSMAIL_HYPOTHESIS_PROFILE=long .venv/bin/python -m twisted.trial tests.test_fuzz_smtpd
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jsmail.smtp.data import ChunkReader, ContentScanner, DataReader

PROFILE = os.environ.get("JSMAIL_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
_COMMON = {"deadline": None, "print_blob": True, "report_multiple_bugs": False,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("default", **_COMMON)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", **_COMMON)
settings.load_profile(PROFILE)
_SCALE = int(os.environ.get("JSMAIL_HYPOTHESIS_SCALE", "200")) if PROFILE == "long" else 1


def bounded(maxExamples: int) -> settings:
    """Settings for one property test: ``maxExamples`` in the suite, many more in the
    long profile (the deadline comes from the profile)."""
    return settings(max_examples=maxExamples * _SCALE)


# -- reference decoders ----------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """What a correct server makes of message content."""

    content: bytes  # as stored: dot-unstuffed, line ends normalised when asked
    rest: bytes | None  # what follows the DATA terminator; None while it has not come
    bareLineEnding: bool
    longLine: bool
    nul: bool
    hops: int  # Received fields in the header section

    def acceptable(self, normalise: bool, allowNul: bool = False, maxHops: int = 100) -> bool:
        """Whether a server with these settings takes the message."""
        return not ((self.bareLineEnding and not normalise) or self.longLine or (self.nul and not allowNul)
                    or self.hops > maxHops)


def _lines(data: bytes) -> list[bytes]:
    """``data`` cut after each LF; a last piece without LF is a line too."""
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)


def _decodeLines(raw: bytes, unstuff: bool, normalise: bool, maxLine: int) -> Decoded:
    out, bare, long = [], False, False
    for line in _lines(raw):
        body, ending = (line[:-1], b"\n") if line.endswith(b"\n") else (line, b"")
        if ending and body.endswith(b"\r"):
            body, ending = body[:-1], b"\r\n"
        if unstuff and body.startswith(b"."):
            body = body[1:]
        long = long or len(body) + len(ending) > maxLine
        if ending == b"\n" or b"\r" in body:
            bare = True
            if normalise:
                body, ending = body.replace(b"\r", b"\r\n"), (b"\r\n" if ending else b"")
        out.append(body + ending)
    content = b"".join(out)
    return Decoded(content, None, bare, long, b"\x00" in content, _hops(content))


def _hops(content: bytes) -> int:
    count = 0
    for line in _lines(content):
        if line in (b"\n", b"\r\n"):
            break
        count += line[:9].lower() == b"received:"
    return count


def decodeData(stream: bytes, normalise: bool = False, maxLine: int = 1000) -> Decoded:
    """DATA content as RFC 5321 says (sections 4.1.1.4 and 4.5.2): the message ends at
    the first CR LF . CR LF (the CR LF before DATA's first line counts), leading dots
    are removed; a bare LF ends a line (for unstuffing) but never the message."""
    framed = b"\r\n" + stream
    end = framed.find(b"\r\n.\r\n")
    if end < 0:
        decoded = _decodeLines(framed[2:], True, normalise, maxLine)
        return decoded  # rest None: not ended
    decoded = _decodeLines(framed[2:end + 2], True, normalise, maxLine)
    return Decoded(decoded.content, framed[end + 5:], decoded.bareLineEnding, decoded.longLine, decoded.nul,
                   decoded.hops)


def decodeChunks(chunks: Sequence[bytes], normalise: bool = False, maxLine: int = 1000) -> Decoded:
    """BDAT content (RFC 3030): the chunks joined, nothing unstuffed, the same line
    rules as DATA."""
    return _decodeLines(b"".join(chunks), False, normalise, maxLine)


def dataTerminated(content: bytes) -> bytes:
    """``content`` as a client's DATA stream: cut after its first real terminator, or
    given one, so that whatever follows is where the client meant it to be."""
    framed = b"\r\n" + content
    end = framed.find(b"\r\n.\r\n")
    if end >= 0:
        return framed[2:end + 5]
    return content + (b".\r\n" if content.endswith(b"\r\n") or not content else b"\r\n.\r\n")


# -- jsmail's readers, fed in pieces ---------------------------------------------------


def pieces(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, used in turn (at least 1 octet)."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        out.append(data[pos:pos + size])
        pos, i = pos + size, i + 1
    return out


def readData(stream: bytes, sizes: Sequence[int], normalise: bool = False, maxLine: int = 1000) -> Decoded:
    """jsmail's :class:`DataReader` over ``stream`` in pieces, as a :class:`Decoded`."""
    out: list[bytes] = []
    reader = DataReader(out.append, maxLine, normalise)
    rest: bytes | None = None
    chunks = pieces(stream, sizes)
    for i, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if rest is not None:
            rest += b"".join(chunks[i + 1:])
            break
    content = b"".join(out)
    return Decoded(content, rest, reader.problems.bareLineEnding, reader.problems.longLine, b"\x00" in content,
                   _hops(content))


def readChunks(chunks: Sequence[bytes], sizes: Sequence[int], normalise: bool = False,
               maxLine: int = 1000) -> Decoded:
    """jsmail's BDAT readers over ``chunks``, each chunk's octets in pieces."""
    out: list[bytes] = []
    scanner = ContentScanner(out.append, maxLine, normalise)
    for chunk in chunks:
        reader = ChunkReader(scanner, len(chunk))
        rest: bytes | None = b"" if not chunk else None
        for piece in pieces(chunk + b"NOOP\r\n", sizes):
            if rest is not None:
                rest += piece
            else:
                rest = reader.feed(piece)
        assert rest == b"NOOP\r\n", f"a chunk of {len(chunk)} octets left {rest!r}"
    scanner.finish()
    content = b"".join(out)
    return Decoded(content, None, scanner.problems.bareLineEnding, scanner.problems.longLine, b"\x00" in content,
                   _hops(content))


# -- strategies ---------------------------------------------------------------------------

#: Octet strings that matter to content readers: line ends, dots, the smuggling
#: family's endings, NUL, a long run, commands that must never be read as commands.
CONTENT_TOKENS = [b"a", b"b", b" ", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n",
                  b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r.\r", b"\x00", b"\xff", b"\t",
                  b"Received: x\r\n", b"MAIL FROM:<x@evil.test>\r\n", b"RCPT TO:<y@evil.test>\r\n", b"DATA\r\n",
                  b"x" * 997, b"BDAT 3 LAST\r\n"]

content = st.lists(st.sampled_from(CONTENT_TOKENS) | st.binary(max_size=4), max_size=40).map(b"".join)
readSizes = st.lists(st.integers(1, 40) | st.sampled_from([1, 2, 3, 4096]), min_size=1, max_size=8)


# -- SMTP replies ---------------------------------------------------------------------------

_LINE = re.compile(rb"(\d{3})([ -])(.*)\Z", re.S)
_ENHANCED = re.compile(rb"([245])\.\d{1,3}\.\d{1,3}(?: |\Z)")
QUEUED = re.compile(rb"^250 2\.0\.0 Queued as ([0-9A-F]+)\r\n", re.M)


def replies(output: bytes) -> list[list[bytes]]:
    """The server's output as replies (each a list of lines without CR LF); raises
    AssertionError if any line is not ``DDD SP/- text`` or a multi-line reply changes
    its code or never ends."""
    assert not output or output.endswith(b"\r\n"), f"output does not end in CR LF: {output[-80:]!r}"
    found: list[list[bytes]] = []
    current: list[bytes] = []
    for line in output.split(b"\r\n")[:-1]:
        match = _LINE.match(line)
        assert match is not None, f"malformed reply line {line!r}"
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF in reply line {line!r}"
        line.decode("utf-8")
        if current:
            assert line[:3] == current[0][:3], f"code changes inside a multi-line reply: {current + [line]!r}"
        current.append(line)
        if match.group(2) == b" ":
            found.append(current)
            current = []
    assert not current, f"unfinished multi-line reply {current!r}"
    return found


def checkReplies(output: bytes) -> list[list[bytes]]:
    """:func:`replies`, and every reply but the greeting, EHLO/HELO's and a 334
    challenge carries an enhanced status code of its class (RFC 2034, RFC 3463)."""
    found = replies(output)
    for index, reply in enumerate(found):
        first = reply[0]
        exempt = (index == 0 and first.startswith(b"220")) or first.startswith(b"334") or (
            first.startswith(b"250") and b" greets " in first)
        if exempt:
            continue
        for line in reply:
            match = _ENHANCED.match(line, 4)
            assert match is not None, f"reply line without an enhanced status code: {line!r}"
            klass = b"2" if line[:1] == b"3" else line[:1]  # RFC 3463 has no class 3: 354 says 2.0.0
            assert match.group(1) == klass, f"enhanced code of another class: {line!r}"
    return found


def sameReplies(output: bytes) -> bytes:
    """``output`` with queue ids blanked, to compare runs."""
    return QUEUED.sub(b"250 2.0.0 Queued as ID\r\n", output)


def storedMessages(messages: dict[str, tuple[object, bytes]]) -> list[tuple[object, bytes]]:
    """A MemoryQueue's messages in order, each queue id blanked in its data."""
    return [(_envelopeKey(envelope), data.replace(queueId.encode(), b"ID")) for queueId, (envelope, data) in
            messages.items()]


def _envelopeKey(envelope: object) -> object:
    return (getattr(envelope, "sender", None), tuple(r.address for r in getattr(envelope, "recipients", ())),
            getattr(envelope, "mailParams", None))


_RECEIVED = re.compile(rb"Received: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*?\t\w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000\r\n")


def withoutReceived(data: bytes) -> bytes:
    """A stored message without the Received field jsmail put on top."""
    match = _RECEIVED.match(data)
    assert match is not None, f"stored message does not start with jsmail's Received field: {data[:200]!r}"
    return data[match.end():]


# -- SMTP sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    """One mail transaction a client means to make: DATA content, or BDAT chunks."""

    sender: str
    recipients: tuple[str, ...]
    params: str
    content: bytes | None  # the DATA stream, terminator included
    chunks: tuple[bytes, ...] | None

    def wire(self) -> bytes:
        out = f"MAIL FROM:<{self.sender}>{self.params}\r\n".encode()
        out += b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in self.recipients)
        if self.content is not None:
            return out + b"DATA\r\n" + self.content
        chunks = self.chunks or (b"",)
        for i, chunk in enumerate(chunks):
            last = b" LAST" if i == len(chunks) - 1 else b""
            out += b"BDAT %d%s\r\n" % (len(chunk), last) + chunk
        return out

    def decoded(self, normalise: bool) -> Decoded:
        if self.content is not None:
            return decodeData(self.content, normalise)
        return decodeChunks(self.chunks or (), normalise)


@dataclass(frozen=True)
class Script:
    """A whole client session: EHLO, transactions with NOOP and RSET between, QUIT."""

    steps: tuple[Transaction | bytes, ...]
    normalise: bool
    allowNul: bool

    def wire(self) -> bytes:
        return b"EHLO client.test\r\n" + b"".join(
            s.wire() if isinstance(s, Transaction) else s for s in self.steps) + b"QUIT\r\n"

    def expected(self) -> list[tuple[object, bytes]]:
        """(envelope key, content) of each message a correct server stores."""
        found = []
        for step in self.steps:
            if isinstance(step, Transaction):
                decoded = step.decoded(self.normalise)
                if decoded.acceptable(self.normalise, self.allowNul):
                    params = dict(p.split("=", 1) if "=" in p else (p, None) for p in step.params.split())
                    found.append(((step.sender, _once(step.recipients), params), decoded.content))
        return found


def _once(addresses: Sequence[str]) -> tuple[str, ...]:
    """A recipient given twice is delivered to once (compared without case)."""
    kept: dict[str, str] = {}
    for address in addresses:
        kept.setdefault(address.lower(), address)
    return tuple(kept.values())


_ADDRESSES = ["a@example.test", "b.c@d.example", "x+y@[192.0.2.7]", "postmaster@mx.test", '"q s"@example.test']
_PARAMS = ["", " BODY=8BITMIME", " SIZE=100", " BODY=7BIT SIZE=5"]


@st.composite
def transactions(draw: st.DrawFn) -> Transaction:
    sender = draw(st.sampled_from(["", *_ADDRESSES]))
    recipients = tuple(draw(st.lists(st.sampled_from(_ADDRESSES), min_size=1, max_size=3)))
    params = draw(st.sampled_from(_PARAMS))
    if draw(st.booleans()):
        return Transaction(sender, recipients, params, dataTerminated(draw(content)), None)
    chunks = tuple(draw(st.lists(content, max_size=4)))
    return Transaction(sender, recipients, params, None, chunks)


scripts = st.builds(
    Script,
    st.lists(transactions() | st.sampled_from([b"NOOP\r\n", b"RSET\r\n", b"NOOP x\r\n"]), max_size=6).map(tuple),
    st.booleans(), st.booleans())

#: Octet strings a mutation puts in: commands, line ends and the content tokens.
COMMAND_TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"<", b">", b":", b"=", b"\"", b"\\", b"EHLO x\r\n",
                  b"HELO x\r\n", b"MAIL FROM:<a@b.test> SIZE=\xc2\xb2\r\n", b"RCPT TO:<c@d.test> NOTIFY=NEVER\r\n",
                  b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 0 LAST\r\n", b"BDAT \xd9\xa1\r\n", b"RSET\r\n", b"VRFY x\r\n",
                  b"AUTH PLAIN AHUAcA==\r\n", b"AUTH LOGIN\r\n", b"dQ==\r\n", b"*\r\n", b"STARTTLS\r\n",
                  b"\xff\xfe", b"\xe2\x80\xa8", b"x" * 600, *CONTENT_TOKENS]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few octet-level mutations: insertions, deletions, duplications,
    replacements; what a fuzzer does to a valid session."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "replace"]))
        at = draw(st.integers(0, len(data)))
        size = draw(st.integers(1, 16))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(COMMAND_TOKENS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + size]
        elif op == "duplicate":
            data[at:at] = data[at:at + size]
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)

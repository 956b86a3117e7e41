"""The DATA and BDAT readers: byte-exact content, whatever the read boundaries."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from jsmail.smtp.data import _NOT_CLEAN, ChunkReader, ContentScanner, DataReader


def dotStuff(content: bytes) -> bytes:
    """What a correct client sends for ``content`` (CR LF lines), terminator included."""
    lines = content.split(b"\r\n")
    assert lines[-1] == b"", "content ends with CR LF"
    return b"".join(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines[:-1]) + b".\r\n"


def feedInPieces(reader: DataReader | ChunkReader, data: bytes, rng: random.Random) -> bytes | None:
    rest = None
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, 7, 64, 4096])
        rest = reader.feed(data[pos : pos + size])
        pos += size
        if rest is not None:
            return rest + data[pos:]
    return rest


class DataReaderTests(SynchronousTestCase):
    def read(self, wire: bytes, seed: int = 0, **kw: object) -> tuple[bytes, bytes | None, DataReader]:
        out: list[bytes] = []
        reader = DataReader(out.append, **kw)  # type: ignore[arg-type]
        rest = feedInPieces(reader, wire, random.Random(seed))
        return b"".join(out), rest, reader

    def test_dot_stuffing_round_trip(self) -> None:
        """Random content with dots everywhere survives stuffing and unstuffing exactly,
        whatever sizes the reads come in."""
        rng = random.Random(5321)
        for seed in range(200):
            lines = [bytes(rng.choice(b".a. \t\xe9") for _ in range(rng.randrange(0, 12))) for _ in range(rng.randrange(0, 30))]
            content = b"".join(line + b"\r\n" for line in lines)
            got, rest, reader = self.read(dotStuff(content) + b"QUIT\r\n", seed)
            self.assertEqual(got, content)
            self.assertEqual(rest, b"QUIT\r\n")
            self.assertFalse(reader.problems)

    def test_unfinished(self) -> None:
        got, rest, _ = self.read(b"line\r\n.")
        self.assertIsNone(rest)
        self.assertEqual(got, b"line\r\n")

    def test_bare_endings_flagged_not_ending(self) -> None:
        for fake in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"):
            got, rest, reader = self.read(b"a" + fake + b"b\r\n.\r\nNEXT")
            self.assertEqual(rest, b"NEXT", fake)
            self.assertTrue(reader.problems.bareLineEnding, fake)

    def test_normalise(self) -> None:
        got, rest, reader = self.read(b"a\nb\rc\r\n..d\n.\n\r\n.\r\n", normalise=True)
        self.assertEqual(got, b"a\r\nb\r\nc\r\n.d\r\n\r\n\r\n")
        self.assertEqual(rest, b"")

    def test_long_line(self) -> None:
        _, _, reader = self.read(b"x" * 1001 + b"\r\n.\r\n", maxLine=1003)
        self.assertFalse(reader.problems.longLine)
        _, _, reader = self.read(b"x" * 1001 + b"\r\n.\r\n", maxLine=1002)
        self.assertTrue(reader.problems.longLine)


class ChunkReaderTests(SynchronousTestCase):
    def test_exact_octets_and_rest(self) -> None:
        out: list[bytes] = []
        scanner = ContentScanner(out.append, 1000, False)
        reader = ChunkReader(scanner, 5)
        self.assertIsNone(reader.feed(b"ab"))
        self.assertEqual(reader.feed(b"c\r\nNOOP\r\n"), b"NOOP\r\n")
        scanner.finish()
        self.assertEqual(b"".join(out), b"abc\r\n")
        self.assertFalse(scanner.problems)

    def test_cr_at_the_very_end_is_bare(self) -> None:
        out: list[bytes] = []
        scanner = ContentScanner(out.append, 1000, False)
        ChunkReader(scanner, 2).feed(b"a\r")
        scanner.finish()
        self.assertTrue(scanner.problems.bareLineEnding)
        self.assertEqual(b"".join(out), b"a\r")


class CleanChunkTests(SynchronousTestCase):
    """A clean chunk is read with a few scans instead of a step per line: what comes
    out, and the reader's state after, must be what the step-by-step reading gives."""

    def read(self, wire: bytes, sizes: list[int], maxLine: int, normalise: bool, dotStuffed: bool,
            quick: bool) -> tuple[bytes, list[bytes | None], tuple[object, ...]]:
        out: list[bytes] = []
        scanner = ContentScanner(out.append, maxLine, normalise, dotStuffed)
        if not quick:
            scanner._feedClean = lambda data: _NOT_CLEAN  # type: ignore[method-assign]
        returned, pos = [], 0
        for size in sizes:
            returned.append(scanner.feed(wire[pos : pos + size]))
            pos += size
        scanner.finish()
        state = (scanner.lineStart, scanner._lineLength, scanner._held, scanner.problems.bareLineEnding,
                 scanner.problems.longLine)
        return b"".join(out), returned, state

    def test_random_content_reads_the_same_either_way(self) -> None:
        rng = random.Random(15)
        pieces = [b"a", b"b", b"\r\n", b"\r\n", b"\r\n", b".", b"\r", b"\n", b"\r\n.\r\n", b"x" * 9]
        for _ in range(4000):
            wire = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
            sizes, left = [], len(wire)
            while left > 0:
                sizes.append(rng.choice([1, 2, 3, 5, 8, 13, 64]))
                left -= sizes[-1]
            options = (rng.choice([*range(2, 16), 1000]), rng.random() < 0.5, rng.random() < 0.5)
            quick = self.read(wire, sizes, *options, quick=True)
            slow = self.read(wire, sizes, *options, quick=False)
            self.assertEqual(quick, slow, (wire, sizes, options))

    def test_a_clean_message_passes_in_one_piece(self) -> None:
        """A 100 KiB message in one read: one write to the sink, the terminator found."""
        line = b"x" * 70 + b"\r\n"
        out: list[bytes] = []
        reader = DataReader(out.append)
        self.assertEqual(reader.feed(line * 1400 + b".\r\nQUIT\r\n"), b"QUIT\r\n")
        self.assertEqual(out, [line * 1400])
        self.assertFalse(reader.problems)

    def test_a_long_unfinished_last_line_is_found_in_a_clean_chunk(self) -> None:
        """BDAT content may end without a line end: its last line is measured too."""
        for last, long in [(b"x" * 8, False), (b"x" * 9, True)]:
            scanner = ContentScanner(lambda _: None, maxLine=8)
            scanner.feed(b"ab\r\n" + last)
            scanner.finish()
            self.assertEqual(scanner.problems.longLine, long)

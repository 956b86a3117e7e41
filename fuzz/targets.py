"""The fuzz targets: one function per fuzzed part, taking the fuzzer's octets.

Each turns the octets into the arguments of an oracle of :mod:`tests.fuzzoracles`
(the same checks the property tests make) and raises when the oracle does.  The
layout of an input is simple on purpose, so seeds can be written by hand: a flags
octet, then (for targets fed in pieces) a count ``n`` and ``n`` piece sizes, then the
payload.  ``SEEDS`` gives each target a few inputs to start from.

Import this module inside ``atheris.instrument_imports(include=["jsmail"])`` (as
``fuzz/run.py`` does) so that jsmail's code is instrumented for coverage.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from typing import Callable

from hypothesis import HealthCheck, given, settings
from tests.fuzzoracles import (
    checkAliases,
    checkAuthResults,
    checkChunkReaders,
    checkDataReader,
    checkDsnParameter,
    checkEnvelope,
    checkFromDomain,
    checkInstructions,
    checkPath,
    checkRecovery,
    checkScript,
    checkSession,
    checkShown,
    checkSplitHeader,
    watchLoggedFailures,
)
from tests.fuzzsupport import Script, readSizes, scripts

_logged = watchLoggedFailures()


class _Input:
    """Reads an input front to back: a flags octet, piece sizes, the payload."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def octet(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def flag(self, flags: int, bit: int) -> bool:
        return bool(flags >> bit & 1)

    def sizes(self) -> list[int]:
        return [self.octet() % 64 + 1 for _ in range(self.octet() % 8 + 1)]

    def rest(self) -> bytes:
        return self.data[self.pos:]

    def text(self) -> str:
        return self.rest().decode("utf-8", "replace")


def _noLoggedFailure(check: Callable[[], object]) -> None:
    before = len(_logged)
    check()
    assert len(_logged) == before, f"a failure was logged: {_logged[before]!r}"


def smtp(data: bytes) -> None:
    """A raw SMTP session, whole and in pieces (flags: AUTH offered, normalise, NUL)."""
    source = _Input(data)
    flags, sizes = source.octet(), source.sizes()
    settings = {"normaliseLineEndings": source.flag(flags, 1), "allowNul": source.flag(flags, 2)}
    _noLoggedFailure(lambda: checkSession(source.rest(), sizes, source.flag(flags, 0), **settings))


def sasl(data: bytes) -> None:
    """The AUTH exchange: EHLO and AUTH PLAIN or LOGIN, then the fuzzer's lines."""
    source = _Input(data)
    flags, sizes = source.octet(), source.sizes()
    mechanism = b"LOGIN" if source.flag(flags, 0) else b"PLAIN"
    wire = b"EHLO client.test\r\nAUTH " + mechanism + b"\r\n" + source.rest()
    _noLoggedFailure(lambda: checkSession(wire, sizes, True))


@settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(scripts, readSizes)
def _script(script: Script, sizes: list[int]) -> None:
    _noLoggedFailure(lambda: checkScript(script, sizes))


def smtpScript(data: bytes) -> None:
    """Well-formed sessions with hostile content, against the reference decoders; the
    octets drive hypothesis's strategies (``fuzz_one_input``)."""
    _script.hypothesis.fuzz_one_input(data)


def path(data: bytes) -> None:
    """MAIL FROM / RCPT TO arguments (flags: allow <>, SMTPUTF8, postmaster domain)."""
    source = _Input(data)
    flags = source.octet()
    checkPath(source.text(), source.flag(flags, 0), source.flag(flags, 1), "mx.test" if source.flag(flags, 2) else None)


def dataReader(data: bytes) -> None:
    """DATA content in pieces against the reference decoder (flags: normalise)."""
    source = _Input(data)
    flags, sizes = source.octet(), source.sizes()
    checkDataReader(source.rest(), sizes, source.flag(flags, 0))


def chunkReaders(data: bytes) -> None:
    """BDAT chunks (the payload cut at 0x1E octets) against the reference."""
    source = _Input(data)
    flags, sizes = source.octet(), source.sizes()
    checkChunkReaders(source.rest().split(b"\x1e")[:8], sizes, source.flag(flags, 0))


def dotqmail(data: bytes) -> None:
    """A .qmail file (flags: the owner-execute bit)."""
    source = _Input(data)
    flags = source.octet()
    checkInstructions(source.text(), source.flag(flags, 0))


def aliases(data: bytes) -> None:
    """An aliases file, then included files /f0, /f1, ... (cut at 0x1D octets)."""
    text, *files = _Input(data).text().split("\x1d")
    checkAliases(text, {f"/f{n}": content for n, content in enumerate(files[:12])})


def envelope(data: bytes) -> None:
    checkEnvelope(data)


def recovery(data: bytes) -> None:
    """A queue of up to 6 files whose envelope lines are cut at 0x1E (flags: in .env
    files); recovered in a fresh directory each time."""
    source = _Input(data)
    flags = source.octet()
    directory = tempfile.mkdtemp(prefix="jsmail-fuzz-")
    try:
        checkRecovery(directory + "/queue", source.rest().split(b"\x1e")[:6], source.flag(flags, 0))
    finally:
        shutil.rmtree(directory)


def headers(data: bytes) -> None:
    """splitHeader in pieces at a limit (the flags octet; 255: 256 KiB), fields, and
    the author domain of the same message."""
    source = _Input(data)
    flags, sizes = source.octet(), source.sizes()
    message = source.rest()
    checkSplitHeader(message, sizes, 256 * 1024 if flags == 255 else flags)
    checkFromDomain(message)


def fromDomain(data: bytes) -> None:
    """A From field's value, in a message."""
    checkFromDomain(b"Subject: x\r\nFrom: " + data + b"\r\n\r\nbody\r\n")


def authResults(data: bytes) -> None:
    checkAuthResults(data)


def dsn(data: bytes) -> None:
    """An ENVID or ORCPT value (flags: SMTPUTF8), and how the log would show it."""
    source = _Input(data)
    flags = source.octet()
    checkDsnParameter(source.text(), source.flag(flags, 0))
    checkShown(source.text())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp": smtp, "smtp-script": smtpScript, "sasl": sasl, "path": path, "data": dataReader, "bdat": chunkReaders,
    "dotqmail": dotqmail, "aliases": aliases, "envelope": envelope, "recovery": recovery, "headers": headers,
    "fromdomain": fromDomain, "authresults": authResults, "dsn": dsn,
}

#: libFuzzer's -max_len per target (others: 4096): long enough for the hostile shapes.
MAX_LEN = {"smtp": 16384, "smtp-script": 16384, "sasl": 8192, "headers": 65536, "fromdomain": 16384,
           "authresults": 65536, "data": 16384}

_SESSION = (b"EHLO client.test\r\nMAIL FROM:<a@example.test> BODY=8BITMIME\r\nRCPT TO:<b@example.test>\r\n"
            b"DATA\r\n.leading dot\r\nbare\nLF\r\n\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.test>\r\nBDAT 5\r\nab\r\n"
            b"cBDAT 0 LAST\r\nRSET\r\nAUTH PLAIN AHUAcA==\r\nQUIT\r\n")
SEEDS: dict[str, list[bytes]] = {
    "smtp": [b"\x00\x02\x05\x40" + _SESSION, b"\x07\x00\x01" + _SESSION.replace(b"\r\n", b"\n")],
    "smtp-script": [bytes(64), bytes(range(256))],
    "sasl": [b"\x00\x01\x03" + base64.b64encode(b"\0u\0p") + b"\r\nNOOP\r\n",
             b"\x01\x00" + base64.b64encode(b"u") + b"\r\n" + base64.b64encode(b"p" * 400) + b"\r\n*\r\n"],
    "path": [b"\x07<a@example.test> SIZE=10", b"\x03 <@relay.test:\"q s\"@[IPv6:::1]>", b"\x02<postmaster>",
             "\x02<ü@日本語.test> SMTPUTF8".encode()],
    "data": [b"\x00\x01\x07a\r\n..b\r\n\n.\n.\r\nNOOP\r\n", b"\x01\x00x\r.\r\nReceived: x\r\n\r\n.\r\n"],
    "bdat": [b"\x00\x01\x03ab\r\x1e\nc\r\n.\r\n\x1e", b"\x01\x00" + b"x" * 1001 + b"\r\n"],
    "dotqmail": [b"\x00# c\n|prog arg\n./Maildir/\n/var/mail/x\n&a@b.test\nb@c.test\n+list\n", b"\x01\n"],
    "aliases": [b"staff: a@b.test, \"|/bin/x, y\"\n  bob\nlist: :include:/f0\n\x1d:include:/f1, :include:/f1\x1d"
                b"c@d.test\n"],
    "envelope": [b'{"version":2,"sender":"a@b.test","recipients":[{"address":"x@localhost","params":{},'
                 b'"state":"pending","lastReply":null,"lastStatus":null,"lastFromPeer":false,"remoteMTA":null}],'
                 b'"mailParams":{},"arrival":1.5,"clientAddress":"","helo":"","protocol":"ESMTP","attempts":0,'
                 b'"nextAttempt":0}'],
    "recovery": [b"\x00{\x1e[]\x1e{\"version\":2}", b"\x01\xff\xfe"],
    "headers": [b"\x10\x02\x03\x05From: a@b.test\r\n folded\r\nSubject: x\r\n\r\nbody\r\n",
                b"\xff\x00From: (c (d) \\( e) \"q\"@b.test\n\nx"],
    "fromdomain": [b"\"x\" <a@B.Test>, (c) b@b.test", b"(" * 500 + b")" * 500 + b"a@b.test", b"<@r:a@b.test>"],
    "authresults": [b" (c (nested)) mx.test; spf=pass", b"(" * 1000 + b")" * 1000 + b" mx.test"],
    "dsn": [b"\x00QQ+2B1+20x", b"\x00rfc822;x+40example.org", b"\x01utf-8;j\\x{F6}rg@b.test",
            "\x01utf-8;jörg\u2028@b.test".encode(), b"\x00abc+0D+0A--X"],
}

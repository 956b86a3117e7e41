"""Property tests of the parsers that read what others wrote: SMTP paths, ``.qmail``
files, aliases files and queue envelopes.  Each either gives its result or raises its
one documented error, whatever the input; and what it accepts is sane."""

from __future__ import annotations

import os

from hypothesis import example, given, target
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsmail.address import MAX_PATH, Address, parsePath
from jsmail.envelope import Envelope, EnvelopeFormatError, Recipient
from jsmail.error import DeliveryError, SMTPReplyError
from jsmail.local.aliases import AliasesError, parseAliases
from jsmail.local.dotqmail import Forward, Instructions, Maildir, Mbox, Program, parseInstructions
from jsmail.queue.store import MaildirQueue
from jsmail.testing import runNow
from tests.fuzzsupport import bounded

# -- paths --------------------------------------------------------------------------------

_LOCAL_PIECES = ["a", "Z", "0", ".", "..", "+", "-", "=", "/", '"', "\\", " ", "@", "(", ")", ",", ":", "<", ">",
                 "é", "\u2028", "\u0085", "\u009b", "ｅ", "\x00", "\r", "\n", "\t", "\x7f", "ü" * 20, "x" * 60]
_DOMAIN_PIECES = ["example", "test", ".", "-", "xn--", "a" * 63, "。", "．", "ｅｘａｍｐｌｅ", "ß", "\u200d",
                  "\u00ad", "[", "]", "IPv6:", "::1", "127.0.0.1", "1", ":", "%", "\r", " ", "\x00", "日本",
                  "é" * 30, "日本語日本語日本語日本語", "ü" * 40]
_PARAM_PIECES = ["", " SIZE=10", " BODY=8BITMIME", " SMTPUTF8", " X=Y", " =", " A=", " size=1 SIZE=2", "  ",
                 " RET=\u2028", " ENVID=a+2B"]

localParts = st.lists(st.sampled_from(_LOCAL_PIECES), max_size=8).map("".join)
_LABELS = ["example", "test", "a" * 63, "xn--bcher-kva", "日本語" * 6, "ü" * 20, "ｅｘａｍｐｌｅ", "b-c", "ß",
           "-x"]
domains = (st.lists(st.sampled_from(_DOMAIN_PIECES), max_size=16).map("".join)
           | st.lists(st.sampled_from(_LABELS), min_size=1, max_size=8).map(".".join))
pathArguments = st.one_of(
    st.builds(lambda space, route, local, domain, params: f"{space}<{route}{local}@{domain}>{params}",
              st.sampled_from(["", " ", "  "]), st.sampled_from(["", "@relay.test:", "@a,@b:", "@"]), localParts,
              domains, st.sampled_from(_PARAM_PIECES)),
    st.builds(lambda local, params: f"<{local}>{params}", localParts, st.sampled_from(_PARAM_PIECES)),
    st.text(max_size=80),
)


def formatPath(address: Address, params: dict[str, str | None]) -> str:
    words = "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params.items())
    return f"<{address}>{words}"


class PathPropertyTests(SynchronousTestCase):
    @bounded(400)
    @given(pathArguments, st.booleans(), st.booleans(), st.sampled_from([None, "mx.test"]))
    # 181 characters, but 265 octets with A-labels:
    @example(f"<{'x' * 60}@{'.'.join(['日本語' * 6] * 6)}.test>", False, True, None)
    def test_parsePathGivesAnAddressOrARefusal(self, argument: str, allowNull: bool, utf8: bool,
                                               postmaster: str | None) -> None:
        """Never anything but a result or :class:`SMTPReplyError`; what is accepted has
        a clean domain, fits RFC 5321's 256 octets, and parses again to itself."""
        try:
            address, params = parsePath(argument, allowNull=allowNull, utf8=utf8, postmasterDomain=postmaster)
        except SMTPReplyError:
            return
        self.assertIsInstance(address, Address)
        self.assertFalse(any(c in address.domain for c in "\r\n\x00 "), address)
        self.assertFalse(any(c in address.local for c in "\r\n\x00"), address)
        self.assertTrue(address.domain.isascii() and address.domain == address.domain.lower(), address)
        text = formatPath(address, params)
        target(float(len(text.encode())), label="octets of the accepted path")
        self.assertLessEqual(len(f"<{address}>".encode()), MAX_PATH, text)
        self.assertEqual(parsePath(text, allowNull=allowNull, utf8=utf8), (address, params))


# -- .qmail and aliases -----------------------------------------------------------------

_QMAIL_PIECES = ["|", "&", "/", "./", "#", "+list", "+", " ", "\t", "\n", "\r", "\x00", "a", "@", "example.test",
                 "Maildir/", "mbox", "<", ">", ",", '"', "\\", "é", "\u2028", "\x0b", "\x1c"]
qmailTexts = st.lists(st.sampled_from(_QMAIL_PIECES) | st.text(max_size=3), max_size=30).map("".join)

_ALIAS_PIECES = ["name", "Staff", ":", ": ", ",", " ", "\t", "\n", "\r\n", "\r", "#", '"', "|", "/", "/x/",
                 ":include:", ":include:/a", ":include:/b", "a@b.test", "bob", "\x00", "<", "\\", "\u2028", "\x0c"]
aliasTexts = st.lists(st.sampled_from(_ALIAS_PIECES) | st.text(max_size=3), max_size=30).map("".join)

#: Control characters an address to forward to must never hold: it becomes an SMTP
#: RCPT argument and an envelope field (CR, LF and NUL inject; the rest is no address).
_CONTROLS = {chr(c) for c in range(32)} | {"\x7f"}


def instructionText(instruction: object) -> str:
    for kind, name in ((Program, "command"), (Mbox, "path"), (Maildir, "path"), (Forward, "address")):
        if isinstance(instruction, kind):
            return str(getattr(instruction, name))
    raise AssertionError(f"not an instruction: {instruction!r}")


class DotQmailPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(qmailTexts, st.booleans())
    def test_parseInstructionsGivesInstructionsOrADeliveryError(self, text: str, forwardOnly: bool) -> None:
        """Bounded output: at most one instruction a line, each from its line; a
        forward address holds no control character."""
        try:
            parsed = parseInstructions(text, "~/.qmail", forwardOnly)
        except DeliveryError:
            return
        self.assertIsInstance(parsed, Instructions)
        self.assertLessEqual(len(parsed.lines), text.count("\n") + 1)
        lines = text.split("\n")
        for instruction in parsed.lines:
            value = instructionText(instruction)
            self.assertTrue(any(value in line for line in lines), instruction)
            if isinstance(instruction, Forward):
                self.assertFalse(_CONTROLS & set(instruction.address), instruction)


@st.composite
def includeChains(draw: st.DrawFn) -> dict[str, str]:
    """Files /f0, /f1, ... each naming the next a few times, and a target or two: the
    shape that multiplies targets (or empty reads) level by level."""
    levels = draw(st.integers(1, 9))
    files = {}
    for level in range(levels):
        fanOut = draw(st.integers(1, 6))
        names = [f":include:/f{level + 1}"] * fanOut if level + 1 < levels else []
        files[f"/f{level}"] = ", ".join(names + draw(st.lists(st.sampled_from(["a@b.test", "bob", "|x"]), max_size=2)))
    return files


class AliasesPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(aliasTexts | st.just("list: :include:/f0\n"),
           st.dictionaries(st.sampled_from(["/a", "/b"]), aliasTexts, max_size=2) | includeChains())
    def test_parseAliasesGivesAliasesOrAnAliasesError(self, text: str, includes: dict[str, str]) -> None:
        """Bounded output however the included files name each other; a forward
        address holds no control character."""

        reads = []

        def readInclude(path: str) -> str:
            reads.append(path)
            if len(reads) > 20_000:
                raise AssertionError("more than 20,000 :include: reads for one file")
            if path not in includes:
                raise FileNotFoundError(2, "No such file", path)
            return includes[path]

        try:
            aliases = parseAliases(text, "aliases", "mx.test", readInclude)
        except AliasesError:
            return
        total = sum(len(targets) for targets in aliases.values())
        self.assertLessEqual(total, 10_000 * max(len(aliases), 1), "the targets multiplied through :include:")
        for name, targets in aliases.items():
            self.assertEqual(name, name.lower())
            self.assertTrue(name and not any(c in name for c in " \t"), name)
            for instruction in targets:
                instructionText(instruction)
                if isinstance(instruction, Forward):
                    self.assertFalse(_CONTROLS & set(instruction.address), instruction)


# -- envelopes and recovery ----------------------------------------------------------------

_JSON_PIECES = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"version", b"2", b"1", b"1.0", b"true", b"null",
                b"sender", b"recipients", b"address", b"state", b"pending", b"delivered", b"params", b"mailParams",
                b"arrival", b"attempts", b"nextAttempt", b"-1", b"1e999", b"NaN", b"Infinity", b"\\u0000",
                b"\\ud800", b"lastReply", b"lastStatus", b"lastFromPeer", b"remoteMTA", b"\xff", b" ", b"9" * 5000]
GOOD = Envelope("a@b.test", (Recipient("x@localhost", {"NOTIFY": "NEVER"}, lastReply="451 4.4.1 later"),),
                {"SIZE": "10"}, arrival=1.5, attempts=2)


@st.composite
def envelopeBytes(draw: st.DrawFn) -> bytes:
    """Mostly mutations of a real envelope line, sometimes JSON-ish noise."""
    if draw(st.booleans()):
        return b"".join(draw(st.lists(st.sampled_from(_JSON_PIECES) | st.binary(max_size=3), max_size=40)))
    data = bytearray(GOOD.toBytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(_JSON_PIECES))
        else:
            del data[at:at + draw(st.integers(1, 12))]
    return bytes(data)


class EnvelopePropertyTests(SynchronousTestCase):
    @bounded(400)
    @given(envelopeBytes())
    def test_anyBytesGiveAnEnvelopeOrAFormatError(self, raw: bytes) -> None:
        """And an envelope read back is written again as itself."""
        try:
            envelope = Envelope.fromBytes(raw)
        except EnvelopeFormatError:
            return
        self.assertIsInstance(envelope, Envelope)
        self.assertEqual(Envelope.fromBytes(envelope.toBytes()), envelope)
        self.assertTrue(envelope.recipients)

    @bounded(25)
    @given(st.lists(envelopeBytes() | st.just(GOOD.toBytes()), min_size=1, max_size=6), st.booleans())
    def test_recoverySetsAsideCorruptFilesAndKeepsTheRest(self, lines: list[bytes], separate: bool) -> None:
        """Every queue file whose envelope reads is recovered, every other one is set
        aside in corrupt/, and nothing one file holds stops the others."""
        queue = MaildirQueue(self.mktemp(), runNow, spares=0)
        self.addCleanup(queue.close)
        expected, corrupt = {}, set()
        for n, line in enumerate(lines):
            queueId = f"Q{n:03d}"
            with open(os.path.join(queue.activeDir, queueId), "wb") as f:
                f.write((b"" if separate else line.replace(b"\n", b" ") + b"\n") + b"Subject: x\r\n\r\nbody\r\n")
            if separate:
                with open(os.path.join(queue.activeDir, queueId + ".env"), "wb") as f:
                    f.write(line)
            try:
                expected[queueId] = Envelope.fromBytes(line if separate else line.replace(b"\n", b" "))
            except EnvelopeFormatError:
                corrupt.add(queueId)
        recovered = dict(self.successResultOf(queue.recover()))
        self.assertEqual(recovered, expected)
        inCorrupt = {name.removesuffix(".env") for name in os.listdir(queue.corruptDir)}
        self.assertEqual(inCorrupt, corrupt)
        self.assertEqual(set(os.listdir(queue.activeDir)) & {f"{c}" for c in corrupt}, set())

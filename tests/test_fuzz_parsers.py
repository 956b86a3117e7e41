"""Property tests of the parsers that read what others wrote: SMTP paths, ``.qmail``
files, aliases files and queue envelopes.  Each either gives its result or raises its
one documented error, whatever the input; and what it accepts is sane."""

from __future__ import annotations

from hypothesis import example, given, target
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsmail.envelope import Envelope, Recipient
from tests.fuzzoracles import (
    checkAliases,
    checkDsnParameter,
    checkEnvelope,
    checkInstructions,
    checkPath,
    checkRecovery,
    checkShown,
)
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



class PathPropertyTests(SynchronousTestCase):
    @bounded(400)
    @given(pathArguments, st.booleans(), st.booleans(), st.sampled_from([None, "mx.test"]))
    # 181 characters, but 265 octets with A-labels:
    @example(f"<{'x' * 60}@{'.'.join(['日本語' * 6] * 6)}.test>", False, True, None)
    def test_parsePathGivesAnAddressOrARefusal(self, argument: str, allowNull: bool, utf8: bool,
                                               postmaster: str | None) -> None:
        """Never anything but a result or :class:`SMTPReplyError`; what is accepted has
        a clean domain, fits RFC 5321's 256 octets, and parses again to itself."""
        octets = checkPath(argument, allowNull, utf8, postmaster)
        if octets is not None:
            target(float(octets), label="octets of the accepted path")


# -- .qmail and aliases -----------------------------------------------------------------

_QMAIL_PIECES = ["|", "&", "/", "./", "#", "+list", "+", " ", "\t", "\n", "\r", "\x00", "a", "@", "example.test",
                 "Maildir/", "mbox", "<", ">", ",", '"', "\\", "é", "\u2028", "\x0b", "\x1c"]
qmailTexts = st.lists(st.sampled_from(_QMAIL_PIECES) | st.text(max_size=3), max_size=30).map("".join)

_ALIAS_PIECES = ["name", "Staff", ":", ": ", ",", " ", "\t", "\n", "\r\n", "\r", "#", '"', "|", "/", "/x/",
                 ":include:", ":include:/a", ":include:/b", "a@b.test", "bob", "\x00", "<", "\\", "\u2028", "\x0c"]
aliasTexts = st.lists(st.sampled_from(_ALIAS_PIECES) | st.text(max_size=3), max_size=30).map("".join)



class DotQmailPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(qmailTexts, st.booleans())
    def test_parseInstructionsGivesInstructionsOrADeliveryError(self, text: str, forwardOnly: bool) -> None:
        """Bounded output: at most one instruction a line, each from its line; a
        forward address holds no control character."""
        checkInstructions(text, forwardOnly)


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
        checkAliases(text, includes)


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
        checkEnvelope(raw)

    @bounded(25)
    @given(st.lists(envelopeBytes() | st.just(GOOD.toBytes()), min_size=1, max_size=6), st.booleans())
    def test_recoverySetsAsideCorruptFilesAndKeepsTheRest(self, lines: list[bytes], separate: bool) -> None:
        """Every queue file whose envelope reads is recovered, every other one is set
        aside in corrupt/, and nothing one file holds stops the others."""
        checkRecovery(self.mktemp(), lines, separate)


# -- DSN parameters and what the operator log shows ----------------------------------------

_XTEXT_PIECES = ["a", "Z", "+", "+0D", "+0A", "+00", "+20", "+2B", "+7F", "+C3", "+a0", "=", "\\", "\\x{", "}", "0A",
                 "2028", "D800", "110000", "F6", "\\x{F6}", "\\x{2028}", "ü", "\u2028", "\x85", " ", ";", "rfc822;",
                 "utf-8;"]
xtexts = st.lists(st.sampled_from(_XTEXT_PIECES) | st.text(max_size=2), max_size=12).map("".join)


class DsnParameterPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(xtexts, st.booleans())
    def test_envidAndOrcptDecodeToPrintableTextOrAreRefused(self, value: str, utf8: bool) -> None:
        """Whatever a client sends, what ENVID and ORCPT stand for is printable text,
        or MAIL and RCPT refuse it with 501 5.5.4 (security review L-1)."""
        checkDsnParameter(value, utf8)

    @bounded(300)
    @given(st.text(max_size=40))
    def test_shownTextIsOneLineOfPrintableText(self, text: str) -> None:
        """An operator-log line or a command's output shows any text as printable
        characters only, one line, and escaping twice changes nothing (L-7)."""
        checkShown(text)

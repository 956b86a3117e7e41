"""The oracles: one function per fuzzed part, raising AssertionError when what the part
did is wrong.  The property tests (``tests/test_fuzz_*.py``) and the fuzz targets
(``fuzz/targets.py``) both call them, so a long run checks exactly what the suite
checks.  Failures logged through Twisted's logger are the caller's to watch (trial's
``flushLoggedErrors``, or :func:`watchLoggedFailures`)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.logger import globalLogPublisher

from jsmail.address import MAX_PATH, Address, normaliseDomain, parsePath
from jsmail.auth import AnyOfCheckers, MailRealm
from jsmail.envelope import Envelope, EnvelopeFormatError
from jsmail.error import DeliveryError, SMTPReplyError
from jsmail.headers import fields, fromDomain, splitHeader
from jsmail.local.aliases import AliasesError, parseAliases
from jsmail.local.dotqmail import Forward, Instructions, Maildir, Mbox, Program, parseInstructions
from jsmail.maillog import shown
from jsmail.policy.authresults import claimsAuthservId
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue
from jsmail.smtp.params import checkMailParams, checkRcptParams, decodeUtf8Address, decodeXtext
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, runNow
from tests.fuzzsupport import (
    Script,
    checkReplies,
    decodeChunks,
    decodeData,
    pieces,
    readChunks,
    readData,
    sameReplies,
    storedMessages,
    withoutReceived,
)

Stored = list[tuple[object, bytes]]


def watchLoggedFailures() -> list[Any]:
    """Start collecting events that carry a failure (``_log.failure``, ``log.err``);
    the list fills as they come."""
    found: list[Any] = []
    globalLogPublisher.addObserver(lambda event: found.append(event) if "log_failure" in event else None)
    return found


# -- SMTP sessions ----------------------------------------------------------------------------


def portal() -> Portal:
    users = InMemoryUsernamePasswordDatabaseDontUse(u=b"p")
    return Portal(MailRealm(["localhost"]), [AnyOfCheckers([users])])


def converse(wire: bytes, sizes: Sequence[int] | None, withAuth: bool = False,
             **settings: object) -> tuple[bytes, Stored]:
    """Run one session over ``wire`` (in pieces of ``sizes``, or whole): all the
    server's output, and the messages it stored.  Replies held back by a delay (a
    failed AUTH) are let out by advancing the clock at the end."""
    d = Dialog(ServerSettings(hostname="mx.test", **settings), MemoryQueue(),  # type: ignore[arg-type]
               portal=portal() if withAuth else None, implicitTLS=withAuth)
    output = d.read()
    for piece in pieces(wire, sizes) if sizes is not None else [wire]:
        output += d.send(piece)
    for _ in range(4):
        d.clock.advance(31)
        output += d.read()
    assert isinstance(d.sink, MemoryQueue)
    return output, storedMessages(d.sink.messages)


def checkSession(wire: bytes, sizes: Sequence[int], withAuth: bool = False,
                 **settings: object) -> tuple[bytes, Stored]:
    """Well-formed replies, and the same replies and stored messages whether ``wire``
    comes whole or in pieces; returns the whole run's output and messages."""
    whole, stored = converse(wire, None, withAuth, **settings)
    split, storedSplit = converse(wire, sizes, withAuth, **settings)
    checkReplies(whole)
    checkReplies(split)
    assert sameReplies(split) == sameReplies(whole), f"the replies depend on the read boundaries:\n{whole!r}\n{split!r}"
    assert storedSplit == stored, "the stored messages depend on the read boundaries"
    return whole, stored


def checkScript(script: Script, sizes: Sequence[int]) -> None:
    """:func:`checkSession`, and the messages stored are exactly those the reference
    decoders accept, with their content."""
    whole, stored = checkSession(script.wire(), sizes, normaliseLineEndings=script.normalise,
                                 allowNul=script.allowNul)
    got = [(key, withoutReceived(data)) for key, data in stored]
    assert got == script.expected(), f"stored {got!r}, the reference decoder read {script.expected()!r}"
    assert whole.endswith(b"221 2.0.0 Bye\r\n"), whole[-200:]


# -- parsers --------------------------------------------------------------------------------------

#: Control characters an address to forward to must never hold: it becomes an SMTP
#: RCPT argument and an envelope field (CR, LF and NUL inject; the rest is no address).
CONTROLS = {chr(c) for c in range(32)} | {"\x7f"}


def checkPath(argument: str, allowNull: bool, utf8: bool, postmaster: str | None) -> int | None:
    """A result or :class:`SMTPReplyError`; what is accepted has a clean domain, fits
    RFC 5321's 256 octets and parses again to itself.  Returns the accepted path's
    octets (None when refused)."""
    try:
        address, params = parsePath(argument, allowNull=allowNull, utf8=utf8, postmasterDomain=postmaster)
    except SMTPReplyError:
        return None
    assert isinstance(address, Address)
    if address.isNull:
        assert allowNull and not address.local and not address.domain, address
    else:
        assert address.domain.isascii() and normaliseDomain(address.domain) == address.domain, address
    assert not any(c in address.domain for c in "\r\n\x00 "), address
    assert not any(c in address.local for c in "\r\n\x00"), address
    words = "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params.items())
    text = f"<{address}>{words}"
    octets = len(f"<{address}>".encode())
    assert octets <= MAX_PATH, f"{octets} octets: {text!r}"
    again = parsePath(text, allowNull=allowNull, utf8=utf8)
    assert again == (address, params), f"{argument!r} gave {text!r}, which gives {again!r}"
    return octets


def checkDsnParameter(value: str, utf8: bool) -> None:
    """ENVID and ORCPT decode to printable text, or MAIL and RCPT refuse them with
    501 5.5.4; nothing else comes out (security review L-1)."""
    for decoded in (decodeXtext(value), decodeUtf8Address(value, utf8)):
        assert decoded is None or (decoded.isprintable() and decoded), decoded
    for check, arguments in ((checkMailParams, ({"ENVID": value}, True, 1000, False)),
                             (checkRcptParams, ({"ORCPT": value}, utf8))):
        try:
            check(*arguments)  # type: ignore[operator]
        except SMTPReplyError as e:
            assert (e.reply.code, e.reply.enhanced) == (501, "5.5.4"), e.reply


def checkShown(text: str) -> None:
    """What the operator log and the commands show of any text is one line of printable
    characters, unchanged when it was printable, and escaping twice changes nothing."""
    once = shown(text)
    assert once.isprintable() and len(once.splitlines()) == (1 if once else 0), once
    assert shown(once) == once, once
    assert once == text or not text.isprintable(), (text, once)


def instructionText(instruction: object) -> str:
    for kind, name in ((Program, "command"), (Mbox, "path"), (Maildir, "path"), (Forward, "address")):
        if isinstance(instruction, kind):
            return str(getattr(instruction, name))
    raise AssertionError(f"not an instruction: {instruction!r}")


def checkInstructions(text: str, forwardOnly: bool) -> None:
    """Instructions or :class:`DeliveryError`; at most one instruction a line, each
    from its line; a forward address holds no control character."""
    try:
        parsed = parseInstructions(text, "~/.qmail", forwardOnly)
    except DeliveryError:
        return
    assert isinstance(parsed, Instructions)
    assert len(parsed.lines) <= text.count("\n") + 1
    lines = text.split("\n")
    for instruction in parsed.lines:
        value = instructionText(instruction)
        assert any(value in line for line in lines), instruction
        if isinstance(instruction, Forward):
            assert not CONTROLS & set(instruction.address), instruction


def checkAliases(text: str, includes: dict[str, str]) -> None:
    """Aliases or :class:`AliasesError`, with bounded output and reads however the
    included files name each other; a forward address holds no control character."""
    reads = []

    def readInclude(path: str) -> str:
        reads.append(path)
        assert len(reads) <= 20_000, "more than 20,000 :include: reads for one file"
        if path not in includes:
            raise FileNotFoundError(2, "No such file", path)
        return includes[path]

    try:
        aliases = parseAliases(text, "aliases", "mx.test", readInclude)
    except AliasesError:
        return
    total = sum(len(targets) for targets in aliases.values())
    assert total <= 10_000 * max(len(aliases), 1), "the targets multiplied through :include:"
    for name, targets in aliases.items():
        assert name == name.lower() and name and not any(c in name for c in " \t"), name
        for instruction in targets:
            instructionText(instruction)
            if isinstance(instruction, Forward):
                assert not CONTROLS & set(instruction.address), instruction


def checkEnvelope(raw: bytes) -> Envelope | None:
    """An Envelope or :class:`EnvelopeFormatError`; one read back is written again as
    itself."""
    try:
        envelope = Envelope.fromBytes(raw)
    except EnvelopeFormatError:
        return None
    assert isinstance(envelope, Envelope) and envelope.recipients
    assert Envelope.fromBytes(envelope.toBytes()) == envelope, envelope
    return envelope


def checkRecovery(directory: str, lines: Sequence[bytes], separate: bool) -> None:
    """A queue of files with these envelope lines (in ``.env`` files, or as each
    message's first line): recovery keeps every one that reads and sets aside the
    others in corrupt/."""
    queue = MaildirQueue(directory, runNow, spares=0)
    try:
        expected, corrupt = {}, set()
        for n, line in enumerate(lines):
            queueId = f"Q{n:03d}"
            line = line if separate else line.replace(b"\n", b" ")
            with open(os.path.join(queue.activeDir, queueId), "wb") as f:
                f.write((b"" if separate else line + b"\n") + b"Subject: x\r\n\r\nbody\r\n")
            if separate:
                with open(os.path.join(queue.activeDir, queueId + ".env"), "wb") as f:
                    f.write(line)
            try:
                expected[queueId] = Envelope.fromBytes(line)
            except EnvelopeFormatError:
                corrupt.add(queueId)
        recovered: list[tuple[str, Envelope]] = []
        queue.recover().addCallback(recovered.extend)
        assert dict(recovered) == expected, (recovered, expected)
        assert {name.removesuffix(".env") for name in os.listdir(queue.corruptDir)} == corrupt
        assert not set(os.listdir(queue.activeDir)) & corrupt
    finally:
        queue.close()


# -- content ----------------------------------------------------------------------------------


def checkDataReader(stream: bytes, sizes: Sequence[int], normalise: bool) -> None:
    """No smuggling: the DATA reader ends the message where the reference does (CR LF
    . CR LF after a real CR LF) and nowhere else, with the same content, problems and
    rest, whole or in pieces."""
    if decodeData(stream, normalise).rest is None:
        assert readData(stream, [len(stream) or 1], normalise).rest is None, "the message ended too soon"
        assert readData(stream, sizes, normalise).rest is None, "the message ended too soon, in pieces"
        stream += b"\r\n.\r\n"  # the reader holds back what may start a terminator: end it to compare
    expected = decodeData(stream, normalise)
    whole = readData(stream, [len(stream) or 1], normalise)
    assert whole == expected, f"whole: {whole!r}\nreference: {expected!r}"
    split = readData(stream, sizes, normalise)
    assert split == expected, f"in pieces: {split!r}\nreference: {expected!r}"


def checkChunkReaders(chunks: Sequence[bytes], sizes: Sequence[int], normalise: bool) -> None:
    """BDAT: each chunk is exactly its octets; the content is the reference's."""
    expected = decodeChunks(chunks, normalise)
    assert readChunks(chunks, sizes, normalise) == expected
    assert readChunks([b"".join(chunks)], [4096], normalise) == expected


def checkSplitHeader(message: bytes, sizes: Sequence[int], limit: int) -> None:
    """splitHeader gives the same header section, end or cut, and rest however the
    message arrives; and fields are the header section in order."""
    whole = splitHeader(iter([message]) if message else iter([]), limit)
    chunks = iter(pieces(message, sizes))
    split = splitHeader(chunks, limit)
    assert (split.header, split.rest + b"".join(chunks), split.whole) == tuple(whole), (split, whole)
    assert split.bodyOffset == whole.bodyOffset
    assert message.startswith(whole.header + whole.rest)
    assert not (whole.whole and whole.rest) or whole.rest.startswith((b"\r\n", b"\n")), whole
    header = splitHeader(iter([message]), len(message)).header
    position = 0
    for field in fields(header):
        found = header.find(field, position)
        assert field and found >= position, (field, header)
        assert found == 0 or header[found - 1:found] == b"\n", (field, header)
        position = found + len(field)


def withRecursionLimit(headroom: int, call: Callable[[], Any]) -> Any:
    """``call()`` with only ``headroom`` frames left above this one: code that
    recurses per nesting level runs out of them."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back  # type: ignore[assignment]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + headroom)
    try:
        return call()
    finally:
        sys.setrecursionlimit(old)


def checkFromDomain(message: bytes) -> None:
    """fromDomain gives a usable domain or None, and never recurses (it runs with 60
    frames to spare)."""
    domain = withRecursionLimit(60, lambda: fromDomain(message))
    assert domain is None or normaliseDomain(domain) == domain, domain


def checkAuthResults(raw: bytes) -> None:
    """claimsAuthservId answers True or False for any field."""
    assert claimsAuthservId(b"Authentication-Results:" + raw, "mx.test") in (True, False)
    assert claimsAuthservId(raw, "mx.test") in (True, False)

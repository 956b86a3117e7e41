"""One test for each bug the property tests and the fuzz runs (``fuzz/``) found, named
after what was found; the inputs are the shrunk ones (``fuzz/crashes/`` keeps the raw
reproducers of the fuzz runs)."""

from __future__ import annotations

import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from jsmail.address import NULL, parsePath
from jsmail.envelope import Envelope, EnvelopeFormatError, Recipient
from jsmail.error import DeliveryError, SMTPReplyError
from jsmail.headers import MAX_HEADER, splitHeader
from jsmail.local.aliases import MAX_FILE, AliasesError, AliasesFile, parseAliases
from jsmail.local.dotqmail import Forward, parseInstructions
from jsmail.queue.funnel import Funnel, Owed
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, runNow
from tests.fuzzoracles import checkPath, converse
from tests.fuzzsupport import pieces


class SaslSplitTests(SynchronousTestCase):
    def test_saslResponseOverTheLineLimitIsRefusedAlikeWholeOrSplit(self) -> None:
        """A PLAIN response of 830 octets was read as a response when it came in one
        read (535), but refused as a long line when it came in two, leaving the
        exchange open so that the next command (NOOP) was taken as the response (501).
        Both ways it now ends the exchange with RFC 4954's 500 5.5.6."""
        response = base64.b64encode(b"\0u\0" + b"p" * 600)
        wire = b"EHLO client.test\r\nAUTH PLAIN\r\n" + response + b"\r\nNOOP\r\n"
        whole, _ = converse(wire, None, withAuth=True)
        split, _ = converse(wire, [520, 1000], withAuth=True)
        expected = (b"334 \r\n500 5.5.6 Authentication Exchange line is too long\r\n"
                    b"250 2.0.0 OK\r\n")
        self.assertTrue(whole.endswith(expected), whole)
        self.assertEqual(split, whole)
        self.assertEqual(len(pieces(wire, [520, 1000])), 2)


class PathLengthTests(SynchronousTestCase):
    def test_pathLongerThan256OctetsAsALabelsIsRefused(self) -> None:
        """A path of 181 characters with six U-labels was accepted, but its A-label form
        (as jsmail stores and sends it) has 265 octets, over RFC 5321's 256, so it did
        not parse again; and the limit was counted in characters, not octets."""
        domain = ".".join(["日本語" * 6] * 6) + ".test"
        error = self.assertRaises(SMTPReplyError, parsePath, f"<{'x' * 60}@{domain}>", allowNull=False, utf8=True)
        self.assertEqual(str(error.reply), "501 5.1.3 Path longer than 256 octets")
        utf8Local = "ü" * 32  # 64 octets in 32 characters: the path has 235 characters, 267 octets
        path = f"<{utf8Local}@{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 8}>"
        error = self.assertRaises(SMTPReplyError, parsePath, path, allowNull=False, utf8=True)
        self.assertEqual(str(error.reply), "501 5.1.3 Path longer than 256 octets")
        address, _ = parsePath(f"<{'x' * 60}@{'.'.join(['日本語' * 6] * 5)}.test>", allowNull=False, utf8=True)
        self.assertEqual(len(f"<{address}>".encode()), 232)


class NullPathTests(SynchronousTestCase):
    """The three path crashes of the first fuzz run (``fuzz/crashes/path-crash-*``)
    were all the null reverse-path ``<>``, which the parser took as it should: the
    oracle had asked every accepted path for a domain, and the null path has none (it
    now checks that a null path comes only where one is allowed).  Replayed through a
    session, the same inputs showed a parser fault: a recipient it refused got the
    sender's enhanced code, 5.1.7, where RFC 3463 has 5.1.3."""

    def test_nullReversePathWithASpaceBeforeOrAfterIsTheNullPath(self) -> None:
        for argument in (" <>", "<> ", "  <>  "):
            self.assertEqual(parsePath(argument, allowNull=True, utf8=True), (NULL, {}))
            self.assertEqual(checkPath(argument, True, True, None), 2)  # "<>": two octets
            self.assertRaises(SMTPReplyError, parsePath, argument, allowNull=False, utf8=True)
        d = Dialog(ServerSettings(hostname="mx.test"))
        d.send(b"EHLO client.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM: <> \r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_nullPathAsRecipientGetsTheRecipientsCode513(self) -> None:
        d = Dialog(ServerSettings(hostname="mx.test"))
        d.send(b"EHLO client.test\r\nMAIL FROM:<>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<> \r\n"), b"501 5.1.3 The null path <> is not a valid recipient\r\n")
        self.assertEqual(d.send(b"RCPT TO:<a b@x.test>\r\n"), b"501 5.1.3 Bad local part 'a b'\r\n")
        self.assertEqual(d.send(b"RSET\r\nMAIL FROM:<a b@x.test>\r\n"),
                         b"250 2.0.0 Reset OK\r\n501 5.1.7 Bad local part 'a b'\r\n")

    def test_nullReversePathWithAMalformedSizeIsRefusedForTheSize(self) -> None:
        """``<> SIZE=06s<at> zzzz``: the parameters of a null path are read as any
        path's; the SIZE that is not a number gets 501 5.5.4, not a 250 or a 451."""
        address, params = parsePath("<> SIZE=06s<at> zzzz", allowNull=True, utf8=False)
        self.assertEqual((address, params), (NULL, {"SIZE": "06s<at>", "ZZZZ": None}))
        self.assertEqual(checkPath("<> SIZE=06s<at> zzzz", True, False, None), 2)
        d = Dialog(ServerSettings(hostname="mx.test"))
        d.send(b"EHLO client.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<> SIZE=06s<at> zzzz\r\n"),
                         b"501 5.5.4 SIZE needs a number of octets\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<> SIZE=06 zzzz\r\n"), b"555 5.5.4 Unsupported parameter ZZZZ\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<> SIZE=06\r\n"), b"250 2.1.0 Sender OK\r\n")


class ForwardAddressTests(SynchronousTestCase):
    def test_forwardAddressWithAControlCharacterIsRefused(self) -> None:
        """A .qmail line of one CR (the blank last line of a file saved with CR LF line
        ends) was a forward to the address "\\r", and "joe@example.org\\r" one to an
        address ending in CR, which would go out in RCPT TO as a bare CR; in an aliases
        file a NUL made an address too.  Both are refused now, as other non-addresses are."""
        for line in ("\r", "joe@example.org\r", "&a\x00b@example.org", "a\x1b@example.org", "a\x7f@example.org"):
            error = self.assertRaises(DeliveryError, parseInstructions, f"./Maildir/\n{line}\n")
            self.assertEqual(str(error.reply), "550 5.1.3 Unable to forward: not a bare address")
        for target in ("\x00", "joe\x00@example.org", "a\tb@example.org"):
            self.assertRaises(AliasesError, parseAliases, f"staff: {target}\n", "aliases", "mx.test")
        self.assertEqual(parseInstructions("joe@example.org\n").lines, (Forward("joe@example.org"),))


class AliasesExpansionTests(SynchronousTestCase):
    def test_includeFilesThatMultiplyAreReadAndExpandedOnceEach(self) -> None:
        """Nine files, the first eight each naming the next six times, made one alias of
        1.7 million targets after as many reads (the property test's guard stopped it at
        20,000 :include: reads): such a fan-out never reaches the nesting limit of 10.
        Each file is now read once and expanded once per alias, so the chain costs nine
        reads and gives the one target; the same target twice is delivered once."""
        files = {f"/f{n}": ", ".join([f":include:/f{n + 1}"] * 6) for n in range(8)}
        files["/f8"] = "a@b.test, a@b.test"
        reads = []

        def readInclude(path: str) -> str:
            reads.append(path)
            return files[path]

        aliases = parseAliases("list: :include:/f0\nother: :include:/f3, c@d.test\n", "aliases", "mx.test",
                               readInclude)
        self.assertEqual(aliases, {"list": (Forward("a@b.test"),), "other": (Forward("a@b.test"), Forward("c@d.test"))})
        self.assertEqual(sorted(reads), sorted(files))
        files["/f0"] = "list, :include:/f0"  # a file naming itself ends, it does not loop
        self.assertEqual(parseAliases("list: :include:/f0\n", "aliases", "mx.test", readInclude)["list"],
                         (Forward("list@mx.test"),))

    def test_aliasOfMoreThan10000TargetsIsRefused(self) -> None:
        files = {"/f0": ", ".join(f"u{n}@b.test" for n in range(10_000))}
        error = self.assertRaises(AliasesError, parseAliases, "list: :include:/f0\n", "aliases", "mx.test",
                                  files.__getitem__)
        self.assertEqual(str(error), "aliases:1: alias 'list': more than 10000 targets and :include: files")
        files["/f0"] = ", ".join(f"u{n}@b.test" for n in range(5000))
        self.assertEqual(len(parseAliases("list: :include:/f0\n", "aliases", "mx.test", files.__getitem__)["list"]),
                         5000)

    def test_includedFileOfGigabytesIsRefusedUnread(self) -> None:
        """An :include: naming a huge file (or /dev/zero) was read whole into memory."""
        directory = self.mktemp()
        os.makedirs(directory)
        aliases = os.path.join(directory, "aliases")
        with open(aliases, "w") as f:
            f.write("list: :include:/dev/zero\n")
        error = self.assertRaises(DeliveryError, AliasesFile(aliases, "mx.test").lookup, "list", "mx.test", "-")
        self.assertEqual(error.detail, f"{aliases}:1: alias 'list': /dev/zero is larger than {MAX_FILE} octets")
        with open(aliases, "w") as f:
            f.write("list: a@b.test\n" + "#" * MAX_FILE)
        error = self.assertRaises(DeliveryError, AliasesFile(aliases, "mx.test").lookup, "list", "mx.test", "-")
        self.assertEqual(error.permanent, False)
        self.assertIn("is larger than", error.detail)


class HeaderEndAtTheLimitTests(SynchronousTestCase):
    def test_emptyLineWhoseCrEndsAPieceAtTheLimitStillEndsTheHeader(self) -> None:
        """A header section of exactly the limit whose empty line's CR came as the last
        octet of a piece was taken as cut at the limit, not whole, so a submission
        got no Date or Message-ID; in one piece it was whole.  Found by the
        piece-independence property of splitHeader."""
        message = b"\x00\x00\x00\r\n\r\nbody\r\n"
        self.assertEqual(tuple(splitHeader(iter([message]), 5)), (b"\x00\x00\x00\r\n", b"\r\nbody\r\n", True))
        chunks = iter([message[:6], message[6:]])
        self.assertEqual(tuple(splitHeader(chunks, 5)), (b"\x00\x00\x00\r\n", b"\r\nbody\r\n", True))
        queue = MemoryQueue()
        funnel = Funnel(queue, lambda queueId, envelope: None)
        subject = b"Subject: " + b"s" * (MAX_HEADER - 11) + b"\r\n"
        message = funnel.newMessage(Envelope("a@example.org", (Recipient("b@example.net"),)),
                                    Owed(complete=True, hostname="mx.test"))
        for piece in (subject + b"\r", b"\nbody\r\n"):
            message.write(piece)
        queueId = self.successResultOf(message.commit())
        data = queue.messages[queueId][1]
        added = b"Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <"
        self.assertTrue(data.startswith(subject + added), data[len(subject):])
        self.assertTrue(data.endswith(b">\r\n\r\nbody\r\n"))


class EnvelopeVersion1Tests(SynchronousTestCase):
    def test_version1RecipientWithANonTextReplyIsAFormatErrorNotATypeError(self) -> None:
        """A version-1 envelope whose recipient's lastReply was not text raised a
        TypeError from the conversion to version 2 (which ran before the type checks),
        and MaildirQueue.recover, which sets aside only unreadable files, failed as a
        whole: no message was recovered.  fuzz/crashes/envelope-crash-9a1145a6... is
        the fuzzer's input."""
        line = (b'{"version":1,"sender":"a@b.test","recipients":[{"address":"x@localhost","params":{},'
                b'"state":"pending","lastReply":false,"remoteMTA":null}],"mailParams":{},"arrival":1.5,'
                b'"clientAddress":"","helo":"P","attempts":0,"nextAttempt":0}')
        self.assertRaises(EnvelopeFormatError, Envelope.fromBytes, line)
        queue = MaildirQueue(self.mktemp(), runNow, spares=0)
        self.addCleanup(queue.close)
        good = Envelope("a@b.test", (Recipient("x@localhost"),))
        for queueId, envelopeLine in (("Q1", line), ("Q2", good.toBytes())):
            with open(os.path.join(queue.activeDir, queueId), "wb") as f:
                f.write(envelopeLine + b"\nSubject: x\r\n\r\nx\r\n")
        self.assertEqual(self.successResultOf(queue.recover()), [("Q2", good)])
        self.assertEqual(os.listdir(queue.corruptDir), ["Q1"])


class EnvelopeSurrogateTests(SynchronousTestCase):
    def test_envelopeWithALoneSurrogateEscapeIsAFormatError(self) -> None:
        """JSON may escape half of a UTF-16 pair; such a string cannot be written back
        as UTF-8, so it must be refused when read, not fail when the envelope is next
        saved."""
        good = Envelope("a@b.test", (Recipient("x@localhost"),)).toBytes()
        bad = good.replace(b'"a@b.test"', b'"a\\ud800@b.test"')
        with self.assertRaises(EnvelopeFormatError) as caught:
            Envelope.fromBytes(bad)
        self.assertIn("lone surrogate", str(caught.exception))
        paired = good.replace(b'"a@b.test"', b'"a\\ud83d\\ude00@b.test"')
        self.assertEqual(Envelope.fromBytes(Envelope.fromBytes(paired).toBytes()).sender, "a\U0001f600@b.test")

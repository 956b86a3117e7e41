"""jsmail.headers: where the header section ends, its fields, and the From domain."""

from __future__ import annotations

import io
import random
import time

from twisted.trial.unittest import SynchronousTestCase

from jsmail.headers import (
    FieldDropper,
    FieldWatcher,
    HeaderScanner,
    Split,
    dropFields,
    fieldName,
    fields,
    fieldValue,
    fromDomain,
    hasName,
    headerOf,
    readHeader,
    splitHeader,
)


def message(*lines: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


class SplitHeaderTests(SynchronousTestCase):
    def test_crlf(self) -> None:
        self.assertEqual(splitHeader(iter([b"A: 1\r\nB: 2\r\n\r\nbody\r\n"])),
                         Split(b"A: 1\r\nB: 2\r\n", b"\r\nbody\r\n", True))

    def test_lf(self) -> None:
        self.assertEqual(splitHeader(iter([b"A: 1\nB: 2\n\nbody\n"])), Split(b"A: 1\nB: 2\n", b"\nbody\n", True))

    def test_no_header_section(self) -> None:
        self.assertEqual(splitHeader(iter([b"\r\nbody\r\n"])), Split(b"", b"\r\nbody\r\n", True))

    def test_no_empty_line_means_all_header(self) -> None:
        self.assertEqual(splitHeader(iter([b"A: 1\r\n", b"B: 2"])), Split(b"A: 1\r\nB: 2", b"", True))

    def test_any_piecing_gives_the_same_split(self) -> None:
        """The empty line may straddle pieces; feeding one octet at a time changes nothing."""
        data = b"A: 1\r\n folded\r\nB: 2\r\n\r\nbody\r\nC: not a field\r\n"
        whole = splitHeader(iter([data]))
        octets = iter([data[i:i + 1] for i in range(len(data))])
        split = splitHeader(octets)
        self.assertEqual((split.header, split.rest + b"".join(octets), split.whole), whole)
        for cut in range(len(data)):
            pieces = iter([data[:cut], data[cut:]])
            split = splitHeader(pieces)
            self.assertEqual(split.header, whole.header)
            self.assertEqual(split.rest + b"".join(pieces), whole.rest)

    def test_what_follows_stays_in_the_iterator(self) -> None:
        chunks = iter([b"A: 1\r\n\r\nbo", b"dy\r\n"])
        self.assertEqual(splitHeader(chunks), Split(b"A: 1\r\n", b"\r\nbo", True))
        self.assertEqual(list(chunks), [b"dy\r\n"])

    def test_cut_at_the_limit_on_a_field_boundary(self) -> None:
        """A header section longer than the limit is cut before the field that crosses
        it, so that fields may still be added at the cut."""
        data = b"A: 12345\r\nB: 1\r\n 2\r\n 3\r\nC: 1\r\n\r\nbody"
        self.assertEqual(splitHeader(iter([data]), limit=14), Split(b"A: 12345\r\n", data[10:], False))
        self.assertEqual(splitHeader(iter([data]), limit=len(b"A: 12345\r\nB: 1\r\n 2\r\n 3\r\n")),
                         Split(b"A: 12345\r\nB: 1\r\n 2\r\n 3\r\n", data[24:], False))

    def test_a_line_without_end_longer_than_the_limit(self) -> None:
        scanner = HeaderScanner(limit=100)
        self.assertIsNone(scanner.feed(b"A: 1\r\nB: "))
        self.assertEqual(scanner.feed(b"x" * 200), Split(b"A: 1\r\n", b"B: " + b"x" * 200, False))
        scanner = HeaderScanner(limit=100)
        self.assertEqual(scanner.feed(b"A: 1\r\n " + b"x" * 200), Split(b"", b"A: 1\r\n " + b"x" * 200, False))

    def test_a_field_folded_100000_times_is_linear(self) -> None:
        folded = b"X-Long: a" + b"\r\n b" * 100_000
        data = folded + b"\r\nSubject: s\r\n\r\nbody\r\n"
        started = time.monotonic()
        split = splitHeader(iter([data]), limit=len(data))
        found = fields(split.header)
        kept = dropFields(data, lambda f: hasName(f, "subject"))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(found, [folded, b"Subject: s"])
        self.assertEqual(kept, folded + b"\r\n\r\nbody\r\n")
        self.assertEqual(splitHeader(iter([data])), Split(b"", data, False))  # past the default limit

    def test_read_header_from_a_file(self) -> None:
        source = io.BytesIO(message(b"A: 1", body=b"x" * 100_000))
        split = readHeader(source, limit=1000)
        self.assertEqual(split.header, b"A: 1\r\n")
        self.assertEqual(split.rest + source.read(), b"\r\n" + b"x" * 100_000)

    def test_header_of(self) -> None:
        self.assertEqual(headerOf(message(b"A: 1", b"B: 2")), b"A: 1\r\nB: 2\r\n")


class FieldTests(SynchronousTestCase):
    def test_folded_fields_stay_whole(self) -> None:
        self.assertEqual(fields(b"A: 1\r\n\t2\r\nB: 3\r\n"), [b"A: 1\r\n\t2", b"B: 3"])
        self.assertEqual(fields(b"A: 1\n 2\nB: 3"), [b"A: 1\n 2", b"B: 3"])

    def test_a_leading_continuation_line_is_a_field_of_its_own(self) -> None:
        self.assertEqual(fields(b" x\r\nA: 1\r\n"), [b" x", b"A: 1"])

    def test_names_compare_without_case(self) -> None:
        self.assertEqual(fieldName(b"Message-ID: <x@y>"), b"message-id")
        self.assertEqual(fieldName(b"Subject : obsolete space"), b"subject")
        self.assertTrue(hasName(b"FROM: a@b", "From"))
        self.assertFalse(hasName(b"Resent-From: a@b", "from"))

    def test_no_name(self) -> None:
        for field in (b"not a field", b": empty name", b"two words: x", b"\tx: y"):
            self.assertIsNone(fieldName(field), field)
            self.assertFalse(hasName(field, "x"))

    def test_value_is_unfolded(self) -> None:
        self.assertEqual(fieldValue(b"To: a@b,\r\n c@d,\n e@f"), b" a@b, c@d, e@f")

    def test_drop_fields_keeps_everything_else_as_it_came(self) -> None:
        data = b"A: 1\r\nBcc: x\r\n y\r\nB: 2\nbcc: z\r\n\r\nBcc: body\r\n"
        self.assertEqual(dropFields(data, lambda f: hasName(f, "bcc")), b"A: 1\r\nB: 2\n\r\nBcc: body\r\n")


class FromDomainTests(SynchronousTestCase):
    """RFC 5322 section 3.6.2: the one address of the one From field."""

    def test_one_address(self) -> None:
        self.assertEqual(fromDomain(message(b"From: a@Example.ORG", b"To: b@example.net")), "example.org")

    def test_display_names(self) -> None:
        for field in (b'From: "Doe, Jane" <jane@example.org>', b"From: Jane Doe <jane@example.org>",
                      b'From: "a@evil.test" <jane@example.org>', b"From: =?utf-8?q?Jane?= <jane@example.org>",
                      b"From: <jane@example.org>", b"From: Zo\xe9 <jane@example.org>"):
            self.assertEqual(fromDomain(message(field)), "example.org", field)

    def test_comments(self) -> None:
        for field in (b"From: a@example.org (Jane)", b"From: (x@evil.test) a@example.org",
                      b"From: Jane <a@example.org> (a (nested) comment)", b"From: a@example.org (\\) quoted paren)"):
            self.assertEqual(fromDomain(message(field)), "example.org", field)

    def test_folded_field(self) -> None:
        self.assertEqual(fromDomain(message(b"Subject: s", b"From: A Very Long Display Name\r\n\t<a@example.org>")),
                         "example.org")

    def test_lf_line_ends(self) -> None:
        self.assertEqual(fromDomain(b"Subject: s\nFrom: a@example.org\n\nbody\n"), "example.org")

    def test_trailing_dot_and_obsolete_route(self) -> None:
        self.assertEqual(fromDomain(message(b"From: a@example.org.")), "example.org")
        self.assertEqual(fromDomain(message(b"From: <@relay.test,@other.test:a@example.org>")), "example.org")

    def test_utf8_domain_is_an_a_label(self) -> None:
        self.assertEqual(fromDomain(message("From: Zoë <zoe@Exämple.org>".encode())), "xn--exmple-cua.org")

    def test_not_exactly_one_from_field(self) -> None:
        self.assertIsNone(fromDomain(message(b"From: a@example.org", b"from: b@example.org")))
        self.assertIsNone(fromDomain(message(b"Subject: no author")))
        self.assertIsNone(fromDomain(message(b"Resent-From: a@example.org")))
        self.assertIsNone(fromDomain(message(b"Subject: s", body=b"From: a@example.org\r\n")))

    def test_no_one_author_domain(self) -> None:
        """Several authors of one domain are that domain (RFC 5322 allows several);
        two domains, or no address, are none."""
        self.assertEqual(fromDomain(message(b"From: a@example.org, B <b@EXAMPLE.org>")), "example.org")
        for field in (b"From: a@example.org, b@example.net", b"From: undisclosed", b"From: a@", b"From: @example.org", b"From:",
                      b"From: Group: a@example.org;", b"From: undisclosed-recipients:;", b"From: Jane a@example.org"):
            self.assertIsNone(fromDomain(message(field)), field)
        self.assertEqual(fromDomain(message(b"From: a@example.org,")), "example.org")  # obs-mbox-list

    def test_unparsable(self) -> None:
        for field in (b'From: "Jane <a@example.org>', b"From: (Jane <a@example.org>", b"From: <a@example.org",
                      b"From: a@example.org>", b"From: <<a@example.org>>", b"From: <a@example.org> trailing"):
            self.assertIsNone(fromDomain(message(field)), field)

    def test_unusable_domains(self) -> None:
        for field in (b"From: <a@ex\xe9.org>", b"From: a@example..org", b"From: a@" + b"x" * 64 + b".org",
                      b"From: a@[192.0.2.1]", b"From: <a@exa mple.org>", b"From: a@-example.org"):
            self.assertIsNone(fromDomain(message(field)), field)

    def test_nested_comments_do_not_recurse(self) -> None:
        """Thousands of nested comments cost a pass, not a RecursionError (the DMARC
        log flood of the security review, L-5)."""
        deep = b"From: " + b"(" * 1900 + b"x" + b")" * 1900 + b" a@example.org"
        self.assertEqual(fromDomain(message(deep)), "example.org")
        folded = b"From: " + b"\r\n ".join([b"(" * 900] * 6) + b"a@example.org"
        self.assertIsNone(fromDomain(message(folded)))  # unclosed, and over 4 KiB besides

    def test_a_field_over_8_kib_is_unusable(self) -> None:
        field = b"From: " + b"x" * 8180 + b" <a@example.org>"
        self.assertIsNone(fromDomain(message(field)))
        self.assertEqual(fromDomain(message(b"From: " + b"x" * 8000 + b" <a@example.org>")), "example.org")


class FieldWatcherTests(SynchronousTestCase):
    """The streaming reader smtpd uses for the hop count, the Delivered-To loop check
    and the sender rule: every split of the input gives the same answer."""

    def watch(self, message: bytes, keep: tuple[str, ...] = ("delivered-to", "from"), limit: int = 1024,
              ) -> list[FieldWatcher]:
        watchers = []
        for size in (1, 2, 3, 7, 100, len(message)):
            watcher = FieldWatcher(keep, limit)
            for i in range(0, len(message), size):
                watcher.feed(message[i : i + size])
            watcher.close()
            watchers.append(watcher)
        return watchers

    def test_countsReceivedInTheHeaderSectionOnly(self) -> None:
        message = b"Received: 1\r\nX: y\r\nRECEIVED : 2\r\nReceivedX: no\r\n\r\nReceived: body\r\n"
        for watcher in self.watch(message):
            self.assertEqual(watcher.count, 2)

    def test_keepsNamedFieldsWholeWithTheirFolds(self) -> None:
        message = (b"Subject: a\r\nFrom: A <a@x.test>,\r\n\tB <b@x.test>\r\n X-Other: no\r\n"
                   b"Delivered-To: d@x.test\nfrom: second\r\n\r\nFrom: body@x.test\r\n")
        for watcher in self.watch(message):
            self.assertEqual(watcher.kept, [b"From: A <a@x.test>,\r\n\tB <b@x.test>\r\n X-Other: no",
                                            b"Delivered-To: d@x.test", b"from: second"])
            self.assertFalse(watcher.overflow)

    def test_longNamesAndNamelessLinesAreSkipped(self) -> None:
        message = b"X-" + b"n" * 100 + b": From: x\r\nno colon here at all\r\nFrom: a@x.test\r\n\r\n"
        for watcher in self.watch(message):
            self.assertEqual(watcher.kept, [b"From: a@x.test"])

    def test_overflowKeepsMemoryBounded(self) -> None:
        message = b"From: " + b"a" * 5000 + b"\r\nFrom: b@x.test\r\n\r\n"
        for watcher in self.watch(message, limit=1024):
            self.assertTrue(watcher.overflow)
            self.assertEqual(watcher.kept, [])

    def test_headerWithoutEnd(self) -> None:
        for watcher in self.watch(b"Received: a\r\nFrom: a@x.test"):
            self.assertEqual((watcher.count, watcher.kept), (1, [b"From: a@x.test"]))

    def watchInPieces(self, message: bytes, sizes: list[int], keep: tuple[str, ...], limit: int,
                      quick: bool) -> tuple[object, ...]:
        """What a watcher finds in ``message`` fed in pieces of ``sizes``: read at once
        where it can (``quick``), or always step by step."""
        watcher = FieldWatcher(keep, limit)
        if not quick:
            watcher.feed = watcher._feedStepwise  # type: ignore[method-assign]
        pos = 0
        for size in sizes:
            watcher.feed(message[pos : pos + size])
            pos += size
        watcher.close()
        return watcher.count, watcher.kept, watcher.overflow

    def test_randomHeadersReadTheSameAtOnceAndStepwise(self) -> None:
        """A header section that ends in the piece fed is read with a few scans; what
        they find must be what the steps find, however the input is cut."""
        rng = random.Random(5322)
        pieces = [b"Received", b"from", b"FROM", b"Delivered-To", b"x", b":", b" ", b"\t", b"\r\n", b"\r\n",
                  b"\n", b"\r", b"\r\n ", b"\r\n\t", b"y" * 20, b"Sender \t:", b"received:",
                  b"From" + b" " * 28 + b":", b"From" + b" " * 29 + b":"]  # the longest name read, and one more
        for _ in range(4000):
            message = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
            if rng.random() < 0.7:
                message += rng.choice([b"\r\n\r\n", b"\n\n", b"\r\n"]) + b"Received: body\r\n"
            sizes, left = [], len(message)
            while left > 0:
                sizes.append(rng.choice([1, 2, 5, 13, 64, 1000]))
                left -= sizes[-1]
            keep = rng.choice([(), ("from",), ("delivered-to", "from", "sender"), ("received", "x")])
            limit = rng.choice([0, 10, 40, 1000])
            quick = self.watchInPieces(message, sizes, keep, limit, quick=True)
            slow = self.watchInPieces(message, sizes, keep, limit, quick=False)
            self.assertEqual(quick, slow, (message, sizes, keep, limit))

    def test_aHeaderInOnePieceIsReadAtOnce(self) -> None:
        """The usual case: the whole header section in the first piece fed."""
        watcher = FieldWatcher(("from",), 1024)
        watcher._feedStepwise = None  # type: ignore[assignment,method-assign]  # the steps are not taken
        watcher.feed(b"Received: a\r\nFrom: A\r\n b\r\nSubject: s\r\n\r\nFrom: body\r\n")
        self.assertEqual((watcher.count, watcher.kept, watcher._inHeader), (1, [b"From: A\r\n b"], False))


class FieldDropperTests(SynchronousTestCase):
    """Streaming removal of header fields, fed whole and in pieces."""

    def run_(self, message: bytes, limit: int, pieceSize: int) -> bytes:
        out: list[bytes] = []
        dropper = FieldDropper(out.append, lambda field: field.lower().startswith(b"x-bad:"), limit)
        for start in range(0, len(message), pieceSize):
            dropper.write(message[start : start + pieceSize])
        dropper.close()
        return b"".join(out)

    def expectAlike(self, message: bytes, expected: bytes, limit: int = 64) -> None:
        for pieceSize in (1, 2, 3, 7, 64, len(message)):
            self.assertEqual(self.run_(message, limit, pieceSize), expected, pieceSize)

    def test_droppedFieldsGoFoldedLinesAndAll(self) -> None:
        self.expectAlike(b"A: 1\r\nX-Bad: 2\r\n  more\r\nB: 3\r\n\r\nX-Bad: body\r\n",
                         b"A: 1\r\nB: 3\r\n\r\nX-Bad: body\r\n")

    def test_aFieldPastTheLimitIsDroppedToo(self) -> None:
        padding = b"".join(b"P%d: %s\r\n" % (i, b"p" * 20) for i in range(20))  # several turns of 64 octets
        self.expectAlike(padding + b"X-Bad: late\r\nC: 4\r\n\r\nbody", padding + b"C: 4\r\n\r\nbody")

    def test_aFieldLongerThanTheLimitIsJudgedByItsStart(self) -> None:
        long = b"X-Bad: " + b"\r\n ".join([b"v" * 30] * 10) + b"\r\n"
        kept = b"X-Long: " + b"\r\n ".join([b"w" * 30] * 10) + b"\r\n"
        self.expectAlike(b"A: 1\r\n" + long + kept + b"X-Bad: again\r\n\r\nbody",
                         b"A: 1\r\n" + kept + b"\r\nbody")

    def test_contentEndingInsideTheHeaderIsWritten(self) -> None:
        self.expectAlike(b"A: 1\r\nX-Bad: 2\r\nB: 3", b"A: 1\r\nB: 3")

"""Property tests of what reads message content: the DATA and BDAT readers, the header
reader (:mod:`jsmail.headers`) and the Authentication-Results forgery check.  Readers
fed in pieces must agree with themselves fed whole and with a naive reference; the
header code must be linear and must not recurse, whatever the nesting."""

from __future__ import annotations

import sys
from typing import Any, Callable

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsmail.headers import fromDomain
from jsmail.policy.authresults import ID_WINDOW, claimsAuthservId
from tests.fuzzoracles import checkAuthResults, checkChunkReaders, checkDataReader, checkFromDomain, checkSplitHeader
from tests.fuzzsupport import bounded, content, readSizes


class ReaderPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(content, readSizes, st.booleans())
    @example(b"a\r\n.\n.\r\nb\r\n", [1], False)
    def test_dataReaderAgreesWithTheReferenceHoweverSplit(self, stream: bytes, sizes: list[int],
                                                          normalise: bool) -> None:
        """No smuggling: the message ends where the reference says (CR LF . CR LF after
        a real CR LF) and nowhere else; content, problems and what follows agree."""
        checkDataReader(stream + b"NOOP\r\n", sizes, normalise)

    @bounded(200)
    @given(st.lists(content, max_size=4), readSizes, st.booleans())
    def test_chunkReadersAgreeWithTheReferenceHoweverSplit(self, chunks: list[bytes], sizes: list[int],
                                                           normalise: bool) -> None:
        """BDAT: each chunk is exactly its octets (the NOOP after each is left over),
        the chunks' content is what the reference reads from them joined."""
        checkChunkReaders(chunks, sizes, normalise)


_HEADER_TOKENS = [b"From: a@b.test", b"Subject: x", b"X: y", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"a",
                  b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"\n\n", b"\r\r\n", b"body", b"\x00", b"\xff"]
headerish = st.lists(st.sampled_from(_HEADER_TOKENS) | st.binary(max_size=3), max_size=40).map(b"".join)


class HeaderPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(headerish, readSizes, st.integers(0, 60) | st.just(256 * 1024))
    def test_splitHeaderDoesNotDependOnThePieces(self, message: bytes, sizes: list[int], limit: int) -> None:
        """The header section, where it ends or is cut, and the rest (with what the
        pieces still hold) are the same however the message arrives."""
        checkSplitHeader(message, sizes, limit)

    @bounded(300)
    @given(headerish)
    def test_fieldsAreTheHeaderInOrder(self, message: bytes) -> None:
        """Every field is a piece of the header section, in order, starting a line;
        folded lines stay inside their field."""
        checkSplitHeader(message, [len(message) or 1], len(message))


_FROM_TOKENS = ["(", ")", "\\", '"', "<", ">", "@", ",", ":", ";", " ", "\r\n ", "a", "b.test", "[", "]", ".",
                "é", "=?utf-8?q?x?=", "example.test", "\u2028"]
fromValues = st.lists(st.sampled_from(_FROM_TOKENS), max_size=60).map("".join)


def lineEvents(call: Callable[[], Any]) -> int:
    """How many Python lines ``call()`` runs in jsmail's code (a measure of work that,
    unlike time, does not depend on the machine's load)."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if "jsmail" not in frame.f_code.co_filename:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


class FromDomainPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(fromValues, st.integers(0, 3))
    def test_fromDomainIsADomainOrNoneAndNeverRecurses(self, value: str, nesting: int) -> None:
        value = "(" * (1000 * nesting) + value + ")" * (1000 * nesting)
        checkFromDomain(b"Subject: x\r\nFrom: " + value.encode() + b"\r\n\r\nbody\r\n")

    def test_fromDomainIsLinearInTheNesting(self) -> None:
        """Doubling a hostile From field (nested comments, quotes, angle brackets,
        folds, commas) at most doubles the work, give or take a little."""
        shapes = ["(" * 2000 + ")" * 2000 + "a@b.test", '"\\' * 2000 + '"a@b.test', "<" * 2000,
                  "a@b.test, " * 300, "(a\r\n " * 1000 + ")" * 1000 + "a@b.test", "((\\(" * 1000]
        for shape in shapes:
            half, full = (b"From: " + (shape * n).encode()[:3900 * n] + b"\r\n\r\nx\r\n" for n in (1, 2))
            small, large = (lineEvents(lambda message=message: fromDomain(message)) for message in (half, full))
            self.assertLess(large, 2.2 * small + 200, shape[:20])


_AR_COMMENTS = st.recursive(
    st.sampled_from(["", "x", " ", "\\)", "\\(", "\\\\", "\r\n ", "mx.test"]),
    lambda inner: st.lists(inner, max_size=3).map(lambda parts: "(" + "".join(parts) + ")"),
    max_leaves=20).map(lambda comment: comment if comment.startswith("(") else f"({comment})")


class AuthResultsPropertyTests(SynchronousTestCase):
    @bounded(300)
    @given(st.binary(max_size=300))
    def test_anyFieldGivesABool(self, raw: bytes) -> None:
        checkAuthResults(raw)

    @bounded(300)
    @given(st.lists(_AR_COMMENTS | st.sampled_from([" ", "\t", "\r\n "]), max_size=4).map("".join),
           st.sampled_from(["mx.test", "MX.Test", "other.test", "mx.test.evil", '"mx.test"', "mx", "mx.test;"]),
           st.sampled_from(["", ";", "; spf=pass", " 1; dkim=pass", "(c)", ";x"]),
           st.sampled_from(["Authentication-Results", "authentication-results ", "Authentication-Result"]))
    def test_theIdAfterCommentsDecides(self, comments: str, authservId: str, rest: str, name: str) -> None:
        """The first token after any (nested, escaped, folded) comments is the
        authserv-id, compared without case; a field of another name never claims it."""
        field = f"{name}: {comments}{authservId}{rest}".encode()
        expected = name.strip().lower() == "authentication-results" and (
            authservId.strip('"').removesuffix(";").lower() == "mx.test")
        self.assertEqual(claimsAuthservId(field, "mx.test"), expected, field)

    def test_hugeNestingIsForgedAndLinear(self) -> None:
        """80,000 nested parentheses (the review's H-4 field): a forgery, decided within
        the window, with work that does not grow with the nesting beyond it."""
        small = b"Authentication-Results: " + b"(" * 8000 + b")" * 8000 + b" mx.test"
        large = b"Authentication-Results: " + b"(" * 80000 + b")" * 80000 + b" mx.test"
        self.assertTrue(claimsAuthservId(large, "mx.test"))
        self.assertLess(lineEvents(lambda: claimsAuthservId(large, "mx.test")),
                        lineEvents(lambda: claimsAuthservId(small, "mx.test")) + 4 * ID_WINDOW)

"""Recognising a forged Authentication-Results field (RFC 8601 section 5) in bounded,
linear time."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from jsmail.policy.authresults import ID_WINDOW, claimsAuthservId


def folded(value: bytes, width: int = 900) -> bytes:
    """``value`` cut into lines of ``width`` octets, folded with CR LF SP."""
    return b"\r\n ".join(value[i:i + width] for i in range(0, len(value), width))


class ClaimsAuthservIdTests(SynchronousTestCase):
    def test_deeplyNestedCommentsAreClassifiedInLinearTime(self) -> None:
        """H-4: 80,000 nested "(" and as many ")" (the review's 160 KB reproduction)
        took 33 s on the reactor thread; the field is now classified in a bounded
        scan, and as a forgery, since no id starts within the window."""
        field = b"Authentication-Results: " + folded(b"(" * 80_000 + b")" * 80_000)
        started = time.perf_counter()
        claimed = claimsAuthservId(field, "mx.test")
        elapsed = time.perf_counter() - started
        self.assertTrue(claimed)
        self.assertLess(elapsed, 0.5)

    def test_idPastTheWindowIsTreatedAsOurs(self) -> None:
        """Nothing but comments and white space for the whole window: removed, whatever
        id follows."""
        comments = b"(x) " * (ID_WINDOW // 4)
        for id in (b"mx.test", b"other.test"):
            self.assertTrue(claimsAuthservId(b"Authentication-Results: " + comments + id + b"; dkim=pass", "mx.test"))

    def test_idInsideTheWindowIsCompared(self) -> None:
        comments = b"(" * 100 + b"c" + b")" * 100 + b" (x\\) (y)) "
        self.assertTrue(claimsAuthservId(b"Authentication-Results: " + comments + b"MX.test; dkim=pass", "mx.test"))
        self.assertFalse(claimsAuthservId(b"Authentication-Results: " + comments + b"other.test; x=y", "mx.test"))

    def test_idStartingAtTheEdgeOfTheWindowIsReadWhole(self) -> None:
        padding = b" " * (ID_WINDOW - 3)
        self.assertTrue(claimsAuthservId(b"Authentication-Results: " + padding + b"mx.test; dkim=pass", "mx.test"))
        self.assertFalse(claimsAuthservId(b"Authentication-Results: " + padding + b"mx.test.evil; dkim=pass",
                                          "mx.test"))

    def test_quotedIds(self) -> None:
        for value in (b'"mx.test"; dkim=pass', b'"mx\\.test"; dkim=pass', b'"mx.test; dkim=pass',
                      b"mx.test(comment); dkim=pass"):
            self.assertTrue(claimsAuthservId(b"Authentication-Results: " + value, "mx.test"), value)
        self.assertFalse(claimsAuthservId(b'Authentication-Results: "mx.test x"; dkim=pass', "mx.test"))

    def test_anUnbalancedCloseIsNoId(self) -> None:
        self.assertFalse(claimsAuthservId(b"Authentication-Results: ) mx.test; dkim=pass", "mx.test"))

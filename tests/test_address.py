"""The RFC 5321 path parser: limits, SMTPUTF8, IDNA, injection."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jsmail.address import NULL, Address, parsePath
from jsmail.error import SMTPReplyError


class ParsePathTests(SynchronousTestCase):
    def parse(self, text: str, utf8: bool = False, allowNull: bool = True):  # type: ignore[no-untyped-def]
        return parsePath(text, allowNull=allowNull, utf8=utf8, postmasterDomain="mx.test")

    def refused(self, text: str, utf8: bool = False) -> str:
        with self.assertRaises(SMTPReplyError) as caught:
            self.parse(text, utf8)
        return str(caught.exception.reply)

    def test_plain(self) -> None:
        self.assertEqual(self.parse("<User@Example.ORG>"), (Address("User", "example.org"), {}))

    def test_parameters(self) -> None:
        self.assertEqual(self.parse("<a@b.example> size=10 SMTPUTF8")[1], {"SIZE": "10", "SMTPUTF8": None})

    def test_null_and_postmaster(self) -> None:
        self.assertEqual(self.parse("<>")[0], NULL)
        self.assertEqual(self.parse("<postmaster>")[0], Address("postmaster", "mx.test"))

    def test_quoted_local_part(self) -> None:
        self.assertEqual(self.parse('<"john"@b.example>')[0].local, "john")
        self.assertEqual(self.parse('<"john doe"@b.example>')[0].local, '"john doe"')
        self.assertEqual(self.parse('<"a>b"@b.example>')[0].local, '"a>b"')

    def test_source_route_dropped(self) -> None:
        self.assertEqual(self.parse("<@relay.example,@other.example:a@b.example>")[0], Address("a", "b.example"))

    def test_address_literals(self) -> None:
        self.assertEqual(self.parse("<a@[192.0.2.1]>")[0].domain, "[192.0.2.1]")
        self.assertEqual(self.parse("<a@[IPv6:2001:DB8::1]>")[0].domain, "[IPv6:2001:db8::1]")
        self.assertEqual(self.refused("<a@[300.1.1.1]>"), "501 5.1.7 Bad address literal '[300.1.1.1]'")

    def test_utf8(self) -> None:
        self.assertEqual(self.parse("<δοκιμή@παράδειγμα.δοκιμή>", utf8=True)[0],
                         Address("δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp"))
        self.assertEqual(self.refused("<δοκιμή@b.example>"), "553 5.6.7 Non-ASCII address requires SMTPUTF8")

    def test_limits(self) -> None:
        self.assertEqual(self.refused("<" + "a" * 65 + "@b.example>"), "501 5.1.7 Local part longer than 64 octets")
        domain = ".".join(["a" * 60] * 5)
        self.assertEqual(self.refused(f"<a@{domain}>"), "501 5.1.7 Path longer than 256 octets")

    def test_injection(self) -> None:
        self.assertEqual(self.refused("<a\r\nRCPT@b.example>"), "501 5.1.7 Address contains CR, LF or NUL")

    def test_syntax(self) -> None:
        self.assertEqual(self.refused("<a@b.example"), "501 5.1.7 Missing closing '>'")
        self.assertEqual(self.refused("<a@b.example>junk"), "501 5.1.7 Text after '>' must be ESMTP parameters")
        self.assertEqual(self.refused("<a..b@b.example>"), "501 5.1.7 Bad local part 'a..b'")
        self.assertEqual(self.refused("<ab.example>"), "501 5.1.7 Address 'ab.example' has no domain")

"""The EHLO keywords and the MAIL and RCPT parameter rules as pure functions; the
dialogs in test_smtpd.py show the same rules on the wire."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jsmail import reply
from jsmail.error import SMTPReplyError
from jsmail.reply import Reply
from jsmail.smtp.params import (
    checkMailParams,
    checkRcptParams,
    decodeUtf8Address,
    decodeXtext,
    ehloKeywords,
    isXtext,
    octets,
)


class OctetsTests(SynchronousTestCase):
    def test_unicodeDigitsInSizeAndBdat(self) -> None:
        """Security review L-3: ``str.isdigit`` takes "²" (which ``int`` refuses) and
        "١٠" (which it reads as 10); only ASCII digits are an octet count."""
        for value in ("²", "١٠", "١", "𝟗", "1²", "", " 1", "1 ", "+1", "-1", "1_000", None):
            self.assertIsNone(octets(value), value)

    def test_ascii_digits_up_to_twenty(self) -> None:
        self.assertEqual(octets("0"), 0)
        self.assertEqual(octets("007"), 7)
        self.assertEqual(octets("9" * 20), 10**20 - 1)
        self.assertIsNone(octets("9" * 21))


class XtextTests(SynchronousTestCase):
    def test_xtext(self) -> None:
        self.assertTrue(isXtext("QQ+2B1", 100))
        self.assertTrue(isXtext("a" * 100, 100))
        for value in ("", None, "a" * 101, "a=b", "a+b", "a+2b", "a b", "é"):
            self.assertFalse(isXtext(value, 100), value)


class DecodingTests(SynchronousTestCase):
    def test_xtextDecodesOnlyToPrintableAscii(self) -> None:
        """RFC 3461 section 4: what ENVID and ORCPT stand for is printable ASCII."""
        self.assertEqual(decodeXtext("QQ+2B1+20x"), "QQ+1 x")
        self.assertEqual(decodeXtext("x+40example.org"), "x@example.org")
        for value in ("a+0D+0Ab", "a+00", "a+7F", "a+C3+A9", "a+09", "a=b", "", "a+2b"):
            self.assertIsNone(decodeXtext(value), value)

    def test_utf8AddressDecoding(self) -> None:
        """RFC 6533 section 3: "\\x{HEX}" for any character; raw UTF-8 only with SMTPUTF8;
        no controls, separators, surrogates or code points past U+10FFFF."""
        self.assertEqual(decodeUtf8Address("j\\x{F6}rg@b.test", False), "jörg@b.test")
        self.assertEqual(decodeUtf8Address("jörg@b.test", True), "jörg@b.test")
        self.assertIsNone(decodeUtf8Address("jörg@b.test", False))
        for value in ("a\\x{0A}b", "a\\x{85}", "a\\x{2028}", "a\\x{D800}", "a\\x{110000}", "a+b", "a\\b",
                      "a\\x{f6}", "a\u2029", "a\x85", ""):
            self.assertIsNone(decodeUtf8Address(value, True), value)


class MailParamsTests(SynchronousTestCase):
    def refusal(self, params: dict[str, str | None], esmtp: bool = True, authOffered: bool = False) -> Reply:
        error = self.assertRaises(SMTPReplyError, checkMailParams, params, esmtp, 1000, authOffered)
        return error.reply

    def test_accepted(self) -> None:
        checkMailParams({"SIZE": "1000", "BODY": "8bitmime", "SMTPUTF8": None, "RET": "hdrs", "ENVID": "x+2B"},
                        True, 1000, False)
        checkMailParams({}, False, 1000, False)

    def test_size(self) -> None:
        self.assertEqual(self.refusal({"SIZE": "²"}), reply.BAD_PARAMETER.withText("SIZE needs a number of octets"))
        self.assertEqual(self.refusal({"SIZE": None}), reply.BAD_PARAMETER.withText("SIZE needs a number of octets"))
        self.assertEqual(self.refusal({"SIZE": "1001"}), reply.MESSAGE_TOO_BIG.format(1000))

    def test_values(self) -> None:
        self.assertEqual(self.refusal({"BODY": "BINARYMIME"}).text, "BODY must be 7BIT or 8BITMIME")
        self.assertEqual(self.refusal({"SMTPUTF8": "yes"}).text, "SMTPUTF8 takes no value")
        self.assertEqual(self.refusal({"RET": "ALL"}).text, "RET must be FULL or HDRS (RFC 3461)")
        self.assertEqual(self.refusal({"ENVID": "a=b"}).text, "ENVID must be xtext of at most 100 octets")
        self.assertEqual(self.refusal({"ENVID": "a+0D+0Ab"}).text, "ENVID must decode to printable ASCII (RFC 3461)")
        for params in ({"BODY": "BINARYMIME"}, {"ENVID": "a" * 101}):
            self.assertEqual(self.refusal(params).code, 501)

    def test_unknown_and_helo_parameters(self) -> None:
        """HELO clients may give no parameters; AUTH= only where AUTH is offered."""
        unknown = reply.UNKNOWN_PARAMETER.withText("Unsupported parameter SIZE")
        self.assertEqual(self.refusal({"SIZE": "1"}, esmtp=False), unknown)
        self.assertEqual(self.refusal({"AUTH": "<>"}).code, 555)
        checkMailParams({"AUTH": "<>"}, True, 1000, True)


class RcptParamsTests(SynchronousTestCase):
    def test_dsn(self) -> None:
        checkRcptParams({"NOTIFY": "never", "ORCPT": "rfc822;x+40example.org"})
        checkRcptParams({"NOTIFY": "SUCCESS,FAILURE,DELAY"})
        for params in ({"NOTIFY": "NEVER,SUCCESS"}, {"NOTIFY": None}, {"NOTIFY": "SOMETIMES"},
                       {"ORCPT": "x@example.org"}, {"ORCPT": ";x"}, {"ORCPT": "rfc822;a b"},
                       {"ORCPT": "rfc 822;x"}, {"ORCPT": "rfc822;x+0A"}, {"ORCPT": "utf-8;x\\x{0D}"}):
            error = self.assertRaises(SMTPReplyError, checkRcptParams, params)
            self.assertEqual(error.reply.code, 501, params)

    def test_unknown(self) -> None:
        error = self.assertRaises(SMTPReplyError, checkRcptParams, {"SIZE": "1"})
        self.assertEqual(error.reply, reply.UNKNOWN_PARAMETER.withText("Unsupported parameter SIZE"))


class EhloKeywordsTests(SynchronousTestCase):
    BASE = ["PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]

    def test_keywords(self) -> None:
        self.assertEqual(ehloKeywords(1000, False, ()), self.BASE)
        self.assertEqual(ehloKeywords(1000, True, ("PLAIN", "LOGIN")), [*self.BASE, "STARTTLS", "AUTH PLAIN LOGIN"])

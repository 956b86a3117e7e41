"""ESMTP dialogs through a StringTransport: exact replies for every command and limit."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from jsmail import reply
from jsmail.error import SMTPReplyError
from jsmail.policy.base import Policy
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog

EHLO_REPLY = (
    b"250-mx.test greets client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-CHUNKING\r\n"
    b"250 DSN\r\n"
)
SENDER_OK = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
GO_AHEAD = b"354 2.0.0 End data with <CR><LF>.<CR><LF>\r\n"


def settings(**kw: object) -> ServerSettings:
    kw.setdefault("hostname", "mx.test")
    kw.setdefault("maxMessageSize", 1_000_000)
    return ServerSettings(**kw)  # type: ignore[arg-type]


class DialogTestCase(SynchronousTestCase):
    """Helpers: a session past EHLO, and what got into the queue."""

    def dialog(self, policies: tuple = (), **kw: object) -> Dialog:
        self.queue = MemoryQueue()
        d = Dialog(settings(**kw), self.queue, policies=policies)
        self.assertEqual(d.read(), b"220 mx.test ESMTP jsmail ready\r\n")
        return d

    def ehlo(self, **kw: object) -> Dialog:
        d = self.dialog(**kw)
        self.assertEqual(d.send(b"EHLO client.example\r\n"), EHLO_REPLY.replace(b"1000000", str(d.server.settings.maxMessageSize).encode()))
        return d

    def queued(self) -> list[bytes]:
        """Message bodies in the queue, without the Received header jsmail added."""
        return [body.split(b"\r\n", 4)[4] for _, body in self.queue.messages.values()]

    def assertQueuedReply(self, data: bytes) -> None:
        self.assertRegex(data, rb"^250 2\.0\.0 Queued as [0-9A-F]{21}\r\n$")


class CommandTests(DialogTestCase):
    def test_ehlo(self) -> None:
        self.ehlo()

    def test_helo_offers_no_extensions(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"HELO client.example\r\n"), b"250 mx.test greets client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> SIZE=10\r\n"), b"555 5.5.4 Unsupported parameter SIZE\r\n")

    def test_ehlo_needs_a_name(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"EHLO\r\n"), b"501 5.5.4 Syntax: EHLO hostname\r\n")

    def test_whole_transaction(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), SENDER_OK)
        self.assertEqual(d.send(b"RCPT TO:<x@localhost>\r\n"), RCPT_OK)
        self.assertEqual(d.send(b"DATA\r\n"), GO_AHEAD)
        self.assertQueuedReply(d.send(b"Subject: t\r\n\r\nhello\r\n.\r\n"))
        self.assertEqual(self.queued(), [b"Subject: t\r\n\r\nhello\r\n"])
        self.assertEqual(d.send(b"QUIT\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(d.closed)

    def test_received_header(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        reply_ = d.send(b"hi\r\n.\r\n")
        queueId = reply_.split()[-1].decode()
        [(envelope, body)] = self.queue.messages.values()
        self.assertEqual(
            body,
            b"Received: from client.example ([192.0.2.1])\r\n"
            b"\tby mx.test (jsmail) with ESMTP id " + queueId.encode() + b"\r\n"
            b"\tfor <x@localhost>;\r\n"
            b"\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
            b"hi\r\n",
        )
        self.assertEqual((envelope.sender, envelope.clientAddress, envelope.helo), ("a@b.example", "192.0.2.1", "client.example"))

    def test_rset_noop_vrfy_help(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RSET\r\n"), b"250 2.0.0 Reset OK\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@localhost>\r\n"), b"503 5.5.1 Send MAIL first\r\n")
        self.assertEqual(d.send(b"NOOP\r\n"), b"250 2.0.0 OK\r\n")
        self.assertEqual(d.send(b"VRFY someone\r\n"), b"252 2.1.5 Cannot verify the user, but will accept the message and try\r\n")
        self.assertTrue(d.send(b"HELP\r\n").startswith(b"214 2.0.0 "))

    def test_unknown_and_unimplemented(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"FROB\r\n"), b"500 5.5.1 Command not recognised\r\n")
        self.assertEqual(d.send(b"EXPN list\r\n"), b"502 5.5.1 Command not implemented\r\n")

    def test_sequence_errors(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"503 5.5.1 Send EHLO or HELO first\r\n")
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"DATA\r\n"), b"503 5.5.1 Send MAIL first\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"503 5.5.1 Sender already given\r\n")
        self.assertEqual(d.send(b"DATA\r\n"), b"503 5.5.1 No valid recipients\r\n")

    def test_lowercase_commands_and_bare_lf_command(self) -> None:
        d = self.dialog()
        self.assertTrue(d.send(b"ehlo client.example\n").startswith(b"250-mx.test"))

    def test_null_sender_and_postmaster(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<>\r\n"), SENDER_OK)
        self.assertEqual(d.send(b"RCPT TO:<Postmaster>\r\n"), RCPT_OK)
        self.assertEqual(d.send(b"RCPT TO:<>\r\n"), b"501 5.1.3 The null path <> is not a valid recipient\r\n")

    def test_bad_addresses(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:a@b.example\r\n"),
                         b"501 5.1.7 Address must be in angle brackets: <user@domain>\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@-bad-.example>\r\n"), b"501 5.1.7 Bad domain name '-bad-.example'\r\n")
        self.assertEqual(d.send(b"MAIL TO:<a@b.example>\r\n"), b"501 5.5.2 Syntax: MAIL FROM:<address> [parameters]\r\n")
        long = b"x" * 65
        self.assertEqual(d.send(b"MAIL FROM:<" + long + b"@b.example>\r\n"), b"501 5.1.7 Local part longer than 64 octets\r\n")

    def test_not_utf8(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<\xff@b.example>\r\n"), b"500 5.5.2 Command is not valid UTF-8\r\n")


class ParameterTests(DialogTestCase):
    def test_size_within_limit(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> SIZE=1000000 BODY=8BITMIME\r\n"), SENDER_OK)
        d.send(b"RCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\n")
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual(envelope.mailParams, {"SIZE": "1000000", "BODY": "8BITMIME"})

    def test_size_over_limit(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> SIZE=1000001\r\n"),
                         b"552 5.3.4 Message size exceeds the fixed maximum of 1000000 octets\r\n")

    def test_unicodeDigitsInSizeAndBdat(self) -> None:
        """Security review L-3: digits other than ASCII ones ("²", "١٠") in SIZE and
        BDAT are a syntax error, not a 451 with a traceback nor a misread number."""
        d = self.ehlo()
        self.assertEqual(d.send("MAIL FROM:<a@b.example> SIZE=²\r\n".encode()),
                         b"501 5.5.4 SIZE needs a number of octets\r\n")
        self.assertEqual(d.send("MAIL FROM:<a@b.example> SIZE=١٠\r\n".encode()),
                         b"501 5.5.4 SIZE needs a number of octets\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\n")
        self.assertEqual(d.send("BDAT ١٠ LAST\r\n".encode()), b"501 5.5.2 Syntax: BDAT <size> [LAST]\r\n")
        self.assertEqual(d.send("BDAT ²\r\n".encode()), b"501 5.5.2 Syntax: BDAT <size> [LAST]\r\n")
        self.assertQueuedReply(d.send(b"BDAT 4 LAST\r\nhi\r\n"))

    def test_bad_parameter_values(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> SIZE=big\r\n"), b"501 5.5.4 SIZE needs a number of octets\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"), b"501 5.5.4 BODY must be 7BIT or 8BITMIME\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2\r\n"), b"501 5.5.4 Parameter SIZE given twice\r\n")

    def test_unknown_parameters(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> MT-PRIORITY=3\r\n"),
                         b"555 5.5.4 Unsupported parameter MT-PRIORITY\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@localhost> FOO=BAR\r\n"), b"555 5.5.4 Unsupported parameter FOO\r\n")

    def test_dsn_parameters_kept(self) -> None:
        """RFC 3461: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT, kept on the envelope."""
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1\r\n"), SENDER_OK)
        self.assertEqual(d.send(b"RCPT TO:<x@localhost> NOTIFY=FAILURE,DELAY ORCPT=rfc822;x+40localhost\r\n"), RCPT_OK)
        d.send(b"DATA\r\nhi\r\n.\r\n")
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual(envelope.mailParams, {"RET": "HDRS", "ENVID": "QQ+2B1"})
        self.assertEqual(envelope.recipients[0].params, {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;x+40localhost"})

    def test_bad_dsn_parameters(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example> RET=ALL\r\n"), b"501 5.5.4 RET must be FULL or HDRS (RFC 3461)\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@localhost> NOTIFY=NEVER,SUCCESS\r\n"),
                         b"501 5.5.4 NOTIFY must be NEVER, or one or more of SUCCESS, FAILURE, DELAY\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@localhost> ORCPT=x@localhost\r\n"), b"501 5.5.4 ORCPT must be addr-type;xtext\r\n")

    def test_smtputf8(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send("MAIL FROM:<José@b.example>\r\n".encode()), b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n")
        self.assertEqual(d.send("MAIL FROM:<José@bücher.example> SMTPUTF8\r\n".encode()), SENDER_OK)
        self.assertEqual(d.send("RCPT TO:<用户@localhost>\r\n".encode()), RCPT_OK)
        d.send(b"DATA\r\nhi\r\n.\r\n")
        [(envelope, body)] = self.queue.messages.values()
        self.assertEqual(envelope.sender, "José@xn--bcher-kva.example")
        self.assertEqual(envelope.recipients[0].address, "用户@localhost")
        self.assertIn(b"with UTF8SMTP id", body)


class LimitTests(DialogTestCase):
    def test_command_line_too_long(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"NOOP " + b"x" * 507 + b"\r\n"), b"500 5.5.2 Line too long\r\n")
        self.assertEqual(d.send(b"NOOP " + b"x" * 505 + b"\r\n"), b"250 2.0.0 OK\r\n")

    def test_endless_command_line_answered_once(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"x" * 600), b"500 5.5.2 Line too long\r\n")
        self.assertEqual(d.send(b"x" * 600), b"")
        self.assertEqual(d.send(b"x\r\nNOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_too_many_recipients(self) -> None:
        d = self.ehlo(maxRecipients=2)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<y@localhost>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<z@localhost>\r\n"), b"452 4.5.3 Too many recipients\r\n")

    def test_too_many_errors(self) -> None:
        d = self.ehlo(maxErrors=3)
        self.assertEqual(d.send(b"FROB\r\nFROB\r\n"), b"500 5.5.1 Command not recognised\r\n" * 2)
        self.assertFalse(d.closed)
        self.assertEqual(d.send(b"FROB\r\nNOOP\r\n"),
                         b"500 5.5.1 Command not recognised\r\n421 4.7.0 Too many errors, closing connection\r\n")
        self.assertTrue(d.closed)

    def test_idle_timeout(self) -> None:
        d = self.ehlo(idleTimeout=60)
        d.clock.advance(59)
        d.send(b"NOOP\r\n")
        d.clock.advance(59)
        self.assertFalse(d.closed)
        d.clock.advance(1)
        self.assertEqual(d.read(), b"421 4.4.2 Idle for too long, closing connection\r\n")
        self.assertTrue(d.closed)

    def test_message_too_big_session_stays_usable(self) -> None:
        d = self.ehlo(maxMessageSize=100)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertEqual(d.send(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n"),
                         b"552 5.3.4 Message size exceeds the fixed maximum of 100 octets\r\n")
        self.assertEqual(self.queue.messages, {})
        self.assertEqual(self.queue.aborted, 1)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertQueuedReply(d.send(b"small\r\n.\r\n"))

    def test_text_line_too_long(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertEqual(d.send(b"x" * 999 + b"\r\n.\r\n"), b"550 5.6.0 Message has a line longer than 1000 octets\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertQueuedReply(d.send(b"x" * 998 + b"\r\n.\r\n"))

    def test_looping_message(self) -> None:
        d = self.ehlo(maxReceivedHeaders=3)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertEqual(d.send(b"Received: a\r\nReceived: b\r\nreceived: c\r\nReceived: d\r\n\r\nbody\r\n.\r\n"),
                         b"554 5.4.6 Too many Received headers; the message is looping\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertQueuedReply(d.send(b"Received: a\r\n\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n.\r\n"))


class DataTests(DialogTestCase):
    def transaction(self, d: Dialog) -> None:
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n"),
                         SENDER_OK + RCPT_OK + GO_AHEAD)

    def test_dot_unstuffing(self) -> None:
        d = self.ehlo()
        self.transaction(d)
        d.send(b"..leading\r\n...\r\nmid.dle\r\n.\r\n")
        self.assertEqual(self.queued(), [b".leading\r\n..\r\nmid.dle\r\n"])

    def test_terminator_split_across_reads(self) -> None:
        d = self.ehlo()
        self.transaction(d)
        for piece in (b"a\r", b"\n", b".", b"\r", b"\n"):
            out = d.send(piece)
        self.assertQueuedReply(out)
        self.assertEqual(self.queued(), [b"a\r\n"])

    def test_empty_message(self) -> None:
        d = self.ehlo()
        self.transaction(d)
        self.assertQueuedReply(d.send(b".\r\n"))
        self.assertEqual(self.queued(), [b""])


class SmugglingTests(DialogTestCase):
    """SMTP smuggling (CVE-2023-51764 family): only CR LF . CR LF ends DATA, so a
    second transaction hidden behind a bare-LF or bare-CR "end" is never run."""

    SMUGGLED = (
        b"MAIL FROM:<admin@b.example>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\nsmuggled\r\n"
    )

    def smuggle(self, fakeEnd: bytes, normalise: bool = False) -> bytes:
        d = self.ehlo(normaliseLineEndings=normalise)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        return d.send(b"Subject: real\r\n\r\nbody" + fakeEnd + self.SMUGGLED + b".\r\n")

    def assertOneRefusal(self, fakeEnd: bytes) -> None:
        self.assertEqual(self.smuggle(fakeEnd), b"550 5.6.0 Message has a bare CR or LF; lines must end with CR LF"
                                                b" (see RFC 5321 section 2.3.8)\r\n")
        self.assertEqual(self.queue.messages, {})

    def test_bare_lf_dot_bare_lf(self) -> None:
        self.assertOneRefusal(b"\n.\n")

    def test_bare_cr_dot_bare_cr(self) -> None:
        self.assertOneRefusal(b"\r.\r")

    def test_bare_lf_dot_crlf(self) -> None:
        self.assertOneRefusal(b"\n.\r\n")

    def test_crlf_dot_bare_lf(self) -> None:
        self.assertOneRefusal(b"\r\n.\n")

    def test_normalised_stays_one_message(self) -> None:
        """When normalising, the fake end becomes content: one message, no second one."""
        for fakeEnd in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"):
            self.assertQueuedReply(self.smuggle(fakeEnd, normalise=True))
            [body] = self.queued()
            self.assertIn(b"smuggled\r\n", body)
            self.assertNotIn(b"\r\r", body)
            self.assertEqual(body.count(b"\n"), body.count(b"\r\n"), "every line ends in CR LF")

    def test_session_in_step_after_refusal(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        out = d.send(b"bad\n.\n\r\n.\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(out.count(b"\r\n"), 2)
        self.assertTrue(out.endswith(SENDER_OK))


class BDATTests(DialogTestCase):
    def test_chunks(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\n")
        self.assertEqual(d.send(b"BDAT 7\r\nSubject"), b"250 2.0.0 7 octets received\r\n")
        out = d.send(b"BDAT 12 LAST\r\n: t\r\n\r\n.hi\r\n")
        self.assertQueuedReply(out)
        self.assertEqual(self.queued(), [b"Subject: t\r\n\r\n.hi\r\n"], "no dot-unstuffing in BDAT")

    def test_chunk_and_commands_in_one_write(self) -> None:
        d = self.ehlo()
        out = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 4 LAST\r\nhi\r\nNOOP\r\n")
        self.assertRegex(out, rb"^250 2.1.0 .*\r\n250 2.1.5 .*\r\n250 2.0.0 Queued as \w+\r\n250 2.0.0 OK\r\n$")

    def test_bdat_zero_last(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 3\r\nhi\n")
        self.assertEqual(d.send(b"BDAT 0 LAST\r\n"),
                         b"550 5.6.0 Message has a bare CR or LF; lines must end with CR LF (see RFC 5321 section 2.3.8)\r\n")

    def test_crlf_split_across_chunks(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 3\r\nhi\r")
        self.assertQueuedReply(d.send(b"BDAT 1 LAST\r\n\n"))
        self.assertEqual(self.queued(), [b"hi\r\n"])

    def test_refused_chunk_is_consumed(self) -> None:
        """A BDAT outside a transaction is refused, and its octets are not commands."""
        d = self.ehlo()
        self.assertEqual(d.send(b"BDAT 6\r\nRSET\r\nNOOP\r\n"), b"503 5.5.1 Send MAIL first\r\n250 2.0.0 OK\r\n")

    def test_data_after_bdat(self) -> None:
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 2\r\nhi")
        self.assertEqual(d.send(b"DATA\r\n"), b"503 5.5.1 DATA cannot follow BDAT in one transaction\r\n")

    def test_recipientAfterBdatChunkIsRefused(self) -> None:
        """Security review L-2: a RCPT after the first BDAT chunk used to get 250 and
        then be dropped silently; it is refused, and the message goes to the others."""
        d = self.ehlo()
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 4\r\nhi\r\n")
        self.assertEqual(d.send(b"RCPT TO:<late@localhost>\r\n"),
                         b"503 5.5.1 RCPT cannot follow BDAT in one transaction\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<c@b.example>\r\n"), b"503 5.5.1 Sender already given\r\n")
        self.assertQueuedReply(d.send(b"BDAT 0 LAST\r\n"))
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["x@localhost"])

    def test_bdat_syntax(self) -> None:
        d = self.ehlo()
        self.assertEqual(d.send(b"BDAT x\r\n"), b"501 5.5.2 Syntax: BDAT <size> [LAST]\r\n")

    def test_bdat_too_big(self) -> None:
        d = self.ehlo(maxMessageSize=10)
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nBDAT 8\r\n12345678")
        self.assertEqual(d.send(b"BDAT 8 LAST\r\n12345678"),
                         b"552 5.3.4 Message size exceeds the fixed maximum of 10 octets\r\n")


class _SlowCheck(Policy):
    """A check whose answers wait until the test fires them, in any order."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, defer.Deferred[None]]] = []

    def checkRecipient(self, session: object, address: object, params: dict) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((str(address), d))
        return d


class _Refusing(Policy):
    def checkSender(self, session: object, address: object, params: dict) -> None:
        if str(address).startswith("spam"):
            raise SMTPReplyError(reply.Reply(550, "5.7.1", "Go away"), "test refusal")

    def checkRecipient(self, session: object, address: object, params: dict) -> None:
        if str(address).startswith("crash"):
            raise RuntimeError("a bug in a check")


class PipeliningTests(DialogTestCase):
    def test_replies_in_order_with_slow_check(self) -> None:
        """Twisted ticket 8126: with an unfired Deferred, later commands must wait."""
        check = _SlowCheck()
        d = self.ehlo(policies=(check,))
        out = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<y@localhost>\r\nDATA\r\n")
        self.assertEqual(out, SENDER_OK)
        self.assertEqual(d.transport.producerState, "paused")
        self.assertEqual([a for a, _ in check.waiting], ["x@localhost"])
        check.waiting[0][1].callback(None)
        self.assertEqual(d.read(), RCPT_OK)
        check.waiting[1][1].errback(SMTPReplyError(reply.BAD_MAILBOX))
        self.assertEqual(d.read(), b"550 5.1.1 No such mailbox\r\n" + GO_AHEAD)
        self.assertEqual(d.transport.producerState, "producing")
        self.assertQueuedReply(d.send(b"hi\r\n.\r\n"))
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["x@localhost"])

    def test_refusal_and_crash_in_checks(self) -> None:
        d = self.ehlo(policies=(_Refusing(),))
        self.assertEqual(d.send(b"MAIL FROM:<spam@b.example>\r\n"), b"550 5.7.1 Go away\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<crash@localhost>\r\n"),
                         b"451 4.3.0 Temporary local problem, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(d.closed)

    def test_slow_commit_holds_next_transaction(self) -> None:
        """The 250 after the dot waits for the queue; a pipelined next command waits too."""
        gate: defer.Deferred[None] = defer.Deferred()

        class SlowQueue(MemoryQueue):
            def newMessage(self, envelope):  # type: ignore[no-untyped-def]
                incoming = super().newMessage(envelope)
                commit = incoming.commit
                incoming.commit = lambda: gate.addCallback(lambda _: commit())  # type: ignore[method-assign]
                return incoming

        queue = SlowQueue()
        d = Dialog(settings(), queue)
        d.read()
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        self.assertEqual(d.send(b"hi\r\n.\r\nNOOP\r\n"), b"")
        gate.callback(None)
        self.assertRegex(d.read(), rb"^250 2.0.0 Queued as \w+\r\n250 2.0.0 OK\r\n$")


class RelayTests(DialogTestCase):
    def relay(self, clientAddress: str, trusted: tuple = ()) -> Dialog:
        import ipaddress

        self.queue = MemoryQueue()
        policy = RelayControl(lambda domain: domain == "localhost", [ipaddress.ip_network(n) for n in trusted])
        d = Dialog(settings(), self.queue, policies=(policy,), clientAddress=clientAddress)
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
        return d

    def test_local_domain_accepted_from_anyone(self) -> None:
        d = self.relay("198.51.100.7")
        self.assertEqual(d.send(b"RCPT TO:<x@LOCALHOST>\r\n"), RCPT_OK)

    def test_foreign_domain_refused(self) -> None:
        d = self.relay("127.0.0.1")
        self.assertEqual(d.send(b"RCPT TO:<x@example.org>\r\n"),
                         b"550 5.7.1 Relaying to <x@example.org> denied: example.org is not a local domain\r\n")

    def test_trusted_network_relays(self) -> None:
        d = self.relay("10.1.2.3", trusted=("10.0.0.0/8",))
        self.assertEqual(d.send(b"RCPT TO:<x@example.org>\r\n"), RCPT_OK)

    def test_mailbox_path_tricks_refused(self) -> None:
        d = self.relay("198.51.100.7")
        self.assertEqual(d.send(b'RCPT TO:<"../../etc"@localhost>\r\n'), b'550 5.1.1 No such mailbox: "../../etc"\r\n')
        self.assertEqual(d.send(b'RCPT TO:<"a/b"@localhost>\r\n'), b'550 5.1.1 No such mailbox: a/b\r\n')
        self.assertEqual(d.send(b"RCPT TO:<.hidden@localhost>\r\n"), b"501 5.1.3 Bad local part '.hidden'\r\n")


class ConnectionLimitTests(SynchronousTestCase):
    def test_limits(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from jsmail.smtp.server import ESMTPServerFactory, Listener

        factory = ESMTPServerFactory(Listener(settings(maxConnections=3, maxConnectionsPerClient=2), MemoryQueue(), Clock()))

        def connect(host: str) -> tuple[object, StringTransport]:
            addr = IPv4Address("TCP", host, 1)
            protocol = factory.buildProtocol(addr)
            transport = StringTransport(peerAddress=addr)
            protocol.makeConnection(transport)
            return protocol, transport

        first, _ = connect("192.0.2.1")
        connect("192.0.2.1")
        _, refused = connect("192.0.2.1")
        self.assertEqual(refused.value(), b"421 4.7.0 Too many connections from your address, try again later\r\n")
        connect("192.0.2.2")
        _, full = connect("192.0.2.3")
        self.assertEqual(full.value(), b"421 4.7.0 Too many connections, try again later\r\n")
        first.connectionLost(None)  # type: ignore[attr-defined]
        _, again = connect("192.0.2.3")
        self.assertEqual(again.value(), b"220 mx.test ESMTP jsmail ready\r\n")


class ReplyTableTests(SynchronousTestCase):
    def test_codes_agree(self) -> None:
        """Every named reply's enhanced code has the class of its basic code (RFC 3463;
        an intermediate 3xx reply carries a success class)."""
        for r in reply.ALL:
            if r.enhanced:
                self.assertEqual(r.enhanced[0], str(r.code)[0].replace("3", "2"), r)
            else:
                # RFC 2034 exempts the greeting and EHLO; a 334 carries base64 (RFC 4954).
                self.assertIn(r, (reply.SERVICE_READY, reply.OWN_GREETING, reply.GREETS, reply.AUTH_CHALLENGE))


class BadMailFromTests(DialogTestCase):
    """qmail's badmailfrom, exact addresses and @domain entries, on every listener."""

    def test_listed_senders_are_refused(self) -> None:
        from jsmail.policy.relay import BadMailFrom

        d = self.dialog((BadMailFrom(["spam@Example.COM", "@bad.example", "# not a comment in qmail"]),))
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<SPAM@example.com>\r\n"),
                         b"553 5.7.1 Sender address <SPAM@example.com> refused\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<anyone@bad.example>\r\n"),
                         b"553 5.7.1 Sender address <anyone@bad.example> refused\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<anyone@sub.bad.example>\r\n"), SENDER_OK)
        d.send(b"RSET\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<>\r\n"), SENDER_OK)

"""The ESMTP client: scripted dialogs over a StringTransport with exact bytes on the
wire, then real deliveries over loopback to jsmail's own server and to aiosmtpd."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, ssl, task
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail import reply as replies
from jsmail.auth import MailRealm
from jsmail.envelope import Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryStatus
from jsmail.queue.memory import MemoryQueue
from jsmail.remote.dane import DANE_EE, TLSARecord
from jsmail.smtp.client import ClientSettings, ESMTPClient
from jsmail.smtp.commands import CHUNK, DotStuffer, OutgoingMessage
from jsmail.smtp.connect import sendmail
from jsmail.smtp.server import ESMTPServerFactory, Listener, ServerSettings
from jsmail.smtp.tls import ServerTLS
from jsmail.testing import RecordingTransport
from tests.test_dane import tlsa

DELIVERED = DeliveryStatus.DELIVERED
TEMPORARY = DeliveryStatus.TEMPORARY
PERMANENT = DeliveryStatus.PERMANENT
GREETING = b"220 mx.test ESMTP\r\n"
EHLO = b"EHLO client.test\r\n"
GO_AHEAD = b"354 go ahead\r\n"
OK = b"250 ok\r\n"
QUEUED = b"250 2.0.0 queued as 1\r\n"


def message(body: bytes = b"Subject: t\r\n\r\nhi\r\n", *recipients: str, sender: str = "a@example.org",
            mailParams: dict[str, str | None] | None = None, params: dict[str, str | None] | None = None,
            size: int | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        sender=sender,
        recipients=tuple(Recipient(r, dict(params or {})) for r in (recipients or ("b@example.net",))),
        mailParams=mailParams or {},
        size=len(body) if size is None else size,
        open=lambda: io.BytesIO(body),
    )


class Session:
    """A client over a StringTransport and a Clock, driven by the test as the server."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("heloName", "client.test")
        settings.setdefault("tls", "none")
        self.clock = task.Clock()
        self.client = ESMTPClient(ClientSettings(**settings), self.clock)
        self.transport = RecordingTransport(peerAddress=IPv4Address("TCP", "192.0.2.25", 25))
        self.client.makeConnection(self.transport)
        self.readyResult: list[Any] = []
        self.client.ready.addBoth(self.readyResult.append)

    def written(self) -> bytes:
        """What the client wrote since the last look."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def reply(self, data: bytes) -> bytes:
        """The server says ``data``; what the client wrote in answer."""
        self.client.dataReceived(data)
        return self.written()

    def pump(self) -> bytes:
        """Let the message stream as the transport would, to its final dot."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        return self.written()

    def greet(self, *extensions: str) -> None:
        """Greeting and EHLO, offering ``extensions``; the session is then ready."""
        assert self.reply(GREETING) == EHLO
        lines = [b"mx.test greets client.test", *(e.encode() for e in extensions)]
        ehlo = b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line) for i, line in enumerate(lines))
        assert self.reply(ehlo) == b"", "nothing more to say once ready"
        assert self.readyResult == [None], self.readyResult

    def send(self, msg: OutgoingMessage) -> list[Any]:
        """Start a send; the list gets its results when they come."""
        results: list[Any] = []
        self.client.send(msg).addCallback(results.append)
        return results

    def lose(self, reason: Exception | None = None) -> None:
        self.client.connectionLost(Failure(reason or ConnectionDone()))


class Described(list):  # type: ignore[type-arg]
    """Expected results as (recipient, status, reply and detail in one line); equal to
    a list of result lists that say the same and name no remote MTA (the client leaves
    that to its caller).  Compared first, as a list subclass."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list):
            return NotImplemented
        return [[(*t, "") for t in group] for group in self] == [
            [(r.recipient, r.status, r.describe(), r.remoteMTA) for r in group] for group in other]

    def __ne__(self, other: object) -> bool:
        return not self == other


def results(*triples: tuple[str, DeliveryStatus, str]) -> Described:
    return Described([list(triples)])


class SetupTests(SynchronousTestCase):
    def test_ehlo_extensions(self) -> None:
        s = Session()
        s.greet("PIPELINING", "SIZE 1000", "AUTH PLAIN LOGIN", "8bitmime")
        self.assertEqual(s.client.peerExtensions, {"PIPELINING": "", "SIZE": "1000", "AUTH": "PLAIN LOGIN",
                                                   "8BITMIME": ""})

    def test_helo_fallback(self) -> None:
        """An SMTP-only server refuses EHLO with 5xx: HELO, and no ESMTP parameters after."""
        s = Session()
        self.assertEqual(s.reply(GREETING), EHLO)
        self.assertEqual(s.reply(b"502 5.5.1 what?\r\n"), b"HELO client.test\r\n")
        self.assertEqual(s.reply(b"250 mx.test\r\n"), b"")
        self.assertEqual(s.readyResult, [None])
        self.assertEqual(s.client.peerExtensions, {})
        sent = s.send(message(b"x\r\n"))
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(s.reply(OK), b"RCPT TO:<b@example.net>\r\n")
        self.assertEqual(s.reply(OK), b"DATA\r\n")
        s.reply(GO_AHEAD)
        self.assertEqual(s.pump(), b"x\r\n.\r\n")
        s.reply(QUEUED)
        self.assertEqual(sent, results(("b@example.net", DELIVERED, "250 2.0.0 queued as 1")))

    def test_greeting_refused(self) -> None:
        """A 554 greeting is temporary (another MX may do); the client says QUIT and goes."""
        s = Session()
        self.assertEqual(s.reply(b"554 5.7.1 not you\r\n"), b"QUIT\r\n")
        [failure] = s.readyResult
        self.assertEqual((str(failure.value.reply), failure.value.permanent), ("554 5.7.1 not you", False))
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send(message()), results(("b@example.net", TEMPORARY, "554 5.7.1 not you")))

    def test_ehlo_and_helo_refused(self) -> None:
        s = Session()
        s.reply(GREETING)
        s.reply(b"550 no\r\n")
        self.assertEqual(s.reply(b"550 5.7.1 go away\r\n"), b"QUIT\r\n")
        self.assertEqual(str(s.readyResult[0].value), "550 5.7.1 go away")

    def test_greeting_timeout(self) -> None:
        s = Session()
        s.clock.advance(299)
        self.assertEqual(s.readyResult, [])
        s.clock.advance(1)
        [failure] = s.readyResult
        self.assertEqual(str(failure.value),
                         "451 4.4.2 Timed out waiting for the mail exchanger (timed out after 300 seconds waiting for the greeting (192.0.2.25))")
        self.assertTrue(s.transport.disconnected, "aborted")
        self.assertEqual(s.written(), b"")

    def test_multiline_reply_joined(self) -> None:
        s = Session()
        s.reply(GREETING)
        s.reply(b"421-4.3.2 shutting\r\n421-4.3.2 down\r\n421 4.3.2 now\r\n")
        self.assertEqual(str(s.readyResult[0].value), "421 4.3.2 shutting 4.3.2 down 4.3.2 now")

    def test_malformed_reply(self) -> None:
        s = Session()
        s.reply(b"hello there\r\n")
        self.assertEqual(str(s.readyResult[0].value), "451 4.5.0 The mail exchanger\'s reply could not be read (192.0.2.25 sent a malformed reply: b'hello there')")
        self.assertTrue(s.transport.disconnected)

    def test_verify_needs_a_name(self) -> None:
        self.assertRaises(ValueError, ESMTPClient, ClientSettings(tls="verify"), task.Clock())
        self.assertRaises(ValueError, ClientSettings, tls="sometimes")

    def test_tlsa_needs_starttls_and_a_name(self) -> None:
        record = TLSARecord(DANE_EE, 1, 1, b"x" * 32)
        for tls in ("none", "implicit"):
            self.assertRaises(ValueError, ClientSettings, tls=tls, tlsHostname="mx.test", tlsa=(record,))
        self.assertRaises(ValueError, ESMTPClient, ClientSettings(tlsa=(record,)), task.Clock())


class TransactionTests(SynchronousTestCase):
    def test_pipelining(self) -> None:
        """MAIL, every RCPT and DATA in one write; replies taken in order."""
        s = Session()
        s.greet("PIPELINING", "SIZE 1000000", "8BITMIME")
        sent = s.send(message(b"Subject: t\r\n\r\nhi\r\n", "b@example.net", "c@example.net"))
        self.assertEqual(s.transport.io.getvalue().count(b"\r\n"), 4)
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<b@example.net>\r\n"
                                      b"RCPT TO:<c@example.net>\r\nDATA\r\n")
        self.assertEqual(s.reply(OK + OK + OK + GO_AHEAD), b"")
        self.assertEqual(s.pump(), b"Subject: t\r\n\r\nhi\r\n.\r\n")
        s.reply(QUEUED)
        self.assertEqual(sent, results(("b@example.net", DELIVERED, "250 2.0.0 queued as 1"),
                                       ("c@example.net", DELIVERED, "250 2.0.0 queued as 1")))

    def test_replies_split_across_reads(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message())
        s.written()
        for octet in OK + OK + GO_AHEAD:
            s.reply(bytes([octet]))
        s.pump()
        s.reply(QUEUED)
        self.assertEqual(sent[0][0].status, DELIVERED)

    def test_per_recipient_replies(self) -> None:
        """RCPT 4xx is temporary, 5xx permanent, for that recipient only; the final
        reply applies to those accepted."""
        s = Session()
        s.greet()
        sent = s.send(message(b"x\r\n", "b@example.net", "c@example.net", "d@example.net"))
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(s.reply(OK), b"RCPT TO:<b@example.net>\r\n")
        self.assertEqual(s.reply(b"450 4.2.1 try later\r\n"), b"RCPT TO:<c@example.net>\r\n")
        self.assertEqual(s.reply(b"550 5.1.1 <c@example.net>: no such user\r\n"), b"RCPT TO:<d@example.net>\r\n")
        self.assertEqual(s.reply(OK), b"DATA\r\n")
        s.reply(GO_AHEAD)
        s.pump()
        self.assertEqual(s.reply(QUEUED), b"")
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, "450 4.2.1 try later"),
                                       ("c@example.net", PERMANENT, "550 5.1.1 <c@example.net>: no such user"),
                                       ("d@example.net", DELIVERED, "250 2.0.0 queued as 1")))

    def test_final_reply_temporary_and_permanent(self) -> None:
        for reply, status in ((b"451 4.3.0 disk full\r\n", TEMPORARY), (b"554 5.6.0 spam\r\n", PERMANENT)):
            s = Session()
            s.greet("PIPELINING")
            sent = s.send(message())
            s.reply(OK + OK + GO_AHEAD)
            s.pump()
            s.reply(reply)
            self.assertEqual(sent, results(("b@example.net", status, reply.decode().strip())))

    def test_no_recipient_accepted_without_pipelining(self) -> None:
        """No DATA when every RCPT was refused: RSET at once instead."""
        s = Session()
        s.greet()
        sent = s.send(message())
        s.written()
        self.assertEqual(s.reply(OK), b"RCPT TO:<b@example.net>\r\n")
        self.assertEqual(s.reply(b"550 5.1.1 no\r\n"), b"RSET\r\n")
        s.reply(OK)
        self.assertEqual(sent, results(("b@example.net", PERMANENT, "550 5.1.1 no")))

    def test_no_recipient_accepted_pipelined(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message())
        s.written()
        self.assertEqual(s.reply(OK + b"550 5.1.1 no\r\n" + b"554 5.5.1 no valid recipients\r\n"), b"RSET\r\n")
        s.reply(OK)
        self.assertEqual(sent, results(("b@example.net", PERMANENT, "550 5.1.1 no")))

    def test_data_accepted_without_recipients(self) -> None:
        """RFC 2920 section 3.1: a server may say 354 anyway; end the empty message, RSET."""
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message())
        s.written()
        self.assertEqual(s.reply(OK + b"450 4.2.1 later\r\n" + GO_AHEAD), b".\r\n")
        self.assertEqual(s.reply(b"554 5.5.1 no recipients\r\n"), b"RSET\r\n")
        s.reply(OK)
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, "450 4.2.1 later")))

    def test_mail_refused(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message(b"x\r\n", "b@example.net", "c@example.net"))
        s.written()
        bad = b"503 5.5.1 Send MAIL first\r\n"
        self.assertEqual(s.reply(b"553 5.1.8 bad sender\r\n" + bad + bad + bad), b"RSET\r\n")
        s.reply(OK)
        self.assertEqual(sent, results(("b@example.net", PERMANENT, "553 5.1.8 bad sender"),
                                       ("c@example.net", PERMANENT, "553 5.1.8 bad sender")))

    def test_data_refused(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message())
        s.written()
        self.assertEqual(s.reply(OK + OK + b"451 4.3.0 later\r\n"), b"RSET\r\n")
        self.assertEqual(sent, [])
        s.reply(OK)
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, "451 4.3.0 later")))

    def test_more_than_max_recipients(self) -> None:
        """Two transactions on the same connection, RSET between; results in order."""
        s = Session(maxRecipients=2)
        s.greet("PIPELINING")
        sent = s.send(message(b"x\r\n", "b@example.net", "c@example.net", "d@example.net"))
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                                      b"RCPT TO:<c@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + b"550 5.1.1 no\r\n" + GO_AHEAD)
        s.pump()
        self.assertEqual(s.reply(b"250 first\r\n"), b"RSET\r\n")
        self.assertEqual(s.reply(OK), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + GO_AHEAD)
        self.assertEqual(s.pump(), b"x\r\n.\r\n")
        s.reply(b"250 second\r\n")
        self.assertEqual(sent, results(("b@example.net", DELIVERED, "250 first"),
                                       ("c@example.net", PERMANENT, "550 5.1.1 no"),
                                       ("d@example.net", DELIVERED, "250 second")))

    def test_messages_on_one_connection_then_quit(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        first, second = s.send(message(b"1\r\n")), s.send(message(b"2\r\n", "c@example.net"))
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + GO_AHEAD)
        self.assertEqual(s.pump(), b"1\r\n.\r\n")
        self.assertEqual(s.reply(QUEUED), b"RSET\r\n")
        self.assertEqual(first[0][0].status, DELIVERED)
        self.assertEqual(s.reply(OK), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + GO_AHEAD)
        self.assertEqual(s.pump(), b"2\r\n.\r\n")
        quitted: list[Any] = []
        s.client.quit().addCallback(quitted.append)
        self.assertEqual(s.reply(QUEUED), b"QUIT\r\n")
        self.assertEqual(second[0][0].status, DELIVERED)
        self.assertEqual(s.reply(b"221 2.0.0 bye\r\n"), b"")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(quitted, [])
        s.lose()
        self.assertEqual(quitted, [None])
        self.assertTrue(s.client.closed)

    def test_quit_when_the_peer_never_closes(self) -> None:
        s = Session()
        s.greet()
        quitted: list[Any] = []
        s.client.quit().addCallback(quitted.append)
        self.assertEqual(s.written(), b"QUIT\r\n")
        self.assertEqual(s.reply(b"221 bye\r\n"), b"")
        self.assertTrue(s.transport.disconnecting)
        s.clock.advance(300)
        self.assertTrue(s.transport.disconnected, "aborted")
        s.lose()
        self.assertEqual(quitted, [None])
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_idle_connection_closed_by_peer(self) -> None:
        """A 421 between transactions: the next message is deferred with its text."""
        s = Session()
        s.greet("PIPELINING")
        s.reply(b"421 4.4.2 idle too long\r\n")
        self.assertTrue(s.client.closed)
        self.assertEqual(s.send(message()), results(("b@example.net", TEMPORARY, "421 4.4.2 idle too long")))
        self.assertEqual(s.written(), b"")

    def test_quoted_local_part_with_space(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        s.send(message(b"x\r\n", '"john doe"@example.net'))
        self.assertEqual(s.written(), b'MAIL FROM:<a@example.org>\r\nRCPT TO:<"john doe"@example.net>\r\nDATA\r\n')

    def test_command_injection_refused(self) -> None:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message(b"x\r\n", "b@example.net>\r\nRCPT TO:<evil@example.com", "c@example.net"))
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + GO_AHEAD)
        s.pump()
        s.reply(QUEUED)
        self.assertEqual([r.status for r in sent[0]], [PERMANENT, DELIVERED])
        self.assertEqual(str(sent[0][0].reply), "501 5.1.3 Bad recipient address")
        self.assertIn("RCPT TO:<evil@example.com", sent[0][0].detail)


class ParameterTests(SynchronousTestCase):
    def sent(self, msg: OutgoingMessage, *extensions: str) -> tuple[bytes, list[Any]]:
        """What the client writes for ``msg`` to a server offering ``extensions``."""
        s = Session()
        s.greet(*extensions)
        result = s.send(msg)
        return s.written(), result

    def test_size_sent_when_offered(self) -> None:
        self.assertEqual(self.sent(message(b"x\r\n"), "SIZE 10")[0], b"MAIL FROM:<a@example.org> SIZE=3\r\n")
        self.assertEqual(self.sent(message(b"x\r\n", mailParams={"SIZE": "99"}), "SIZE")[0],
                         b"MAIL FROM:<a@example.org> SIZE=3\r\n")

    def test_too_big_for_peer(self) -> None:
        """Larger than the peer's SIZE: permanent for every recipient, nothing sent."""
        written, result = self.sent(message(b"x" * 11, "b@example.net", "c@example.net"), "PIPELINING", "SIZE 10")
        self.assertEqual(written, b"")
        detail = "552 5.3.4 The message of 11 octets exceeds the 10 octets the mail exchanger accepts (192.0.2.25 takes at most 10 octets)"
        self.assertEqual(result, results(("b@example.net", PERMANENT, detail), ("c@example.net", PERMANENT, detail)))

    def test_8bit_body(self) -> None:
        body = "Subject: é\r\n\r\nçà\r\n".encode()
        self.assertEqual(self.sent(message(body), "8BITMIME")[0],
                         b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n")
        self.assertEqual(self.sent(message(b"x\r\n", mailParams={"BODY": "8BITMIME"}), "8BITMIME")[0],
                         b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n")

    def test_8bit_at_the_end_of_a_large_message(self) -> None:
        body = b"x" * (3 * CHUNK) + b"\xff\r\n"
        self.assertEqual(self.sent(message(body), "8BITMIME")[0], b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n")

    def test_8bit_refused_without_8bitmime(self) -> None:
        written, result = self.sent(message(b"caf\xc3\xa9\r\n"), "PIPELINING")
        self.assertEqual(written, b"")
        self.assertEqual(result, results(
            ("b@example.net", PERMANENT,
             "554 5.6.3 The message has 8-bit data and the mail exchanger does not offer 8BITMIME (192.0.2.25 does not offer 8BITMIME)")))

    def test_declared_8bit_but_7bit_content_goes_to_7bit_peer(self) -> None:
        written, _ = self.sent(message(b"x\r\n", mailParams={"BODY": "8BITMIME"}))
        self.assertEqual(written, b"MAIL FROM:<a@example.org>\r\n")

    def test_smtputf8(self) -> None:
        for msg in (message(b"x\r\n", "bé@example.net"), message(b"x\r\n", sender="é@example.org"),
                    message(b"x\r\n", mailParams={"SMTPUTF8": None})):
            written, _ = self.sent(msg, "SMTPUTF8")
            self.assertEqual(written, f"MAIL FROM:<{msg.sender}> SMTPUTF8\r\n".encode())

    def test_smtputf8_refused(self) -> None:
        written, result = self.sent(message(b"x\r\n", "bé@example.net"), "8BITMIME")
        self.assertEqual(written, b"")
        self.assertEqual(result, results(
            ("bé@example.net", PERMANENT, "553 5.6.7 The message needs SMTPUTF8, which the mail exchanger does not offer (192.0.2.25 does not offer SMTPUTF8)")))

    def test_dsn_only_when_offered(self) -> None:
        msg = message(b"x\r\n", mailParams={"RET": "HDRS", "ENVID": "q1", "BODY": "7BIT"},
                      params={"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;b@example.net"})
        self.assertEqual(self.sent(msg, "PIPELINING", "DSN")[0],
                         b"MAIL FROM:<a@example.org> RET=HDRS ENVID=q1\r\n"
                         b"RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.net\r\nDATA\r\n")
        self.assertEqual(self.sent(msg, "PIPELINING")[0],
                         b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")


class DotStuffingTests(SynchronousTestCase):
    def wire(self, body: bytes) -> bytes:
        """The bytes after DATA's 354 for ``body``."""
        s = Session()
        s.greet("PIPELINING")
        s.send(message(body))
        s.written()
        s.reply(OK + OK + GO_AHEAD)
        return s.pump()

    def test_leading_dot_and_dot_lines(self) -> None:
        self.assertEqual(self.wire(b".first\r\n.\r\nmid\r\n..two\r\n"), b"..first\r\n..\r\nmid\r\n...two\r\n.\r\n")

    def test_dot_at_a_chunk_boundary(self) -> None:
        """A line starting at a 16 KiB read boundary still has its dot stuffed."""
        head = b"a" * (CHUNK - 2) + b"\r\n"
        self.assertEqual(self.wire(head + b".next\r\n"), head + b"..next\r\n.\r\n")

    def test_crlf_split_by_a_chunk_boundary(self) -> None:
        head = b"a" * (CHUNK - 1) + b"\r"
        self.assertEqual(self.wire(head + b"\n.next\r\n"), head + b"\n..next\r\n.\r\n")

    def test_final_crlf_added(self) -> None:
        self.assertEqual(self.wire(b"no newline"), b"no newline\r\n.\r\n")
        self.assertEqual(self.wire(b""), b".\r\n")

    def test_message_starts_where_open_leaves_the_file(self) -> None:
        """A queue file opens past its envelope line: neither the 8-bit check nor the
        data (nor a second transaction's) may rewind to before it."""

        def openPastEnvelope() -> io.BytesIO:
            f = io.BytesIO(b'{"envelope":"\xc3\xa9"}\nbody\r\n')
            f.readline()
            return f

        s = Session(maxRecipients=1)
        s.greet("PIPELINING")
        msg = OutgoingMessage("a@example.org", (Recipient("b@example.net"), Recipient("c@example.net")), {}, 6,
                              openPastEnvelope)
        s.send(msg)
        self.assertEqual(s.written(), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        s.reply(OK + OK + GO_AHEAD)
        self.assertEqual(s.pump(), b"body\r\n.\r\n")
        s.reply(QUEUED + OK + OK + OK + GO_AHEAD)
        self.assertEqual(s.pump(), b"body\r\n.\r\n")

    def test_bare_lf_dot_cannot_end_data(self) -> None:
        """Only CR LF . CR LF ends DATA: a dot after a bare LF is no line start, so the
        one such sequence on the wire is the client's own."""
        wire = self.wire(b"a\n.\nb\r\nc\n.\r\nd\r\n.\r\n")
        self.assertEqual(wire, b"a\n.\nb\r\nc\n.\r\nd\r\n..\r\n.\r\n")
        self.assertEqual(wire.find(b"\r\n.\r\n"), len(wire) - 5)

    def test_any_split(self) -> None:
        """Fed in two pieces split anywhere, the stuffer gives what it gives for the whole."""
        body = b".a\r\n.\r\n\r\n..b\r\nc\r\r\n.\n.\r\n."
        whole = DotStuffer()
        expected = whole.feed(body) + whole.end()
        self.assertEqual(expected, b"..a\r\n..\r\n\r\n...b\r\nc\r\r\n..\n.\r\n..\r\n.\r\n")
        for i in range(len(body) + 1):
            stuffer = DotStuffer()
            self.assertEqual(stuffer.feed(body[:i]) + stuffer.feed(body[i:]) + stuffer.end(), expected, i)


class FailureTests(SynchronousTestCase):
    def session(self) -> tuple[Session, list[Any]]:
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message(b"x\r\n", "b@example.net", "c@example.net"))
        s.written()
        return s, sent

    def test_mail_timeout(self) -> None:
        s, sent = self.session()
        s.clock.advance(299)
        self.assertEqual(sent, [])
        s.clock.advance(1)
        detail = ("451 4.4.2 Timed out waiting for the mail exchanger "
                  "(timed out after 300 seconds waiting for the reply to MAIL (192.0.2.25))")
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, detail), ("c@example.net", TEMPORARY, detail)))
        self.assertTrue(s.transport.disconnected)

    def test_data_timeout(self) -> None:
        s, sent = self.session()
        s.reply(OK + OK + OK)
        s.clock.advance(120)
        self.assertEqual(str(sent[0][0].reply), "451 4.4.2 Timed out waiting for the mail exchanger")
        self.assertIn("waiting for the reply to DATA", sent[0][0].detail)
        self.assertEqual(sent[0][0].reply, replies.PEER_TIMEOUT, "the private detail stays out of the reply")

    def test_data_block_timeout(self) -> None:
        """The transport takes no data for 3 minutes (the producer is never resumed)."""
        s, sent = self.session()
        s.reply(OK + OK + OK + GO_AHEAD)
        s.transport.producer.resumeProducing()
        s.clock.advance(179)
        self.assertEqual(sent, [])
        s.clock.advance(1)
        self.assertEqual(sent[0][0].status, TEMPORARY)
        self.assertIn("180 seconds waiting for room to send message data", sent[0][0].detail)

    def test_final_dot_timeout(self) -> None:
        s, sent = self.session()
        s.reply(OK + OK + OK + GO_AHEAD)
        s.pump()
        s.clock.advance(599)
        self.assertEqual(sent, [])
        s.clock.advance(1)
        self.assertEqual([r.status for r in sent[0]], [TEMPORARY, TEMPORARY])
        self.assertIn("600 seconds waiting for the reply to the final dot", sent[0][0].detail)

    def test_connection_lost_mid_data(self) -> None:
        """Every recipient the data was for is deferred; one already refused stays refused."""
        s = Session()
        s.greet("PIPELINING")
        sent = s.send(message(b"x" * (3 * CHUNK), "b@example.net", "c@example.net", "d@example.net"))
        s.written()
        s.reply(OK + OK + OK + b"550 5.1.1 no\r\n" + GO_AHEAD)
        s.transport.producer.resumeProducing()
        s.lose(ConnectionLost("reset"))
        lost = ("451 4.4.2 The connection to the mail exchanger was lost (connection to 192.0.2.25 lost: "
                "Connection to the other side was lost in a non-clean fashion: reset.)")
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, lost), ("c@example.net", TEMPORARY, lost),
                                       ("d@example.net", PERMANENT, "550 5.1.1 no")))
        self.assertEqual(s.send(message()), results(("b@example.net", TEMPORARY, lost)))
        self.assertEqual(s.written(), b"x" * CHUNK, "no final dot after a broken connection")

    def test_unreadable_message(self) -> None:
        s = Session()
        s.greet()

        def refuse() -> Any:
            raise OSError("gone")

        sent = s.send(OutgoingMessage("a@example.org", (Recipient("b@example.net"),), {}, 1, refuse))
        self.assertEqual(sent, results(("b@example.net", TEMPORARY, "451 4.3.0 Cannot read the queued message (gone)")))
        self.assertEqual(s.written(), b"")


class StartTLSTests(SynchronousTestCase):
    def test_injection_after_220_ignored(self) -> None:
        """Whatever follows STARTTLS's 220 in plaintext is dropped, and EHLO is said again."""
        s = Session(tls="opportunistic")
        s.reply(GREETING)
        self.assertEqual(s.reply(b"250-mx.test\r\n250 STARTTLS\r\n"), b"STARTTLS\r\n")
        self.assertEqual(s.reply(b"220 go ahead\r\n250 injected\r\n"), b"")
        self.assertIsNotNone(s.transport.tlsStarted)
        self.assertEqual(s.reply(b"250 more injected\r\n"), b"", "plaintext before the handshake is not read")
        s.client.handshakeCompleted()
        self.assertEqual(s.written(), EHLO)
        self.assertEqual(s.readyResult, [])
        self.assertEqual(s.reply(b"250-mx.test\r\n250 PIPELINING\r\n"), b"")
        self.assertEqual(s.readyResult, [None])
        self.assertEqual(s.client.peerExtensions, {"PIPELINING": ""})
        self.assertFalse(s.client.tlsFailed)

    def test_refused_goes_on_in_plaintext(self) -> None:
        s = Session(tls="opportunistic")
        s.reply(GREETING)
        s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
        self.assertEqual(s.reply(b"454 4.7.0 TLS not available\r\n"), b"")
        self.assertEqual(s.readyResult, [None])
        self.assertIsNone(s.transport.tlsStarted)

    def test_not_offered_with_verify(self) -> None:
        s = Session(tls="verify", tlsHostname="mx.test")
        s.reply(GREETING)
        self.assertEqual(s.reply(b"250 mx.test\r\n"), b"QUIT\r\n")
        error = s.readyResult[0].value
        self.assertEqual((str(error), error.permanent),
                         ("454 4.7.5 TLS is required but the mail exchanger does not offer STARTTLS "
                          "(192.0.2.25 does not offer STARTTLS)", False))

    def test_refused_with_verify(self) -> None:
        s = Session(tls="verify", tlsHostname="mx.test")
        s.reply(GREETING)
        s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
        s.reply(b"454 4.7.0 not now\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.5 TLS is required but the mail exchanger refused STARTTLS (192.0.2.25: STARTTLS failed: 454 4.7.0 not now)")

    def test_handshake_fails(self) -> None:
        s = Session(tls="opportunistic")
        s.reply(GREETING)
        s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
        s.reply(b"220 go ahead\r\n")
        s.lose(ConnectionLost("handshake failure"))
        self.assertTrue(s.client.tlsFailed)
        error = s.readyResult[0].value
        self.assertIsInstance(error, DeliveryError)
        self.assertEqual((str(error.reply), error.detail, error.permanent),
                         ("454 4.7.5 TLS with the mail exchanger failed",
                          "TLS with 192.0.2.25 failed: Connection to the other side was lost in a "
                          "non-clean fashion: handshake failure.", False))

    def test_never_with_none(self) -> None:
        s = Session(tls="none")
        s.greet("STARTTLS")

    def test_tlsa_requires_starttls(self) -> None:
        s = Session(tls="opportunistic", tlsHostname="mx.test", tlsa=(TLSARecord(DANE_EE, 1, 1, b"x" * 32),))
        s.reply(GREETING)
        s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
        s.reply(b"454 4.7.0 not now\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.5 TLS is required but the mail exchanger refused STARTTLS (192.0.2.25: STARTTLS failed: 454 4.7.0 not now)")

    def test_tlsa_handshake_failure_is_no_reason_for_plaintext(self) -> None:
        """RFC 7672 section 2.2: a DANE session never falls back to plaintext."""
        s = Session(tls="opportunistic", tlsHostname="mx.test", tlsa=(TLSARecord(DANE_EE, 1, 1, b"x" * 32),))
        s.reply(GREETING)
        s.reply(b"250-mx.test\r\n250 STARTTLS\r\n")
        s.reply(b"220 go ahead\r\n")
        s.lose(ConnectionLost("handshake failure"))
        self.assertFalse(s.client.tlsFailed)
        self.assertTrue(str(s.readyResult[0].value).startswith(
            "454 4.7.5 TLS with the mail exchanger failed (TLS with 192.0.2.25 failed"))

    def test_tlsa_server_name_sent(self) -> None:
        """SNI, though the certificate is not checked in the handshake."""
        options = ClientSettings(tlsHostname="mx.test", tlsa=(TLSARecord(DANE_EE, 1, 1, b"x" * 32),)).tlsOptions()
        protocol = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol)).buildProtocol(None)
        connection = options.clientConnectionForTLS(protocol)
        self.assertEqual(connection.get_servername(), b"mx.test")
        self.assertEqual(connection.get_context().get_verify_mode(), 0)


class AuthTests(SynchronousTestCase):
    def session(self, *extensions: bytes, tls: str = "implicit", **settings: Any) -> Session:
        """Implicit TLS checked for mx.test by default: a peer that proved its name."""
        settings.setdefault("tlsHostname", "mx.test" if tls == "implicit" else None)
        s = Session(tls=tls, username="u", password="p", **settings)
        s.reply(GREETING)
        lines = [b"mx.test", *extensions]
        s.client.dataReceived(b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line)
                                       for i, line in enumerate(lines)))
        return s

    def test_plain(self) -> None:
        s = self.session(b"AUTH LOGIN PLAIN")
        self.assertEqual(s.written(), b"AUTH PLAIN AHUAcA==\r\n")
        s.reply(b"235 2.7.0 ok\r\n")
        self.assertEqual(s.readyResult, [None])

    def test_login(self) -> None:
        s = self.session(b"AUTH LOGIN")
        self.assertEqual(s.written(), b"AUTH LOGIN\r\n")
        self.assertEqual(s.reply(b"334 VXNlcm5hbWU6\r\n"), b"dQ==\r\n")
        self.assertEqual(s.reply(b"334 UGFzc3dvcmQ6\r\n"), b"cA==\r\n")
        s.reply(b"235 2.7.0 ok\r\n")
        self.assertEqual(s.readyResult, [None])

    def test_login_timeout_shows_no_secret(self) -> None:
        s = self.session(b"AUTH LOGIN")
        s.reply(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(s.reply(b"334 UGFzc3dvcmQ6\r\n"), b"cA==\r\n")
        s.clock.advance(300)
        self.assertEqual(str(s.readyResult[0].value),
                         "451 4.4.2 Timed out waiting for the mail exchanger (timed out after 300 seconds waiting for the reply to AUTH LOGIN (192.0.2.25))")

    def test_bad_credentials_permanent(self) -> None:
        s = self.session(b"AUTH PLAIN")
        s.written()
        self.assertEqual(s.reply(b"535 5.7.8 no\r\n"), b"QUIT\r\n")
        error = s.readyResult[0].value
        self.assertEqual((str(error.reply), error.permanent), ("535 5.7.8 no", True))
        self.assertEqual(s.send(message()), results(("b@example.net", PERMANENT, "535 5.7.8 no")))

    def test_not_offered(self) -> None:
        s = self.session(b"PIPELINING")
        self.assertEqual(s.written(), b"QUIT\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.0 The relay does not offer AUTH PLAIN or LOGIN (192.0.2.25 does not offer AUTH)")

    def test_never_in_plaintext(self) -> None:
        s = self.session(b"AUTH PLAIN", tls="opportunistic")
        self.assertEqual(s.written(), b"QUIT\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.0 Not sending credentials without TLS (192.0.2.25 did not offer STARTTLS)")

    def test_plaintextCredentialsRefused(self) -> None:
        """tls="none" is no licence to send the password in the clear (security review M-3)."""
        s = self.session(b"AUTH PLAIN", tls="none")
        self.assertEqual(s.written(), b"QUIT\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.0 Not sending credentials to a relay whose "
                         "certificate was not verified (192.0.2.25: no TLS, tls=none)")

    def test_implicitTLSWithoutANameIsUnverified(self) -> None:
        s = self.session(b"AUTH PLAIN", tlsHostname=None)
        self.assertEqual(s.written(), b"QUIT\r\n")
        self.assertEqual(str(s.readyResult[0].value), "454 4.7.0 Not sending credentials to a relay whose "
                         "certificate was not verified (192.0.2.25: TLS without a verified certificate, "
                         "tls=implicit)")

    def test_plaintext_when_allowed(self) -> None:
        s = self.session(b"AUTH PLAIN", tls="none", allowInsecureAuth=True)
        self.assertEqual(s.written(), b"AUTH PLAIN AHUAcA==\r\n")


# -- real deliveries over loopback ---------------------------------------------------------


class _Collector:
    """An aiosmtpd handler keeping every envelope it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


class _AnyPortController(Controller):
    """aiosmtpd on an ephemeral port: the port is learnt once the server is bound."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _padTo(data: bytes, length: int) -> bytes:
    """``data`` and then short lines, to exactly ``length`` octets."""
    while length - len(data) > 100:
        data += b"y" * 98 + b"\r\n"
    return data + b"z" * (length - len(data) - 2) + b"\r\n"


# Dots at the start, at a read boundary, after a CR LF split by one; 8-bit; dot lines.
BODY = _padTo(_padTo(b".starts with a dot\r\n", CHUNK) + b".at a boundary\r\n", 2 * CHUNK + 1) \
    + b".after a split CR LF\r\n" + "8-bit: café\r\n".encode() + b".\r\n..\r\nend\r\n"
BARE_LF_BODY = BODY + b"bare\n.\nlf\n.\r\nend\r\n"  # jsmail refuses bare LF; aiosmtpd keeps it


class LoopbackTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.ca = trustme.CA()
        directory = self.mktemp()
        os.makedirs(directory)
        certificate = self.leaf = self.ca.issue_cert("mx.test")
        self.certPath, self.keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        certificate.private_key_and_cert_chain_pem.write_to_path(self.certPath)
        certificate.private_key_pem.write_to_path(self.keyPath)
        self.trustRoot = ssl.Certificate.loadPEM(self.ca.cert_pem.bytes())

    def jsmail(self, implicitTLS: bool = False, tls: Any = "default", **settings: Any) -> int:
        """jsmail's server on a loopback port, with STARTTLS and AUTH (user u, password p)."""
        self.queue = MemoryQueue()
        portal = Portal(MailRealm(["localhost"]), [InMemoryUsernamePasswordDatabaseDontUse(**{"u": b"p", "a@example.org": b"p"})])
        tlsOptions = ServerTLS(self.certPath, self.keyPath) if tls == "default" else tls
        factory = self.factory = ESMTPServerFactory(Listener(
            ServerSettings(hostname="mx.test", authFailureDelay=0.0, **settings), self.queue, _reactor,
            tls=tlsOptions, portal=portal, implicitTLS=implicitTLS))
        listening: Factory = TLSMemoryBIOFactory(tlsOptions, False, factory) if implicitTLS else factory
        port = _reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def sendmail(self, port: int, msg: OutgoingMessage, **settings: Any) -> Any:
        """sendmail, then wait (bounded) for jsmail's side of the connection to close."""
        settings.setdefault("heloName", "client.test")
        result = yield sendmail(_reactor, "127.0.0.1", port, msg, ClientSettings(**settings))
        for _ in range(100):
            if getattr(self, "factory", None) is None or self.factory.connections == 0:
                break
            yield task.deferLater(_reactor, 0.01, lambda: None)
        return result

    def received(self) -> tuple[bytes, bytes]:
        """The one queued message, as the Received header jsmail added and the rest."""
        [(_, body)] = self.queue.messages.values()
        end = 0
        while True:
            end = body.index(b"\r\n", end) + 2
            if body[end : end + 1] != b"\t":
                return body[:end], body[end:]

    @defer.inlineCallbacks
    def test_jsmail_pipelined_byte_identical(self) -> Any:
        port = self.jsmail(tls=None)
        msg = message(BODY, "x@localhost", "y@localhost")
        result = yield self.sendmail(port, msg, tls="none")
        self.assertEqual([r.status for r in result], [DELIVERED, DELIVERED])
        self.assertRegex(str(result[0].reply), r"^250 2\.0\.0 Queued as [0-9A-F]+$")
        self.assertTrue(result[0].fromPeer)
        self.assertEqual(self.received()[1], BODY)
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual(envelope.mailParams, {"SIZE": str(len(BODY)), "BODY": "8BITMIME"})

    @defer.inlineCallbacks
    def test_lf_only_message_refused_before_connecting(self) -> Any:
        """An embedder's message made with ``EmailMessage.as_bytes()`` (LF line ends)
        used to be sent, refused by the peer after DATA, or passed on damaged."""
        port = self.jsmail(tls=None)
        result = yield self.sendmail(port, message(b"Subject: lf\n\nbare LF body\n", "x@localhost"), tls="none")
        self.assertEqual([(r.status, str(r.reply)) for r in result],
                         [(DeliveryStatus.PERMANENT, str(replies.BARE_LINE_ENDING))])
        self.assertIn("OutgoingMessage.fromBytes", result[0].detail)
        self.assertEqual((self.factory.connections, self.queue.messages), (0, {}))

    @defer.inlineCallbacks
    def test_from_bytes_converts_lf_line_ends(self) -> Any:
        port = self.jsmail(tls=None)
        msg = OutgoingMessage.fromBytes("a@example.org", ["x@localhost"], b"Subject: lf\n\nbare LF body\n")
        result = yield self.sendmail(port, msg, tls="none")
        self.assertEqual([r.status for r in result], [DELIVERED])
        self.assertEqual(self.received()[1], b"Subject: lf\r\n\r\nbare LF body\r\n")

    @defer.inlineCallbacks
    def test_aiosmtpd_byte_identical(self) -> Any:
        """Without PIPELINING (aiosmtpd does not offer it), and with SMTPUTF8."""
        collector = _Collector()
        controller = _AnyPortController(collector, hostname="127.0.0.1", port=0, enable_SMTPUTF8=True)
        controller.start()
        self.addCleanup(controller.stop)
        # Measured, as the queue's messages are (sendmail() refuses an unmeasured one
        # with bare line ends, below): the content goes as it is.
        msg = replace(message(BARE_LF_BODY, "b@example.net", "ü@example.net"), eightBit=True)
        result = yield self.sendmail(controller.port, msg, tls="none")
        self.assertEqual([r.status for r in result], [DELIVERED, DELIVERED])
        [envelope] = collector.envelopes
        self.assertEqual(envelope.original_content, BARE_LF_BODY)
        self.assertEqual((envelope.mail_from, envelope.rcpt_tos),
                         ("a@example.org", ["b@example.net", "ü@example.net"]))
        self.assertEqual(envelope.mail_options, [f"SIZE={len(BARE_LF_BODY)}", "BODY=8BITMIME", "SMTPUTF8"])

    @defer.inlineCallbacks
    def test_starttls_verified(self) -> Any:
        port = self.jsmail()
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tls="verify", tlsHostname="mx.test",
                                     trustRoot=self.trustRoot)
        self.assertEqual(result[0].status, DELIVERED)
        self.assertRegex(self.received()[0],
                         rb"\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n\tby mx\.test .* ESMTPS ")

    @defer.inlineCallbacks
    def test_starttls_wrong_name_is_temporary(self) -> Any:
        port = self.jsmail()
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tls="verify",
                                     tlsHostname="other.test", trustRoot=self.trustRoot)
        [(recipient, status, detail)] = [(r.recipient, r.status, r.describe()) for r in result]
        self.assertEqual((recipient, status), ("x@localhost", TEMPORARY))
        self.assertTrue(detail.startswith("454 4.7.5 TLS with the mail exchanger failed (TLS with 127.0.0.1 failed"),
                        detail)
        self.assertEqual(self.queue.messages, {})

    @defer.inlineCallbacks
    def test_starttls_untrusted_ca_is_temporary(self) -> Any:
        port = self.jsmail()
        otherRoot = ssl.Certificate.loadPEM(trustme.CA().cert_pem.bytes())
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tls="verify", tlsHostname="mx.test",
                                     trustRoot=otherRoot)
        self.assertEqual(result[0].status, TEMPORARY)
        self.assertIn("TLS", result[0].detail)

    @defer.inlineCallbacks
    def test_opportunistic_falls_back_to_plaintext(self) -> Any:
        """A server whose TLS fails (it wants a client certificate): sendmail tries again
        without TLS and delivers."""
        with open(self.certPath, "rb") as f:
            picky = ssl.PrivateCertificate.loadPEM(f.read()).options(self.trustRoot)
        port = self.jsmail(tls=picky)
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"))
        self.assertEqual(result[0].status, DELIVERED)
        self.assertIn(b" with ESMTP id ", self.received()[0])

    @defer.inlineCallbacks
    def test_dane_ee_without_a_trusted_ca(self) -> Any:
        """DANE replaces PKIX: the records vouch for the key, the CA is trusted by nobody."""
        port = self.jsmail()
        record = tlsa(DANE_EE, 1, 1, self.leaf.cert_chain_pems[0])
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tlsHostname="mx.test", tlsa=(record,))
        self.assertEqual(result[0].status, DELIVERED)
        self.assertIn(b" with ESMTPS id ", self.received()[0])

    @defer.inlineCallbacks
    def test_dane_other_certificate_is_temporary(self) -> Any:
        port = self.jsmail()
        record = tlsa(DANE_EE, 1, 1, trustme.CA().issue_cert("mx.test").cert_chain_pems[0])
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tlsHostname="mx.test", tlsa=(record,))
        self.assertEqual([result], results(("x@localhost", TEMPORARY,
                                            "454 4.7.5 The mail exchanger's certificate does not match its TLSA "
                                            "records (certificate of mx.test does not match its TLSA records)")))
        self.assertEqual(self.queue.messages, {})

    @defer.inlineCallbacks
    def test_dane_without_starttls_is_temporary(self) -> Any:
        port = self.jsmail(tls=None)
        record = tlsa(DANE_EE, 1, 1, self.leaf.cert_chain_pems[0])
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tlsHostname="mx.test", tlsa=(record,))
        self.assertEqual([result], results(("x@localhost", TEMPORARY,
                                            "454 4.7.5 TLS is required but the mail exchanger does not offer "
                                            "STARTTLS (127.0.0.1 does not offer STARTTLS)")))
        self.assertEqual(self.queue.messages, {})

    @defer.inlineCallbacks
    def test_dane_no_usable_record_is_tls_unchecked(self) -> Any:
        """RFC 7672 section 2.2: TLS still required, the certificate not authenticated."""
        port = self.jsmail()
        pkix = tlsa(1, 1, 1, trustme.CA().issue_cert("mx.test").cert_chain_pems[0])  # PKIX-EE: unusable
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tlsHostname="mx.test", tlsa=(pkix,))
        self.assertEqual(result[0].status, DELIVERED)
        self.assertIn(b" with ESMTPS id ", self.received()[0])

    @defer.inlineCallbacks
    def test_auth_after_starttls(self) -> Any:
        port = self.jsmail(requireAuth=True)
        result = yield self.sendmail(port, message(b"x\r\n", "x@example.com"), tls="verify", tlsHostname="mx.test",
                                     trustRoot=self.trustRoot, username="a@example.org", password="p")
        self.assertEqual(result[0].status, DELIVERED)
        self.assertIn(b" with ESMTPSA id ", self.received()[0])

    @defer.inlineCallbacks
    def test_auth_refused_is_permanent(self) -> Any:
        port = self.jsmail(requireAuth=True)
        result = yield self.sendmail(port, message(b"x\r\n", "x@example.com"), tls="verify", tlsHostname="mx.test",
                                     trustRoot=self.trustRoot, username="u", password="wrong")
        self.assertEqual([result], results(("x@example.com", PERMANENT, "535 5.7.8 Authentication credentials invalid")))

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        port = self.jsmail(implicitTLS=True)
        result = yield self.sendmail(port, message(b"x\r\n", "x@localhost"), tls="implicit", tlsHostname="mx.test",
                                     trustRoot=self.trustRoot, username="a@example.org", password="p")
        self.assertEqual(result[0].status, DELIVERED)
        self.assertIn(b" with ESMTPSA id ", self.received()[0])

    @defer.inlineCallbacks
    def test_connection_refused(self) -> Any:
        port = _reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        result = yield self.sendmail(number, message(b"x\r\n", "b@example.net", "c@example.net"))
        self.assertEqual([r.status for r in result], [TEMPORARY, TEMPORARY])
        self.assertEqual(str(result[0].reply), "451 4.4.1 Cannot connect to the mail exchanger")
        self.assertTrue(result[0].detail.startswith(f"cannot connect to 127.0.0.1 port {number}: "), result[0].detail)
        self.assertIn("refused", result[0].detail)

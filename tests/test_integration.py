"""The whole gateway in this process, driven over real sockets on 127.0.0.1.

Clients (the standard library's smtplib, or a raw socket where the exact bytes on the
wire matter) run in threads with socket timeouts; every wait for a delivery is a
bounded poll of the Maildirs and the queue directory.
"""

from __future__ import annotations

import email
import os
import re
import smtplib
import socket
import time
from typing import Any, Iterable, Sequence

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial import unittest

from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.queue.store import MaildirQueue
from jsmail.service import MailGateway
from jsmail.testing import DNSServer

CLIENT_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

Reply = tuple[int, bytes]
Transaction = tuple[str, Sequence[str], bytes, Sequence[str]]


def smtpSession(port: int, transactions: Iterable[Transaction]) -> list[list[Reply]]:
    """Send each (sender, recipients, message, MAIL options) over one smtplib connection
    (blocking).  Return each transaction's replies: MAIL, each RCPT, and the reply to
    the final dot when every recipient was accepted."""
    results = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
        client.ehlo()
        for sender, recipients, message, options in transactions:
            replies = [client.mail(sender, list(options))] + [client.rcpt(r) for r in recipients]
            if all(code == 250 for code, _ in replies):
                replies.append(client.data(message))
            else:
                client.rset()
            results.append(replies)
    return results


def readReply(replies: Any) -> Reply:
    """One whole SMTP reply from a socket file, as smtplib gives it: the code, and the
    text of each line joined by LF."""
    lines = []
    while True:
        line = replies.readline()
        if not line.endswith(b"\r\n"):
            raise EOFError(f"connection closed after {lines!r} {line!r}")
        lines.append(line[4:-2])
        if line[3:4] == b" ":
            return int(line[:3]), b"\n".join(lines)


def pipelinedSession(port: int, envelopeCommands: bytes, content: bytes) -> tuple[list[Reply], bytes]:
    """EHLO alone, then ``envelopeCommands`` (ending with DATA) in one write, then
    ``content``, the final dot and QUIT in one write (blocking).  Return every reply and
    whatever the server sent after the last one before it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        with sock.makefile("rb") as replies:
            received = [readReply(replies)]
            sock.sendall(b"EHLO client.test\r\n")
            received.append(readReply(replies))
            sock.sendall(envelopeCommands)
            received.extend(readReply(replies) for _ in range(envelopeCommands.count(b"\r\n")))
            sock.sendall(content + b".\r\nQUIT\r\n")
            received.extend(readReply(replies) for _ in range(2))
            return received, replies.read()


def receivedHeader(protocol: str, queueId: str, recipient: str | None) -> re.Pattern[bytes]:
    """The Received header jsmail adds, as delivered (LF line ends)."""
    forClause = rb"\n\tfor <" + re.escape(recipient.encode("utf-8")) + rb">" if recipient else b""
    return re.compile(
        rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\n"
        rb"\tby mx\.test \(jsmail\) with " + protocol.encode() + rb" id " + re.escape(queueId.encode())
        + forClause + rb";\n\t\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\n"
    )


def queuedId(reply: Reply) -> str:
    """The queue id in a 250 reply to the final dot."""
    code, text = reply
    match = re.fullmatch(rb"2\.0\.0 Queued as (\w+)", text)
    if code != 250 or match is None:
        raise AssertionError(f"not a 250 queued reply: {reply!r}")
    return match.group(1).decode()


class GatewayTestCase(unittest.TestCase):
    """Starts a gateway on a fresh data directory and a free port; stops it after."""

    timeout = 60

    def setUp(self) -> None:
        self.dataDir = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def startGateway(self, **settings: Any) -> Any:
        """``settings``: more settings named as in TOML, with "__" for the "."."""
        config = loadConfig(overrides={"server.data": self.dataDir, "smtp.listen": "tcp:0:interface=127.0.0.1",
                                       "smtp.submission": [], "smtp.smtps": [], "server.hostname": "mx.test",
                                       "server.domains": ["localhost"],
                                       **{name.replace("__", "."): value for name, value in settings.items()}})
        gateway = MailGateway(config)
        gateway.privilegedStartService()
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        port = yield gateway.listeners[0].whenListening()
        self.port = port.getHost().port
        return gateway

    def send(self, *transactions: Transaction) -> defer.Deferred[list[list[Reply]]]:
        return deferToThread(smtpSession, self.port, transactions)

    @defer.inlineCallbacks
    def queueDrained(self) -> Any:
        """Wait until the queue is empty: every message accepted so far has been
        delivered (or bounced, and the bounce delivered)."""
        active = os.path.join(self.dataDir, "queue", "active")
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while os.listdir(active):
            if time.monotonic() > deadline:
                self.fail(f"still queued after {DELIVERY_TIMEOUT} s: {os.listdir(active)}")
            yield task.deferLater(reactor, POLL_INTERVAL, lambda: None)

    def mailbox(self, address: str) -> list[bytes]:
        """The messages in ``address``'s Maildir ``new/``."""
        local, _, domain = address.rpartition("@")
        new = os.path.join(self.dataDir, "mail", domain, local.lower(), "new")
        contents = []
        for name in sorted(os.listdir(new)) if os.path.isdir(new) else []:
            with open(os.path.join(new, name), "rb") as f:
                contents.append(f.read())
        return contents

    def assertDelivered(self, delivered: bytes, sender: str, recipient: str, message: bytes,
                        protocol: str, queueId: str, single: bool = True) -> None:
        """``delivered`` is ``message`` with Return-Path, Delivered-To and jsmail's
        Received header before it, all with LF line ends."""
        head = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
        self.assertEqual(delivered[: len(head)], head)
        received = receivedHeader(protocol, queueId, recipient if single else None).match(delivered, len(head))
        self.assertIsNotNone(received, delivered)
        self.assertEqual(delivered[received.end():], message.replace(b"\r\n", b"\n"))


class DeliveryTests(GatewayTestCase):
    """What arrives in the Maildir is exactly what was sent, with trace headers."""

    @defer.inlineCallbacks
    def assertRoundTrip(self, recipient: str, message: bytes, options: Sequence[str], protocol: str) -> Any:
        yield self.startGateway()
        [replies] = yield self.send(("a@example.org", [recipient], message, options))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        queueId = queuedId(replies[-1])
        yield self.queueDrained()
        [delivered] = self.mailbox(recipient)
        self.assertDelivered(delivered, "a@example.org", recipient, message, protocol, queueId)

    def test_ascii(self) -> defer.Deferred[None]:
        """A plain 7-bit message, including a line starting with a dot."""
        message = b"From: a@example.org\r\nSubject: plain\r\n\r\nHello.\r\n.dot line\r\n\r\nBye.\r\n"
        return self.assertRoundTrip("User@localhost", message, [], "ESMTP")

    def test_8bitmime(self) -> defer.Deferred[None]:
        """BODY=8BITMIME content reaches the mailbox byte for byte."""
        message = ("Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, ½ € ✓\r\n").encode()
        return self.assertRoundTrip("eight@localhost", message, ["BODY=8BITMIME"], "ESMTP")

    def test_smtputf8(self) -> defer.Deferred[None]:
        """An SMTPUTF8 message to a UTF-8 local part lands in that mailbox, and the
        Received header says UTF8SMTP."""
        message = "Subject: 你好\r\nTo: 用户@localhost\r\n\r\n你好，世界\r\n".encode()
        return self.assertRoundTrip("用户@localhost", message, ["SMTPUTF8", "BODY=8BITMIME"], "UTF8SMTP")

    @defer.inlineCallbacks
    def test_pipelined(self) -> Any:
        """A pipelining client's whole envelope in one write gets its replies in order,
        the content and QUIT in one write get 250 then 221, and both recipients get
        the message (dot-unstuffed)."""
        yield self.startGateway()
        commands = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<p@localhost>\r\nRCPT TO:<q@localhost>\r\nDATA\r\n"
        content = b"Subject: pipelined\r\n\r\n..leading dot\r\nend\r\n"
        replies, after = yield deferToThread(pipelinedSession, self.port, commands, content)
        self.assertEqual([code for code, _ in replies], [220, 250, 250, 250, 250, 354, 250, 221])
        self.assertIn(b"PIPELINING", replies[1][1].split(b"\n"))
        self.assertEqual(after, b"")
        queueId = queuedId(replies[6])
        yield self.queueDrained()
        for recipient in ("p@localhost", "q@localhost"):
            [delivered] = self.mailbox(recipient)
            self.assertDelivered(delivered, "a@example.org", recipient, b"Subject: pipelined\r\n\r\n.leading dot\r\nend\r\n",
                                 "ESMTP", queueId, single=False)


class RelayTests(GatewayTestCase):
    """No open relay; a trusted client may relay, and when the destination takes no
    mail its sender is told so."""

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """An untrusted client cannot send to a non-local domain."""
        yield self.startGateway()
        [replies] = yield self.send(("a@example.org", ["x@example.org"], b"Subject: relay\r\n\r\nx\r\n", []))
        self.assertEqual(replies[0][0], 250)
        code, text = replies[1]
        self.assertEqual((code, text[:6]), (550, b"5.7.1 "))
        self.assertEqual(len(replies), 2)

    @defer.inlineCallbacks
    def test_trustedBounces(self) -> Any:
        """A trusted client's relayed message is accepted, then bounced (the domain
        publishes a null MX, on a loopback DNS server): the local sender receives one
        multipart/report saying 5.1.10."""
        dnsServer = DNSServer({"example.org": [("example.org", dns.Record_MX(0, b""))]})
        self.addCleanup(dnsServer.stop)
        yield self.startGateway(server__trusted_networks=["127.0.0.0/8"], remote__dns_server=dnsServer.start())
        message = b"From: s@localhost\r\nSubject: to the world\r\n\r\nHello.\r\n"
        [replies] = yield self.send(("s@localhost", ["x@example.org"], message, []))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        queueId = queuedId(replies[-1])
        yield self.queueDrained()
        [bounce] = self.mailbox("s@localhost")
        self.assertTrue(bounce.startswith(b"Return-Path: <>\nDelivered-To: s@localhost\n"), bounce)
        report = email.message_from_bytes(bounce)
        self.assertEqual((report.get_content_type(), report.get_param("report-type")),
                         ("multipart/report", "delivery-status"))
        [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        perMessage, *perRecipient = status.get_payload()
        self.assertEqual(perMessage["X-Jsmail-Queue-ID"], queueId)
        self.assertEqual([(g["Final-Recipient"], g["Action"], g["Status"]) for g in perRecipient],
                         [("rfc822; x@example.org", "failed", "5.1.10")])
        [headers] = [p for p in report.walk() if p.get_content_type() == "text/rfc822-headers"]
        self.assertIn(b"Subject: to the world", headers.get_payload(decode=True))


class SizeLimitTests(GatewayTestCase):
    @defer.inlineCallbacks
    def test_tooBig(self) -> Any:
        """A message over the size limit is refused after its final dot with 552 5.3.4,
        and the same connection then sends a normal message."""
        yield self.startGateway(smtp__max_message_size=2000)
        big = b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 30
        small = b"Subject: small\r\n\r\nfits\r\n"
        [refused, accepted] = yield self.send(
            ("a@example.org", ["big@localhost"], big, []),
            ("a@example.org", ["small@localhost"], small, []),
        )
        self.assertEqual([code for code, _ in refused[:2]], [250, 250])
        code, text = refused[2]
        self.assertEqual((code, text[:6]), (552, b"5.3.4 "))
        self.assertEqual([code for code, _ in accepted], [250, 250, 250])
        queueId = queuedId(accepted[-1])
        yield self.queueDrained()
        self.assertEqual(self.mailbox("big@localhost"), [])
        [delivered] = self.mailbox("small@localhost")
        self.assertDelivered(delivered, "a@example.org", "small@localhost", small, "ESMTP", queueId)


class RecoveryTests(GatewayTestCase):
    @defer.inlineCallbacks
    def test_queuedBeforeStart(self) -> Any:
        """A message left in the queue by an earlier run is delivered once the gateway
        starts; one left half-received (never acknowledged) is discarded."""
        queue = MaildirQueue(os.path.join(self.dataDir, "queue"), defer.maybeDeferred)
        envelope = Envelope(sender="a@example.org", recipients=(Recipient("later@localhost"),), arrival=time.time())
        message = queue.newMessage(envelope)
        content = b"Subject: waiting\r\n\r\nStill here.\r\n"
        message.write(content)
        yield message.commit()
        unfinished = Envelope(sender="a@example.org", recipients=(Recipient("lost@localhost"),))
        with open(os.path.join(queue.tmpDir, "unfinished"), "wb") as f:
            f.write(unfinished.toBytes() + b"\nSubject: cut off\r\n")

        yield self.startGateway()
        yield self.queueDrained()
        self.assertEqual(self.mailbox("later@localhost"),
                         [b"Return-Path: <a@example.org>\nDelivered-To: later@localhost\n" + content.replace(b"\r\n", b"\n")])
        self.assertEqual(self.mailbox("lost@localhost"), [])
        self.assertNotIn("unfinished", os.listdir(queue.tmpDir))


def openFilesUnder(directory: str) -> list[str]:
    """The files under ``directory`` this process has open (Linux: from /proc)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return sorted(p for p in paths if p.startswith(directory + os.sep))


class ShutdownTests(GatewayTestCase):
    @defer.inlineCallbacks
    def test_stopReleasesFiles(self) -> Any:
        """Once stopped, the gateway holds no file open under its data directory."""
        if not os.path.isdir("/proc/self/fd"):
            raise unittest.SkipTest("needs /proc/self/fd")
        gateway = yield self.startGateway()
        [replies] = yield self.send(("a@example.org", ["u@localhost"], b"Subject: x\r\n\r\nx\r\n", []))
        self.assertEqual(replies[-1][0], 250)
        yield self.queueDrained()
        yield gateway.stopService()
        self.assertEqual(openFilesUnder(self.dataDir), [])

"""Clients that try to hold the server's memory, time or connection slots, or to trick
it: each attack from the security review, as a dialog in memory with a Clock."""

from __future__ import annotations

import errno
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from jsmail.auth import AnyOfCheckers, MailRealm
from jsmail.envelope import Envelope
from jsmail.interfaces import IIncomingMessage, IMessageSink
from jsmail.policy.base import MessagePolicy, Policy
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ESMTPServer, ESMTPServerFactory, Listener, ServerSettings
from jsmail.testing import Dialog, RecordingTransport

QUEUED = rb"250 2\.0\.0 Queued as \w+\r\n"


def dialog(clock: Clock | None = None, **settings: object) -> Dialog:
    settings.setdefault("hostname", "mx.test")
    d = Dialog(ServerSettings(**settings), MemoryQueue(), clock=clock)  # type: ignore[arg-type]
    d.read()
    return d


@implementer(IIncomingMessage)
class _FullDiskMessage:
    """A queue file on a disk that fills up: the first write (the Received field) fits,
    every later one fails, and so does throwing the file away."""

    queueId = "FULL"
    size = 0
    written = 0

    def write(self, data: bytes) -> None:
        self.written += 1
        if self.written > 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    def commit(self) -> object:
        raise AssertionError("a message that could not be written is never committed")

    def abort(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@implementer(IMessageSink)
class _FullDisk:
    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return _FullDiskMessage()


class ReplyFloodTests(SynchronousTestCase):
    def test_pipelinedNoopFloodStopsReading(self) -> None:
        """Security issue: a client that pipelines NOOPs and never reads the replies
        made the server buffer them without end.  When the transport's buffer of
        unsent replies is full, the server stops reading and answering."""
        d = dialog()
        d.send(b"EHLO client.test\r\n")
        d.transport.producer.pauseProducing()  # the transport says: its write buffer is full
        self.assertEqual(d.transport.producerState, "paused", "no more is read from the client")
        self.assertEqual(d.send(b"NOOP\r\n" * 1000), b"", "nothing is answered while paused")
        d.transport.producer.resumeProducing()
        out = d.read()
        self.assertEqual(out.count(b"250 2.0.0 OK\r\n"), 120, "then answered: 100 junk commands, then 20 errors")
        self.assertTrue(out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n"))

    def test_junkCommandsCountAsErrors(self) -> None:
        """NOOP, RSET, VRFY and HELP past max_junk_commands count as errors, so a
        flood of them ends the session (Postfix's smtpd_junk_command_limit)."""
        d = dialog(maxJunkCommands=3, maxErrors=2)
        d.send(b"EHLO client.test\r\n")
        out = d.send(b"NOOP\r\nRSET\r\nHELP\r\nNOOP\r\n")
        self.assertFalse(d.closed, "the 4th junk command is the first error")
        out = d.send(b"VRFY someone\r\n")
        self.assertTrue(out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n"), out)
        self.assertTrue(d.closed)


class SlowClientTests(SynchronousTestCase):
    def test_slowlorisCommandLineTimesOut(self) -> None:
        """Security review L-9: the idle timer used to restart at every byte, so one
        byte every few seconds held a slot for ever.  A command line must now be
        complete within the idle time-out of its first byte."""
        clock = Clock()
        d = dialog(clock, idleTimeout=10.0)
        for _ in range(4):
            d.send(b"N")
            clock.advance(3)
        self.assertEqual(d.read(), b"421 4.4.2 Idle for too long, closing connection\r\n")
        self.assertTrue(d.closed)

    def test_dataTrickleRunsOutOfTime(self) -> None:
        """Message data sent below min_data_rate runs out of time."""
        clock = Clock()
        d = dialog(clock, idleTimeout=30.0, minDataRate=500.0)
        d.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        out = b""
        for _ in range(10):
            out += d.send(b"x" * 10)  # 2 octets per second
            clock.advance(5)
        self.assertTrue(d.closed)
        self.assertTrue((out + d.read()).endswith(b"421 4.4.2 Idle for too long, closing connection\r\n"))

    def test_dataAtTheRateKeepsGoing(self) -> None:
        """A client sending at least min_data_rate is never cut off, however long the
        message takes (within the size limit)."""
        clock = Clock()
        d = dialog(clock, idleTimeout=30.0, minDataRate=500.0)
        d.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        d.read()
        for _ in range(60):  # two minutes at 1000 octets per second
            d.send(b"y" * 998 + b"\r\n")
            clock.advance(1)
        self.assertFalse(d.closed)
        self.assertRegex(d.send(b".\r\n"), QUEUED)

    def test_sessionDeadline(self) -> None:
        """However busy, a session ends after max_session_time."""
        clock = Clock()
        d = dialog(clock, maxSessionTime=60.0, maxJunkCommands=1000)
        d.send(b"EHLO c.test\r\n")
        for _ in range(59):
            d.send(b"NOOP\r\n")
            clock.advance(1)
        d.read()
        self.assertFalse(d.closed)
        clock.advance(1)
        self.assertEqual(d.read(), b"421 4.4.2 Session lasted too long, closing connection\r\n")
        self.assertTrue(d.closed)

    def test_ipv6ClientsOfOneSlash64CountAsOne(self) -> None:
        """Security review L-9: the per-client limit was per address, and an IPv6
        client holds 2^64 of them."""
        factory = ESMTPServerFactory(Listener(ServerSettings(maxConnectionsPerClient=2), MemoryQueue(), Clock()))

        def connect(host: str) -> bytes:
            transport = StringTransport()
            factory.buildProtocol(IPv6Address("TCP", host, 1)).makeConnection(transport)
            return transport.value()

        self.assertTrue(connect("2001:db8::1").startswith(b"220"))
        self.assertTrue(connect("2001:db8::2").startswith(b"220"))
        self.assertEqual(connect("2001:db8::ffff:1"), b"421 4.7.0 Too many connections from your address, "
                                                      b"try again later\r\n")
        self.assertTrue(connect("2001:db8:0:1::1").startswith(b"220"), "another /64 is another client")


class FullDiskTests(SynchronousTestCase):
    def test_writeErrorDuringDataIs452AndTheSessionGoesOn(self) -> None:
        """A crash trial on a full disk: the write error escaped from dataReceived, the
        connection dropped without a reply and its slot was never given back.  Now the
        rest of the data is read, the client hears 452 4.3.1, and the session goes on."""
        factory = ESMTPServerFactory(Listener(ServerSettings(hostname="mx.test"), _FullDisk(), Clock()))
        transport = StringTransport()
        server = factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1))
        server.makeConnection(transport)
        server.dataReceived(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        transport.clear()
        server.dataReceived(b"Subject: big\r\n\r\n" + b"z" * 100_000 + b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(transport.value(), b"452 4.3.1 Insufficient system storage, try again later\r\n"
                                            b"250 2.0.0 OK\r\n")
        server.dataReceived(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nshort\r\n")
        server.connectionLost(None)  # throwing the half-written file away fails too
        self.assertEqual((factory.connections, factory.perClient), (0, {}), "the slot is given back")

    def test_mailRefusedWhileTheQueueIsNearlyFull(self) -> None:
        """MAIL gets 452 4.3.1 at once while the queue's file system has less room than
        the minimum (plus the SIZE given), rather than after the whole message."""
        asked: list[int] = []
        d = Dialog(ServerSettings(hostname="mx.test", minFreeSpace=1000), MemoryQueue(),
                   roomFor=lambda octets: asked.append(octets) or False)
        d.send(b"EHLO c.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.test> SIZE=5000\r\n"),
                         b"452 4.3.1 Insufficient system storage, try again later\r\n")
        self.assertEqual(asked, [6000])


class TrickTests(SynchronousTestCase):
    def test_plaintextAuthIsForgottenAtStarttls(self) -> None:
        """Security review L-6: an AUTH made in plaintext survived STARTTLS (RFC 3207
        section 4.2: forget everything), so a man in the middle could log a victim's
        session in as himself."""
        users = InMemoryUsernamePasswordDatabaseDontUse(u=b"p")
        portal = Portal(MailRealm(["localhost"]), [AnyOfCheckers([users])])
        d = Dialog(ServerSettings(hostname="mx.test", allowPlaintextAuth=True, authFailureDelay=0.0), MemoryQueue(),
                   policies=(RelayControl(frozenset({"localhost"}).__contains__),), tls=object(), portal=portal)
        d.send(b"EHLO c.test\r\n")
        self.assertEqual(d.send(b"AUTH PLAIN AHUAcA==\r\n"), b"235 2.7.0 Authentication successful\r\n")
        d.send(b"STARTTLS\r\n")
        self.assertIn(b"AUTH PLAIN LOGIN", d.send(b"EHLO c.test\r\n"), "AUTH is offered again")
        out = d.send(b"MAIL FROM:<u@localhost>\r\nRCPT TO:<x@remote.example>\r\n")
        self.assertEqual(out, b"250 2.1.0 Sender OK\r\n550 5.7.1 Relaying to <x@remote.example> denied: "
                              b"remote.example is not a local domain\r\n")

    def test_nulOctetsInContentAreRefused(self) -> None:
        """Security review I-2: NUL octets in content were stored and passed on,
        breaking parsers downstream (RFC 5322 section 2.3 forbids them)."""
        d = dialog()
        out = d.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\x00there\r\n.\r\n")
        self.assertTrue(out.endswith(b"550 5.6.0 Message has NUL octets (see RFC 5322 section 2.3)\r\n"), out)
        allowed = dialog(allowNul=True)
        out = allowed.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\x00\r\n.\r\n")
        self.assertRegex(out, rb"250 2\.0\.0 Queued as \w+\r\n$")

    def test_heloNameIsEchoedSafely(self) -> None:
        """Security review I-7: the EHLO argument was echoed raw, line separators and
        all; with helo_check = "syntax" a name that is no domain is refused."""
        out = dialog().send("EHLO a\u2028b\u0085c\r\n".encode())
        self.assertTrue(out.startswith(b"250-mx.test greets a?b?c\r\n"), out)
        strict = dialog(strictHelo=True)
        self.assertEqual(strict.send(b"EHLO not_a_domain!\r\n"),
                         b"501 5.5.4 EHLO/HELO needs a domain name or an address literal\r\n")
        self.assertTrue(strict.send(b"EHLO [192.0.2.1]\r\n").startswith(b"250-mx.test greets [192.0.2.1]\r\n"))

    def test_ipv6ZoneIdInAnAddressLiteralIsRefused(self) -> None:
        """Found by fuzzing: an IPv6 literal's zone id took any characters (spaces,
        parentheses), which reached the Received header."""
        d = dialog()
        d.send(b"EHLO c.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@[IPv6:fe80::1%eth0 (x)]>\r\n")[:9], b"501 5.1.7")

    def test_dsnInjectionThroughEnvidAndOrcptIsRefused(self) -> None:
        """Security review L-1: ENVID and ORCPT are xtext, whose "+0D+0A" decodes to a
        line end; written into a DSN, it forged fields and MIME parts.  A value that
        does not decode to printable text is refused at MAIL or RCPT with 501 5.5.4,
        so no queued message carries one."""
        d = dialog()
        d.send(b"EHLO c.test\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<victim@victim.test> ENVID=abc+0D+0A+0D+0A--INJECTED-PART+0D+0A"
                                b"X-Injected:+20yes\r\n"),
                         b"501 5.5.4 ENVID must decode to printable ASCII (RFC 3461)\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.test> ENVID=id+00\r\n"),
                         b"501 5.5.4 ENVID must decode to printable ASCII (RFC 3461)\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.test> ENVID=QQ+2B1+20x\r\n"), b"250 2.1.0 Sender OK\r\n")
        refused = b"501 5.5.4 ORCPT's address must decode to printable text\r\n"
        for orcpt in (b"rfc822;x+0AFinal-Recipient:+20rfc822;+20ceo@bank.example+0AAction:+20delivered",
                      b"rfc822;x+0D", b"rfc822;x+C2+85", b"utf-8;x\\x{0A}y@b.test", b"utf-8;x\\x{2028}@b.test",
                      b"utf-8;x\\x{D800}@b.test", b"utf-8;x\\x{110000}@b.test"):
            self.assertEqual(d.send(b"RCPT TO:<x@localhost> ORCPT=" + orcpt + b"\r\n"), refused, orcpt)
        self.assertEqual(d.send("RCPT TO:<x@localhost> ORCPT=utf-8;ü@b.test\r\n".encode()),
                         refused, "raw UTF-8 (unitext) only with SMTPUTF8")
        self.assertEqual(d.send(b"RCPT TO:<x@localhost> ORCPT=rfc822;x+40localhost\r\n"),
                         b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send(b"RCPT TO:<y@localhost> ORCPT=utf-8;j\\x{F6}rg@b.test\r\n"),
                         b"250 2.1.5 Recipient OK\r\n")
        d.send(b"RSET\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\n")
        self.assertEqual(d.send("RCPT TO:<x@localhost> ORCPT=utf-8;jörg@b.test\r\n".encode()),
                         b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send("RCPT TO:<y@localhost> ORCPT=utf-8;j\u2028@b.test\r\n".encode()), refused)


class _SlowSenderCheck(Policy):
    """A check of MAIL whose answers wait until the test fires them (a DNS wait)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, defer.Deferred[None]]] = []

    def checkSender(self, session: object, address: object, params: dict) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((str(address), d))
        return d


class ChecksInFlightTests(SynchronousTestCase):
    def sessions(self, check: Policy, *clients: str, **settings: object) -> list[RecordingTransport]:
        """One listener, a session from each client address, each past EHLO."""
        listener = Listener(ServerSettings(hostname="mx.test", **settings), MemoryQueue(), Clock(),  # type: ignore[arg-type]
                            checks=(check,))
        transports = []
        for n, client in enumerate(clients):
            server = ESMTPServer(listener)
            address = IPv6Address("TCP", client, 40000 + n) if ":" in client else IPv4Address("TCP", client, 40000 + n)
            transport = RecordingTransport(peerAddress=address)
            server.makeConnection(transport)
            server.dataReceived(b"EHLO c.test\r\n")
            transport.clear()
            transports.append((server, transport))
        return transports

    def test_oneClientsManySessionsHoldAtMostFourChecksInFlight(self) -> None:
        """Security review M-4: twenty sessions from one address, each with a sender
        whose SPF or DKIM lookup hangs, held twenty of the ten threads the checks
        share, and AUTH and every other client waited.  One client's checks in flight
        are now at most max_checks_per_client (4); its other sessions wait their turn,
        and other clients are not held up."""
        check = _SlowSenderCheck()
        clients = ["192.0.2.1"] * 6 + ["2001:db8::1", "2001:db8::2", "198.51.100.7"]
        sessions = self.sessions(check, *clients)
        for n, (server, _) in enumerate(sessions):
            server.dataReceived(b"MAIL FROM:<s%d@slow.test>\r\n" % n)
        waited = [sender for sender, _ in check.waiting]
        self.assertEqual(waited, ["s0@slow.test", "s1@slow.test", "s2@slow.test", "s3@slow.test",
                                  "s6@slow.test", "s7@slow.test", "s8@slow.test"])
        check.waiting[0][1].callback(None)
        self.assertEqual(sessions[0][1].value(), b"250 2.1.0 Sender OK\r\n")
        self.assertEqual(check.waiting[-1][0], "s4@slow.test", "the first waiting session's turn")
        for _, d in check.waiting[1:4]:
            d.callback(None)
        self.assertEqual(check.waiting[-1][0], "s5@slow.test")
        self.assertEqual(len(check.waiting), 9)
        for _, d in check.waiting[4:]:
            if not d.called:
                d.callback(None)
        self.assertEqual([transport.value() for _, transport in sessions], [b"250 2.1.0 Sender OK\r\n"] * 9)

    def test_checksPerClientAreASetting(self) -> None:
        check = _SlowSenderCheck()
        sessions = self.sessions(check, *["192.0.2.1"] * 3, maxChecksPerClient=1)
        for n, (server, _) in enumerate(sessions):
            server.dataReceived(b"MAIL FROM:<s%d@slow.test>\r\n" % n)
        self.assertEqual(len(check.waiting), 1)


class _WholeMessageCheck(MessagePolicy):
    """A content check that reads the whole message, then waits for the test."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[None]] = []

    @defer.inlineCallbacks
    def checkMessage(self, session: object, content: Any) -> Any:
        yield content.read()
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append(d)
        yield d


class CheckMemoryTests(SynchronousTestCase):
    def test_manyLargeMessagesCheckedAtOnceGet451(self) -> None:
        """Security review M-12: sixteen sessions, each with a 24 MiB message whose
        checks waited, held a copy of every message at once (1 GiB).  A listener's
        end-of-data work now holds at most max_check_memory octets of whole messages;
        the message that would go past it gets 451 4.3.1, and once the others are
        done a message gets through again."""
        check = _WholeMessageCheck()
        queue = MemoryQueue()
        listener = Listener(ServerSettings(hostname="mx.test", maxCheckMemory=700_000), queue, Clock(),
                            checks=(check,))
        message = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300 + b".\r\n"  # 300 kB, over the spool's 256 KiB

        def send(n: int) -> RecordingTransport:
            server = ESMTPServer(listener)
            transport = RecordingTransport(peerAddress=IPv4Address("TCP", f"192.0.2.{n}", 40000))
            server.makeConnection(transport)
            server.dataReceived(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n" + message)
            return transport

        first, second, third = send(1), send(2), send(3)
        self.assertEqual(len(check.waiting), 2)
        self.assertTrue(third.value().endswith(
            b"451 4.3.1 Too much mail is being checked at once, try again later\r\n"), third.value()[-200:])
        for d in check.waiting:
            d.callback(None)
        for transport in (first, second):
            self.assertRegex(transport.value(), QUEUED + b"$")
        fourth = send(4)
        check.waiting[-1].callback(None)
        self.assertRegex(fourth.value(), QUEUED + b"$")
        self.assertEqual(len(queue.messages), 3)

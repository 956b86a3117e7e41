"""Pooled remote sessions against a real peer on loopback that closes them at the worst
moments (as a peer's idle timeout does), and ``sendmail`` keeping its 8-bit scan off
the reactor thread."""

from __future__ import annotations

import io
import threading
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import TestCase

from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.settings import RemoteSettings
from jsmail.smtp.client import ClientSettings
from jsmail.smtp.commands import OutgoingMessage
from jsmail.smtp.connect import sendmail

BODY = b"Subject: pooled\r\n\r\nbody\r\n"


class ClosingPeer(LineOnlyReceiver):
    """A plain SMTP peer (no PIPELINING) that closes the connection without a word
    when its factory says: ``"reset"`` at the first RSET (the close crosses the
    client's RSET), ``"idle"`` just after each message is taken."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.inData = False
        self.sendLine(b"220 peer.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.inData:
            if line == b".":
                self.inData = False
                self.factory.messages += 1
                self.sendLine(b"250 2.0.0 taken")
                if self.factory.closes == "idle":
                    self.transport.loseConnection()
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-peer.test")
            self.sendLine(b"250 8BITMIME")
        elif verb == b"RSET" and self.factory.closes == "reset":
            self.transport.loseConnection()
        elif verb == b"DATA":
            self.inData = True
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")


class PoolTests(TestCase):
    timeout = 30

    def peer(self, closes: str) -> int:
        factory = Factory.forProtocol(ClosingPeer)
        factory.connections, factory.messages, factory.closes = 0, 0, closes
        self.factory = factory
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def remote(self, port: int) -> RemoteDelivery:
        remote = RemoteDelivery(reactor, deferToThread, None,
                                RemoteSettings(smarthost=f"127.0.0.1:{port}", smarthostTLS="none", heloHost="me.test",
                                               idleTimeout=10.0, connectTimeout=5.0))
        self.addCleanup(remote.close)
        return remote

    def deliver(self, remote: RemoteDelivery, n: int) -> defer.Deferred[list[Any]]:
        envelope = Envelope("a@me.test", (Recipient(f"r{n}@far.test"),))
        return remote.deliver(QueuedMessage(f"Q{n}", envelope, lambda: io.BytesIO(BODY)), envelope.recipients)

    @defer.inlineCallbacks
    def test_closeDuringRsetIsRetriedOnANewSession(self) -> Any:
        """The peer's close crossed the RSET that took the pooled session up: that
        used to defer the message (451 connection lost) until the next retry."""
        remote = self.remote(self.peer("reset"))
        for n in range(3):
            [result] = yield self.deliver(remote, n)
            self.assertEqual((result.status, str(result.reply)), (DeliveryStatus.DELIVERED, "250 2.0.0 taken"))
        self.assertEqual((self.factory.messages, self.factory.connections), (3, 3))

    @defer.inlineCallbacks
    def test_idleSessionClosedByThePeerIsReplaced(self) -> Any:
        remote = self.remote(self.peer("idle"))
        [first] = yield self.deliver(remote, 1)
        yield task.deferLater(reactor, 0.1, lambda: None)  # the peer hangs up meanwhile
        [second] = yield self.deliver(remote, 2)
        self.assertEqual([first.status, second.status], [DeliveryStatus.DELIVERED] * 2)
        self.assertEqual((self.factory.messages, self.factory.connections), (2, 2))

    @defer.inlineCallbacks
    def test_openSessionIsStillReused(self) -> Any:
        remote = self.remote(self.peer("never"))
        for n in range(3):
            yield self.deliver(remote, n)
        self.assertEqual((self.factory.messages, self.factory.connections), (3, 1))


class SendmailTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_eightBitScanIsOffTheReactorThread(self) -> Any:
        """sendmail() read the whole message for 8-bit octets on the reactor thread;
        now the scan runs with ``runInThread`` and the client only streams it."""
        factory = Factory.forProtocol(ClosingPeer)
        factory.connections, factory.messages, factory.closes = 0, 0, "never"
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        opened: list[bool] = []
        scans: list[str] = []

        def openMessage() -> io.BytesIO:
            opened.append(threading.current_thread() is threading.main_thread())
            return io.BytesIO(b"Subject: caf\xc3\xa9\r\n\r\n8-bit\r\n")

        def runInThread(f: Any, *args: Any) -> defer.Deferred[Any]:
            scans.append(f.__name__)
            return deferToThread(f, *args)

        message = OutgoingMessage("a@me.test", (Recipient("b@far.test"),), {}, 30, openMessage)
        [result] = yield sendmail(reactor, "127.0.0.1", port.getHost().port, message,
                                  ClientSettings(heloName="me.test", tls="none"), runInThread=runInThread)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertEqual((scans, opened), (["_hasEightBit"], [False, True]))

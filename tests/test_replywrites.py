"""How smtpd's replies reach the socket: the reply to the last of a pipelined group at
once, the ones before it with it (RFC 2920), and never held back by Nagle's algorithm
(a pipelining client waited 40 ms for its delayed ACK on every transaction)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from jsmail.smtp import server as smtpServer
from jsmail.smtp.server import ESMTPServerFactory
from jsmail.testing import Dialog


class PipelinedRepliesTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.sentAtOnce: list[bytes] = []
        self.patch(smtpServer, "writeNow", lambda transport, data: self.sentAtOnce.append(data))
        self.dialog = Dialog()
        self.dialog.read()  # the greeting went out at once
        self.sentAtOnce.clear()

    def test_repliesToAPipelinedGroupGoOutWithItsLast(self) -> None:
        """The replies to commands with more commands behind them are left to the
        transport's buffer; the last one's goes to the socket, and takes them along."""
        buffered = self.dialog.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
        self.assertEqual(buffered.count(b"\r\n250 "), 2)  # EHLO's last line and MAIL's, through write
        self.assertEqual(self.sentAtOnce, [b"250 2.0.0 OK\r\n"])

    def test_lockStepCommandIsSentAtOnce(self) -> None:
        self.assertEqual(self.dialog.send(b"NOOP\r\n"), b"")
        self.assertEqual(self.sentAtOnce, [b"250 2.0.0 OK\r\n"])


class _Captured(protocol.ServerFactory):
    """ESMTPServerFactory's protocols, caught as they are built."""

    def __init__(self, factory: ESMTPServerFactory) -> None:
        self.factory = factory
        self.built: defer.Deferred[Any] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Any:
        server = self.factory.buildProtocol(addr)
        reactor.callLater(0, self.built.callback, server)  # type: ignore[attr-defined]  # once it is connected
        return server


class NoDelayTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_sessionSocketSendsWithoutNagle(self) -> Any:
        factory = _Captured(ESMTPServerFactory(Dialog().listener))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.addCleanup(client.close)
        server = yield factory.built
        self.addCleanup(server.transport.loseConnection)
        self.assertEqual(server.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

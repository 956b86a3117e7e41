"""jsmail._transport.writeNow on real loopback connections: what is written arrives
whole and in order whether it went to the socket at once or waited in Twisted's
buffer behind a client that stopped reading."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IReactorTCP
from twisted.trial import unittest

from jsmail._transport import writeNow

#: More than loopback's socket buffers hold, so the later writes have to wait.
BLOCKS = [b"%06d" % i + b"x" * (64 * 1024 - 6) for i in range(96)]


class _Writer(protocol.Protocol):
    """The server side: tells the test it is connected."""

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class _Reader(protocol.Protocol):
    """The client side: keeps what it reads, with reading paused until resumed."""

    def connectionMade(self) -> None:
        self.received: list[bytes] = []
        self.transport.pauseProducing()
        self.factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.done.callback(b"".join(self.received))


class WriteNowTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_client_that_stops_reading_gets_everything_in_order(self) -> Any:
        """The first writes go straight to the socket, the rest wait in Twisted's
        buffer once the socket is full; the client gets every octet, in order."""
        tcp: IReactorTCP = reactor  # type: ignore[assignment]
        server = protocol.Factory.forProtocol(_Writer)
        server.connected = defer.Deferred()  # type: ignore[attr-defined]
        port = tcp.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = protocol.ClientFactory.forProtocol(_Reader)
        client.connected, client.done = defer.Deferred(), defer.Deferred()  # type: ignore[attr-defined]
        tcp.connectTCP("127.0.0.1", port.getHost().port, client, timeout=10)
        writer, reader = yield defer.gatherResults([server.connected, client.connected])  # type: ignore[attr-defined]
        for block in BLOCKS:
            writeNow(writer.transport, block)
        transport = writer.transport
        self.assertTrue(transport._tempDataLen or len(transport.dataBuffer) > transport.offset,
                        "the socket took it all, so the buffer was never used")
        transport.loseConnection()
        reader.transport.resumeProducing()
        received = yield client.done  # type: ignore[attr-defined]
        self.assertEqual(len(received), sum(len(b) for b in BLOCKS))
        self.assertEqual(received, b"".join(BLOCKS))

    def test_other_transports_are_written_to_as_ever(self) -> None:
        """A transport that is no TCP connection (a test's, tcpserver's pipes) gets a
        plain write."""
        written: list[bytes] = []

        class Plain:
            write = written.append

        writeNow(Plain(), b"250 2.0.0 Ok\r\n")
        self.assertEqual(written, [b"250 2.0.0 Ok\r\n"])

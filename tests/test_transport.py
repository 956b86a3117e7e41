"""writeNow: a reply sent at once on a plain TCP connection, over real sockets on
127.0.0.1; what the socket does not take, and anything on another transport, goes
through Twisted's buffered write."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jsmail._transport import writeNow


class _Writer(protocol.Protocol):
    """Writes ``payload`` with writeNow as the connection is made, and notes whether the
    reactor was left watching for writability."""

    payload = b""
    sendBuffer = 0
    watched: bool | None = None

    def connectionMade(self) -> None:
        if self.sendBuffer:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sendBuffer)  # type: ignore[union-attr]
        writeNow(self.transport, self.payload)
        self.watched = self.transport in reactor.getWriters()  # type: ignore[attr-defined]
        self.factory.made.callback(self)  # type: ignore[attr-defined]


class _Reader(protocol.Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))


class _Socket:
    """A socket that takes everything sent to it, into ``sent``."""

    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)


class WriteNowTests(unittest.TestCase):
    @defer.inlineCallbacks
    def exchange(self, payload: bytes, sendBuffer: int = 0) -> Any:
        """Serve one connection whose protocol writes ``payload``; fire with the
        server protocol and what the client received."""
        factory = protocol.Factory.forProtocol(_Writer)
        factory.made = defer.Deferred()  # type: ignore[attr-defined]
        _Writer.payload, _Writer.sendBuffer = payload, sendBuffer
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        reader = _Reader(len(payload))
        client = yield protocol.ClientCreator(reactor, lambda: reader).connectTCP(
            "127.0.0.1", port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        server = yield factory.made  # type: ignore[attr-defined]
        self.addCleanup(server.transport.loseConnection)
        received = yield reader.done
        return server, received

    @defer.inlineCallbacks
    def test_replyIsSentWithoutAskingTheReactor(self) -> Any:
        server, received = yield self.exchange(b"220 mx.test ESMTP\r\n")
        self.assertEqual(received, b"220 mx.test ESMTP\r\n")
        self.assertFalse(server.watched)

    @defer.inlineCallbacks
    def test_whatTheSocketDoesNotTakeIsBufferedAndArrives(self) -> Any:
        """4 MiB against a small send buffer: the rest is written by the reactor, whole
        and in order."""
        payload = bytes(range(256)) * (4 * 4096)
        server, received = yield self.exchange(payload, sendBuffer=4096)
        self.assertTrue(server.watched)
        self.assertEqual(received, payload)

    def test_otherTransportsGetAnOrdinaryWrite(self) -> None:
        transport = StringTransport()
        writeNow(transport, b"250 ok\r\n")
        self.assertEqual(transport.value(), b"250 ok\r\n")

    def test_implicitTLSIsNotBypassed(self) -> None:
        """An smtps listener's TLS layer lends the TCP connection's attributes (a
        ProtocolWrapper's __getattr__): writeNow must still write through the layer,
        or the client reads a reply in plain text where TLS records belong."""
        written: list[bytes] = []
        sent: list[bytes] = []

        class Connection:
            TLS, connected, disconnecting, _writeDisconnected = False, True, False, False
            _tempDataBuffer: list[bytes] = []
            _tempDataLen, dataBuffer, offset, socket = 0, b"", 0, _Socket(sent)

        class TLSLayer:
            def __init__(self) -> None:
                self.transport = Connection()

            def __getattr__(self, name: str) -> Any:
                return getattr(self.transport, name)

            def write(self, data: bytes) -> None:
                written.append(data)

        writeNow(TLSLayer(), b"250 ok\r\n")
        self.assertEqual((written, sent), ([b"250 ok\r\n"], []))

    def test_startedTLSGetsAnOrdinaryWrite(self) -> None:
        """After STARTTLS the TCP connection itself is in TLS mode: its write encrypts,
        its socket must not be written to directly."""
        written: list[bytes] = []
        sent: list[bytes] = []

        class StartedTLS(tcp.Connection):
            def __init__(self) -> None:  # none of a real connection's set-up: only what writeNow reads
                self.TLS, self.connected, self.disconnecting, self._writeDisconnected = True, True, False, False
                self._tempDataBuffer, self._tempDataLen, self.dataBuffer, self.offset = [], 0, b"", 0
                self.socket = _Socket(sent)

            def write(self, data: bytes) -> None:
                written.append(data)

        writeNow(StartedTLS(), b"250 ok\r\n")
        self.assertEqual((written, sent), ([b"250 ok\r\n"], []))


#: More than loopback's socket buffers hold, so the later writes have to wait.
BLOCKS = [b"%06d" % i + b"x" * (64 * 1024 - 6) for i in range(96)]


class _Connected(protocol.Protocol):
    """The server side: tells the test it is connected."""

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)  # type: ignore[attr-defined]


class _PausedReader(protocol.Protocol):
    """The client side: keeps what it reads, with reading paused until resumed."""

    def connectionMade(self) -> None:
        self.received: list[bytes] = []
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.factory.connected.callback(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.done.callback(b"".join(self.received))  # type: ignore[attr-defined]


class OrderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_writesBehindABufferKeepTheirOrder(self) -> Any:
        """Many writes to a client that has stopped reading: the first go straight to
        the socket, the rest wait behind what Twisted holds once the socket is full
        (never past it); the client gets every octet, in order."""
        server = protocol.Factory.forProtocol(_Connected)
        server.connected = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = protocol.ClientFactory.forProtocol(_PausedReader)
        client.connected, client.done = defer.Deferred(), defer.Deferred()  # type: ignore[attr-defined]
        reactor.connectTCP("127.0.0.1", port.getHost().port, client, timeout=10)  # type: ignore[attr-defined]
        writer, reader = yield defer.gatherResults([server.connected, client.connected])  # type: ignore[attr-defined]
        for block in BLOCKS:
            writeNow(writer.transport, block)
        transport = writer.transport
        self.assertTrue(transport._tempDataBuffer or transport.dataBuffer, "the socket took it all: no buffer used")
        transport.loseConnection()
        reader.transport.resumeProducing()
        received = yield client.done  # type: ignore[attr-defined]
        self.assertEqual(len(received), sum(len(b) for b in BLOCKS))
        self.assertEqual(received, b"".join(BLOCKS))

"""The one kind of transport the SMTP protocols run on: a TCP connection that can start
TLS, with flow control both ways.  Twisted types ``Protocol.transport`` as an optional
``ITransport``; these protocols only run connected, on a transport that does all of this."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IProducer


class StreamTransport(Protocol):
    """What the SMTP protocols call on their transport (``tcp.Server``/``tcp.Client``,
    or the TLS layer wrapped around one)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def getHandle(self) -> Any: ...
    def startTLS(self, contextFactory: Any) -> None: ...
    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def writeNow(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when the transport is a plain TCP
    connection with nothing waiting to be written: Twisted's ``write`` only buffers
    and asks the reactor to watch for writability (two ``epoll_ctl`` calls and a pass
    of the reactor loop for every reply).  What the socket does not take at once (or
    an error, which the reactor then reports on its next write) goes through
    ``write`` as usual; so does everything on TLS, which has its own buffering."""
    if (getattr(transport, "TLS", True) or not getattr(transport, "connected", False) or transport.disconnecting
            or transport._writeDisconnected or transport._tempDataBuffer or transport.dataBuffer):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])

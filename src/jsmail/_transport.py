"""The one kind of transport the SMTP protocols run on: a TCP connection that can start
TLS, with flow control both ways.  Twisted types ``Protocol.transport`` as an optional
``ITransport``; these protocols only run connected, on a transport that does all of this."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import tcp
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
    """``transport.write(data)``, except that on a plain TCP connection with nothing
    waiting to be sent the data goes to the socket at once.

    Twisted's write only queues the data and has the reactor watch the socket until
    it is writable: two ``epoll_ctl`` calls and a reactor turn per SMTP reply, about
    7 us of the reactor thread each, and a one-message session has seven replies.
    Whatever the socket does not take (a client that does not read), and anything
    written over TLS, behind queued data or on a closing connection, goes Twisted's
    way, so the order of what is written and the back-pressure on the sender hold.
    The test is the transport's class, not its attributes: the TLS layer of an smtps
    listener passes every attribute it lacks (``TLS``, ``socket``) on to the TCP
    connection under it, which would send the reply there in plain text.
    """
    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport._tempDataLen and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # else the connection is lost: Twisted finds out and closes it
            data = data[sent:]
    if data:
        transport.write(data)

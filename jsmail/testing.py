"""Fakes for tests, shipped so that embedders can test code built on jsmail too.

- :class:`MemoryQueue` (re-exported): the queue interface in memory.
- :class:`RecordingAgent`: a delivery agent that records what it was given and answers
  with results you choose.
- :class:`Dialog`: drives an :class:`~jsmail.smtpd.ESMTPServer` over a
  :class:`~twisted.internet.testing.StringTransport`, returning exact reply bytes;
  STARTTLS is recorded, not performed (test real handshakes over loopback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, IMessageSink, IPolicy, QueuedMessage
from jsmail.queue import MemoryQueue
from jsmail.smtpd import ESMTPServer, ServerSettings

__all__ = ["Delivery", "Dialog", "MemoryQueue", "RecordingAgent"]


@dataclass(frozen=True)
class Delivery:
    """One call of :meth:`RecordingAgent.deliver`."""

    queueId: str
    envelope: Envelope
    recipients: list[str]
    data: bytes


@implementer(IDeliveryAgent)
class RecordingAgent:
    """Records each :class:`Delivery` and answers with ``answer(recipient)``: by
    default every recipient is delivered."""

    def __init__(self, answer: Callable[[str], tuple[DeliveryStatus, str]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.answer = answer or (lambda recipient: (DeliveryStatus.DELIVERED, "250 2.0.0 recorded"))

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        with message.open() as f:
            self.deliveries.append(Delivery(message.queueId, message.envelope, [r.address for r in recipients], f.read()))
        return defer.succeed([DeliveryResult(r.address, *self.answer(r.address)) for r in recipients])


class _TLSRecordingTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing a handshake."""

    tlsStarted: Any = None

    def startTLS(self, contextFactory: Any) -> None:
        self.tlsStarted = contextFactory


class Dialog:
    """An SMTP session in memory: ``send(b"...")`` returns the reply bytes it caused."""

    def __init__(
        self,
        settings: ServerSettings | None = None,
        sink: IMessageSink | None = None,
        policies: Sequence[IPolicy] = (),
        clientAddress: str = "192.0.2.1",
        clock: Clock | None = None,
        tls: Any = None,
        portal: Portal | None = None,
        implicitTLS: bool = False,
    ) -> None:
        self.clock = clock or Clock()
        self.sink = sink if sink is not None else MemoryQueue()
        self.server = ESMTPServer(settings or ServerSettings(hostname="mx.test"), self.sink, self.clock, policies,
                                  "smtp", tls, portal, implicitTLS)
        self.transport = _TLSRecordingTransport(peerAddress=IPv4Address("TCP", clientAddress, 40000))
        self.server.makeConnection(self.transport)

    def read(self) -> bytes:
        """Reply bytes written since the last read."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        return self.read()

    @property
    def tlsStarted(self) -> bool:
        """Whether the server asked its transport to start TLS."""
        return self.transport.tlsStarted is not None

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

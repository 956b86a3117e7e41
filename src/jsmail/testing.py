"""Fakes for tests, shipped so that embedders can test code built on jsmail too.

- :class:`MemoryQueue` (re-exported): the queue interface in memory.
- :class:`RecordingAgent`: a delivery agent that records what it was given and answers
  with results you choose.
- :class:`DNSServer`: a real DNS server on loopback serving test zones.
- :class:`Dialog`: drives an :class:`~jsmail.smtp.server.ESMTPServer` over a
  :class:`RecordingTransport`, returning exact reply bytes; STARTTLS is recorded, not
  performed (test real handshakes over loopback).
- :func:`runNow`: a ``runInThread`` that runs the work at once, for tests without threads.
- :func:`delivered`: the messages a Maildir's ``new/`` holds, once there are enough of
  them (a bounded wait, for tests of a running gateway).
- :func:`freePort`: a TCP port on 127.0.0.1 nothing listens on now, for configurations
  and programs that must be told a port before they bind it.
"""

from __future__ import annotations

import glob
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.names.authority import FileAuthority
from twisted.names.dns import DNSDatagramProtocol
from twisted.names.server import DNSServerFactory
from zope.interface import implementer

from jsmail._threads import runNow
from jsmail.datadir import SPARE_DIRECTORIES
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, IMessageSink, IModifier, QueuedMessage
from jsmail.queue.memory import MemoryQueue
from jsmail.reply import Reply
from jsmail.smtp.server import ESMTPServer, Listener, ServerSettings

__all__ = ["Delivery", "Dialog", "DNSServer", "MemoryQueue", "RecordingAgent", "RecordingTransport", "freePort",
           "delivered", "runNow"]


@defer.inlineCallbacks
def delivered(maildir: str, count: int = 1, reactor: Any = None) -> Any:
    """Fires with the contents of the files in ``maildir``/new, by name, once there are
    at least ``count`` of them; fails after about ten seconds without them."""
    if reactor is None:
        from twisted.internet import reactor
    pattern = os.path.join(maildir, "new", "*")
    for _ in range(200):
        files = sorted(glob.glob(pattern))
        if len(files) >= count:
            contents = []
            for name in files:
                with open(name, "rb") as f:
                    contents.append(f.read())
            return contents
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{count} message(s) expected in {maildir}/new, {len(glob.glob(pattern))} there")


class HeldThreads:
    """A :data:`jsmail._threads.RunInThread` that holds each job until the test runs it
    (:meth:`runNext`), to see what code does while its blocking work waits for a thread."""

    def __init__(self) -> None:
        self.held: list[tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((d, f, args))
        return d

    def runNext(self) -> None:
        """Run the oldest job held, as a thread would: its Deferred fires with what the
        job returns, or fails with what it raised."""
        d, f, args = self.held.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)


def freePort() -> int:
    """A port on 127.0.0.1 free at the time of asking (another process may take it
    before it is used: for tests, where that is rare, not for production)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def filesInTmp(tmpDir: str) -> list[str]:
    """The paths of the files in a queue's ``tmp/`` and its spare directories."""
    return sorted(path for directory in (tmpDir, *(os.path.join(tmpDir, name) for name in SPARE_DIRECTORIES))
                  if os.path.isdir(directory)
                  for path in glob.glob(os.path.join(glob.escape(directory), "*")) if os.path.isfile(path))


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

    def __init__(self, answer: Callable[[str], tuple[DeliveryStatus, Reply]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.answer = answer or (lambda recipient: (DeliveryStatus.DELIVERED, Reply(250, "2.0.0", "recorded")))

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        with message.open() as f:
            self.deliveries.append(Delivery(message.queueId, message.envelope, [r.address for r in recipients],
                                            f.read()))
        return defer.succeed([DeliveryResult(r.address, *self.answer(r.address)) for r in recipients])


class RecordingTransport(StringTransport):
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
        policies: Sequence[object] = (),
        clientAddress: str = "192.0.2.1",
        clock: Clock | None = None,
        tls: Any = None,
        portal: Portal | None = None,
        implicitTLS: bool = False,
        modifiers: Sequence[IModifier] = (),
        roomFor: Callable[[int], bool] | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.sink = sink if sink is not None else MemoryQueue()
        self.listener = Listener(settings or ServerSettings(hostname="mx.test"), self.sink, self.clock,
                                 checks=tuple(policies), modifiers=tuple(modifiers), tls=tls, portal=portal,
                                 implicitTLS=implicitTLS, roomFor=roomFor)
        self.server = ESMTPServer(self.listener)
        self.transport = RecordingTransport(peerAddress=IPv4Address("TCP", clientAddress, 40000))
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


class _Zone(FileAuthority):
    """An authority for one zone, from (name, record) pairs given in code."""

    # Twisted's FileAuthority types these by their None initial values; loadFile sets them
    soa: tuple[bytes, dns.Record_SOA]  # type: ignore[assignment]
    records: dict[bytes, list[Any]]  # type: ignore[assignment]

    def __init__(self, origin: str, records: Sequence[tuple[str, Any]]) -> None:
        self._origin, self._given = origin, records
        super().__init__(origin)

    def loadFile(self, filename: object) -> None:
        origin = self._origin.encode("idna")
        soa = dns.Record_SOA(mname=b"ns." + origin, rname=b"hostmaster." + origin, serial=1,
                             refresh=60, retry=60, expire=60, minimum=1, ttl=1)
        self.soa = (origin, soa)
        self.records = {origin.lower(): [soa]}
        for name, record in self._given:
            self.records.setdefault(name.lower().encode("idna"), []).append(record)


class _ServerFactory(DNSServerFactory):
    """A DNS server factory that leaves some questions unanswered, as a broken or
    unreachable server does."""

    def __init__(self, zones: Sequence[_Zone], silent: set[bytes]) -> None:
        super().__init__(authorities=list(zones))
        self.zones, self.silent = zones, silent

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Any:
        query = message.queries[0]
        name = query.name.name.lower()
        if name in self.silent and not any(r.TYPE == query.type for z in self.zones for r in z.records.get(name, ())):
            return None
        return super().handleQuery(message, protocol, address)


class DNSServer:
    """A real DNS server on 127.0.0.1 (UDP and TCP, one ephemeral port) serving test
    zones, for MX, SPF, DKIM and DMARC lookups that go through the real resolver path.

    ``zones`` maps an origin ("example.test"; "" for the root, serving every name) to
    (name, record) pairs, e.g. ``("example.test", dns.Record_MX(10, b"mx.example.test"))``.
    Questions about a name in ``silent`` get no answer at all (the client times out)
    unless the name has records of the type asked.  Call :meth:`start` (a Deferred-free,
    immediate listen) and :meth:`stop` (returns a Deferred).
    """

    def __init__(self, zones: dict[str, Sequence[tuple[str, Any]]], reactor: Any = None,
                 silent: Sequence[str] = ()) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.reactor = reactor
        self.factory = _ServerFactory([_Zone(o, r) for o, r in zones.items()],
                                      {name.lower().encode("idna") for name in silent})
        self.factory.noisy = False
        self.port = 0
        self._ports: list[Any] = []

    def start(self) -> str:
        """Listen; return "127.0.0.1:PORT" (what ``--dns-server`` takes)."""
        for _ in range(10):  # the UDP port's number may be taken for TCP: pick another
            udp = self.reactor.listenUDP(0, DNSDatagramProtocol(self.factory), interface="127.0.0.1")
            try:
                tcp = self.reactor.listenTCP(udp.getHost().port, self.factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            self.port = udp.getHost().port
            self._ports = [udp, tcp]
            return f"127.0.0.1:{self.port}"
        raise CannotListenError("127.0.0.1", 0, "no port free for both UDP and TCP")

    def stop(self) -> defer.Deferred[Any]:
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self._ports])

"""Delivery in a process of its own, as qmail-send runs beside qmail-smtpd.

The parent (:class:`SendProcess`, a service of the gateway) starts
``python -m jsmail.send.process``, writes the configuration (JSON) to the child's
file descriptor 3 and closes it, and then:

- writes one line per newly queued message to the child's stdin: its queue id.  The
  line is only a hint: the queue on disk is the truth, and a child that starts (or
  starts again) recovers everything queued from there;
- reads the child's log events, one JSON object per line on its stdout, and publishes
  them in its own log, so the operator log stays one stream;
- starts the child again if it dies, and at shutdown closes its stdin, which makes the
  child finish the deliveries in progress and exit.

The child runs a :class:`jsmail.send.service.DeliveryService` until its stdin closes.
The configuration holds secrets (smarthost and route passwords), so it never travels
in the environment, which every program the child runs would inherit.

The child is started after the gateway has given up root, so it runs as the
gateway's user (``[server] user``); should it find itself root with a user
configured (an embedder that never dropped), it becomes that user before anything
else.  When the local spawner runs, each child gets a connection of its own to it on
descriptor 4 (``--spawner-fd``), for deliveries made as a mailbox's owner.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from jsmail._child import spawnChild
from jsmail._process import LogLines
from jsmail.config import Config

_log = Logger()

SPAWNER_FD = 4  # where it finds its connection to the local spawner, if any
RESTART_DELAY = 1.0
STOP_TIMEOUT = 30.0


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, parent: SendProcess) -> None:
        self.parent = parent
        self.log = LogLines("delivery process")
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.log.received(data)

    def processEnded(self, reason: Any) -> None:
        self.parent.childEnded(self, reason)
        self.ended.callback(None)


class SendProcess(Service):
    """The parent's side: keeps one delivery process running and tells it what is new."""

    def __init__(self, config: Config, reactor: Any,
                 spawner: Callable[[], socket.socket | None] = lambda: None) -> None:
        """``spawner`` gives a new connection to the local spawner, or None."""
        self.config = config
        self.reactor = reactor
        self.spawner = spawner
        self.child: _ChildProtocol | None = None
        self._restart: Any = None

    def startService(self) -> None:
        super().startService()
        self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        child = _ChildProtocol(self)
        connection = self.spawner()
        arguments: list[str] = []
        descriptors: dict[int, int] = {}
        if connection is not None:
            arguments, descriptors = ["--spawner-fd", str(SPAWNER_FD)], {SPAWNER_FD: connection.fileno()}
        try:
            spawnChild(self.reactor, child, "jsmail.send.process", self.config, arguments, descriptors)
        finally:
            if connection is not None:
                connection.close()
        self.child = child

    def notify(self, queueId: str) -> None:
        """Tell the delivery process a message was queued (if it is not running now,
        it finds the message in the queue when it starts)."""
        if self.child is not None and self.child.transport is not None:
            self.child.transport.write(queueId.encode("ascii") + b"\n")

    def childEnded(self, child: _ChildProtocol, reason: Any) -> None:
        if child is self.child:
            self.child = None
        if self.running:
            _log.error("The delivery process ended ({reason}); starting it again in {delay:g} s",
                       reason=reason.getErrorMessage(), delay=RESTART_DELAY)
            self._restart = self.reactor.callLater(RESTART_DELAY, self._spawn)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        child = self.child
        if child is None or child.transport is None:
            return None
        child.transport.closeStdin()  # the child finishes what it is doing and exits
        timer = self.reactor.callLater(STOP_TIMEOUT, child.transport.signalProcess, "KILL")
        return child.ended.addCallback(lambda _: timer.cancel() if timer.active() else None)


class _Notices(LineOnlyReceiver):
    """The child's stdin: one queue id per line; end of input means stop."""

    delimiter = b"\n"

    def __init__(self, delivery: Any, reactor: Any) -> None:
        self.delivery = delivery
        self.reactor = reactor

    def lineReceived(self, line: bytes) -> None:
        queueId = line.strip().decode("ascii", "replace")
        if queueId:
            self.delivery.scheduler.scheduleFromQueue(queueId).addErrback(
                lambda f: _log.failure("Cannot schedule {queueId}", f, queueId=queueId))

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main() -> None:
    from twisted.internet import reactor, stdio

    from jsmail._child import startChild
    from jsmail.send.service import DeliveryService

    config, _ = startChild("delivery process", reactor)
    spawner: list[socket.socket] = []
    if sys.argv[1:3] == ["--spawner-fd", str(SPAWNER_FD)]:
        spawner.append(socket.socket(fileno=SPAWNER_FD))
    delivery = DeliveryService(config, reactor, flushOnSignal=True, spawner=lambda: spawner.pop() if spawner else None)
    delivery.startService()
    reactor.addSystemEventTrigger("before", "shutdown", delivery.stopService)
    # mypy reads the Windows StandardIO; the POSIX one takes stdout
    stdio.StandardIO(_Notices(delivery, reactor), stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    reactor.run()


if __name__ == "__main__":
    main()

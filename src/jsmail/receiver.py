"""A receiving process: SMTP sessions on connections the main process hands over.

The main process (:mod:`jsmail.smtp.handoff`) starts ``python -m jsmail.receiver``
when ``[smtp] processes`` is above 1, writes the configuration (JSON) to descriptor 3
and closes it, and gives it its end of the channel on descriptor 4.  This process
builds the gateway's listeners as the main one would, without listening and without
any delivery (:class:`jsmail.service.MailGateway` with ``receiving``), takes each
connection handed over, and stops at the channel's end of file.  It logs through the
main process, one JSON event per line on its standard output.  The configuration holds
secrets, so it never travels in the environment.
"""

from __future__ import annotations

import os
import signal
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from jsmail.smtp.handoff import CHANNEL_FD, ChannelEnd, SharedFailures, handedInFactories, packet
from jsmail.smtp.sasl import FailureCounter

_log = Logger()


class ParentChannel:
    """A receiving process's end of the channel: adopts the connections handed over,
    and says what the main process must know.  Packets that do not fit in the channel
    at once wait here, in order, until it drains."""

    def __init__(self, channel: socket.socket, reactor: Any) -> None:
        self.channel = channel
        self.reactor = reactor
        self.factories: dict[str, Callable[[int], IProtocolFactory]] = {}
        self.failures: SharedFailures | None = None  # set by the gateway that counts them
        self._unsent: deque[bytes] = deque()
        self._end = ChannelEnd(channel, self._heard, self._drained)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def start(self, factories: dict[str, Callable[[int], IProtocolFactory]]) -> None:
        """Take connections for each kind of listener from now on."""
        self.factories = factories
        self.reactor.addReader(self._end)
        self._send(packet("ready"))

    def released(self, connectionId: int) -> None:
        self._send(packet("R", connectionId))

    def queued(self, queueId: str) -> None:
        self._send(packet("Q", queueId))

    def sharedFailures(self, window: float, maxKeys: int) -> FailureCounter:
        """The count of failed logins this process shares with the others."""
        self.failures = SharedFailures(window, maxKeys, self._failedAuth)
        return self.failures

    def _failedAuth(self, key: str, now: float) -> None:
        self._send(packet("A", key, now))

    def _send(self, data: bytes) -> None:
        if self._unsent:
            self._unsent.append(data)
            return
        try:
            self.channel.send(data)
        except BlockingIOError:
            self._unsent.append(data)
            self.reactor.addWriter(self._end)
        except OSError:
            pass  # the main process is gone: this one is stopping

    def _drained(self) -> None:
        while self._unsent:
            try:
                self.channel.send(self._unsent[0])
            except BlockingIOError:
                return
            except OSError:
                self._unsent.clear()
                break
            self._unsent.popleft()
        self.reactor.removeWriter(self._end)

    def _heard(self, message: list[Any] | None, fds: list[int]) -> None:
        if message is None:
            self.reactor.removeReader(self._end)
            self.reactor.removeWriter(self._end)
            if not self.lost.called:
                self.lost.callback(None)
            return
        if message[0] == "C" and len(message) == 3 and message[2] in self.factories and len(fds) == 1:
            self._adopt(fds[0], message[1], message[2])
            return
        for fd in fds:
            os.close(fd)
        if message[0] == "A" and len(message) == 3 and isinstance(message[1], str) \
                and isinstance(message[2], (int, float)) and self.failures is not None:
            self.failures.heard(message[1], float(message[2]))

    def _adopt(self, fd: int, connectionId: int, kind: str) -> None:
        """Run a session on the connection handed over; if none can begin (the client
        is gone already), its slot is given back at once."""
        connection = socket.socket(fileno=fd)
        try:
            connection.setblocking(False)
            self.reactor.adoptStreamConnection(connection.fileno(), connection.family,
                                               self.factories[kind](connectionId))
        except OSError:  # ENOTCONN: reset between the main process's accept and now
            self.released(connectionId)
        except Exception:
            _log.failure("Cannot take a connection handed over")
            self.released(connectionId)
        finally:
            connection.close()  # the reactor has its own descriptor now


def main() -> None:
    from twisted.internet import reactor as globalReactor
    from twisted.internet.task import LoopingCall

    from jsmail._child import startChild
    from jsmail.service import MailGateway

    reactor: Any = globalReactor
    config, forwarder = startChild("receiving process", reactor)
    if forwarder is not None:
        LoopingCall(forwarder.flush).start(1.0, now=False)
        reactor.addSystemEventTrigger("after", "shutdown", forwarder.flush)
    channel = ParentChannel(socket.socket(fileno=CHANNEL_FD), reactor)
    gateway = MailGateway(config, reactor, receiving=channel)
    gateway.startService()
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload))
    channel.lost.addCallback(lambda _: reactor.stop() if reactor.running else None)
    channel.start(handedInFactories(gateway.smtpListeners, gateway.tls, channel.released))
    reactor.run()


if __name__ == "__main__":
    main()

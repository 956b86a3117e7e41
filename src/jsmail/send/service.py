"""The delivery side as one service: the scheduler and its agents over the queue on
disk (qmail-send with qmail-lspawn and qmail-rspawn).  It runs in the delivery process
(:mod:`jsmail.send.process`) or, when embedded without one, beside the listeners.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from jsmail._disk import openNew, unlinkQuietly
from jsmail._dns import makeResolver
from jsmail._threads import ThreadPoolService
from jsmail.config import Config
from jsmail.local.agent import LocalDelivery
from jsmail.local.spawn import SpawnClient
from jsmail.queue.store import MaildirQueue
from jsmail.queue.trigger import TriggerReader
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.destinations import Destinations, listenedOn
from jsmail.remote.mtasts import PolicyFetcher
from jsmail.route import Router
from jsmail.send.scheduler import Scheduler

_log = Logger()


def _globalReactor() -> Any:
    from twisted.internet import reactor

    return reactor


class DeliveryService(ThreadPoolService):
    """The scheduler and local delivery over the queue on disk.

    Only one may run per queue: it takes ``queue/send.lock`` before starting (a new
    delivery process waits for an old one to finish its deliveries in progress), and
    then reads ``queue/trigger`` (:mod:`jsmail.queue.trigger`), which programs that
    queue mail and ``jsmail queue`` write to wake it.  With ``flushOnSignal`` it also
    answers SIGALRM by making every retry due now (as qmail-send does), and writes its
    pid to ``queue/send.pid`` for an operator's ``kill -ALRM``; no jsmail program
    signals that pid.
    """

    def __init__(self, config: Config, reactor: Any = None, flushOnSignal: bool = False,
                 spawner: Callable[[], socket.socket | None] = lambda: None) -> None:
        """``spawner`` gives a connection to the local spawner (asked once, at start),
        or None: mailboxes whose owner is a user of their own then wait."""
        super().__init__(reactor or _globalReactor(), {"disk": config.queue.diskThreads})
        self.spawner = spawner
        runInThread = self.threads("disk")
        server = config.server
        dataDir = server.dataDir
        # Delivery queues only bounces: a couple of spare files is plenty.
        self.queue = MaildirQueue(os.path.join(dataDir, "queue"), runInThread, sweep=False, spares=2)
        self.local = LocalDelivery(os.path.join(dataDir, "mail"), runInThread, server.hostname, self.queue.syncer,
                                   reactor=self.reactor, settings=config.local,
                                   newMessage=lambda envelope: self.scheduler.funnel.newMessage(envelope))
        resolver = makeResolver(config.remote.dnsServer, self.reactor)
        listen = config.listen
        destinations = Destinations(config.remote.allowInternal,
                                    listenedOn(listen.smtp + listen.submission + listen.smtps))
        mtaSts = PolicyFetcher(self.reactor, resolver, destinations=destinations,
                               directory=os.path.join(dataDir, "mta-sts"),
                               runInThread=runInThread) if config.remote.mtaSts else None
        self.remote = RemoteDelivery(self.reactor, runInThread, resolver, config.remote, mtaSts=mtaSts,
                                     destinations=destinations)
        router = Router(server.domains, self.local, self.remote, config.local.virtualDomains)
        self.scheduler = Scheduler(self.queue, router, self.reactor, runInThread, config.queue.bounceHost, config.queue,
                                   server.postmaster)
        self.scheduler.setServiceParent(self)
        self._lock = SendLock(os.path.join(dataDir, "queue", "send.lock"), self.reactor)
        self.flushOnSignal = flushOnSignal
        self.pidPath = os.path.join(dataDir, "queue", "send.pid")
        self.trigger = TriggerReader(os.path.join(dataDir, "queue"), self.reactor, self._woken)

    def startService(self) -> None:
        # Not MultiService.startService: the children start only once the lock is held.
        connection = self.spawner()
        if connection is not None:
            self.local.spawn = SpawnClient.adopt(self.reactor, connection)
        self.startPools()
        Service.startService(self)
        self._lock.acquire().addCallback(self._locked)

    def _locked(self, _: object) -> None:
        if not self.running:
            return
        if self.flushOnSignal:
            signal.signal(signal.SIGALRM, lambda *_: self.reactor.callFromThread(self._flush))
            with os.fdopen(openNew(self.pidPath, exclusive=False), "w") as f:
                f.write(f"{os.getpid()}\n")
        for service in self:
            service.startService()
        try:
            self.trigger.start()
        except OSError as e:
            _log.error("Cannot make the wake-up FIFO {path}: {error}", path=self.trigger.path, error=e)

    def _woken(self, flush: bool) -> defer.Deferred[None]:
        """A byte in the trigger: take up what other programs queued and what an
        operator released or requeued, then, for a flush, retry everything now."""
        d = self.scheduler.rescan()
        if flush:
            d.addCallback(lambda _: self.scheduler.flush())
        return d

    def _flush(self) -> None:
        """SIGALRM: take up what other programs queued and what an operator released or
        requeued, then retry everything now (``jsmail queue flush``, ``release``,
        ``requeue``)."""
        d = self.scheduler.rescan()
        d.addErrback(lambda f: _log.failure("Rescanning the queue failed", f))
        d.addCallback(lambda _: self.scheduler.flush())

    def childrenStopped(self) -> defer.Deferred[Any]:
        """The scheduler has stopped (no delivery in progress): close the idle remote
        sessions and end MTA-STS work while the disk pool still runs its writes."""
        self.queue.close()
        return self.remote.close()

    def stopService(self) -> defer.Deferred[None]:
        self._lock.cancel()
        d = super().stopService()
        return d.addBoth(self._released)

    def _released(self, result: object) -> object:
        if self.local.spawn is not None:
            self.local.spawn.close()
        self.trigger.stop()
        if self._lock.held and self.flushOnSignal:
            unlinkQuietly(self.pidPath)
        self._lock.release()
        return result


class SendLock:
    """An exclusive ``flock`` on a file, tried without blocking every 0.2 s, so that
    waiting for it never ties up a thread and can be called off."""

    def __init__(self, path: str, clock: Any) -> None:
        self.path = path
        self.clock = clock
        self.held = False
        self._fd: int | None = None
        self._retry: Any = None
        self._waited = False

    def acquire(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._try(d)
        return d

    def _try(self, d: defer.Deferred[None]) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._waited:
                _log.info("Waiting for the delivery process that holds {path} to finish", path=self.path)
                self._waited = True
            self._retry = self.clock.callLater(0.2, self._try, d)
            return
        self.held = True
        d.callback(None)

    def cancel(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd, self.held = None, False

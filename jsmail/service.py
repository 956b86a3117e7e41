"""The whole gateway as one :class:`MultiService`: what twistd and embedders start.

:class:`MailGateway` receives: the SMTP listeners and the queue's incoming side.
:class:`DeliveryService` delivers: the scheduler and its agents (qmail-send and
qmail-local).  By default the delivery side runs in a child process of its own
(:mod:`jsmail.sendprocess`), as qmail runs qmail-send beside qmail-smtpd: each gets a
core and a GIL, and the queue on disk is all they share.  Listeners bind in
``privilegedStartService``, so ``twistd --uid`` can drop root right after binding port 25.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from typing import Any, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from jsmail import __version__
from jsmail._disk import RunInThread, unlinkQuietly
from jsmail.auth import AnyOfCheckers, HashedPasswordFile, MailRealm
from jsmail.config import Config, ConfigError
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus
from jsmail.inject import Funnel
from jsmail.local import LocalDelivery, LocalSettings
from jsmail.policy import BadMailFrom, RelayControl
from jsmail.queue import MaildirQueue
from jsmail.rcpthosts import RcptHosts
from jsmail.mtasts import PolicyFetcher
from jsmail.plugin import Chain, PluginError, PolicyContext, buildChain
from jsmail.programqueue import ProgramQueue
from jsmail.remote import RemoteDelivery, makeResolver
from jsmail.route import Router
from jsmail.send import RetrySchedule, Scheduler
from jsmail.sendprocess import SendProcess
from jsmail.smtpd import ESMTPServerFactory, ServerSettings
from jsmail.tls import ServerTLS, ensureSelfSigned

_log = Logger()


class ListeningError(Exception):
    """A listener could not listen: the message names the endpoint and the reason."""


class ListenerService(Service):
    """Listens on one endpoint; :meth:`whenListening` gives the bound port.

    TCP and UNIX endpoints listen at once: if the port is taken, starting raises
    :class:`ListeningError` (so twistd stops with the reason rather than run deaf).
    An endpoint that fails later reports to :meth:`whenListening` and to the log.
    """

    def __init__(self, reactor: Any, description: str, factory: Factory, kind: str = "smtp") -> None:
        self.kind = kind
        self.description = description
        self.endpoint = serverFromString(reactor, description)
        self.factory = factory
        self.port: IListeningPort | None = None
        self._result: IListeningPort | Failure | None = None
        self._waiting: list[defer.Deferred[IListeningPort]] = []
        self._asked = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._asked = True
        self.endpoint.listen(self.factory).addBoth(self._listened)
        if isinstance(self._result, Failure):
            raise ListeningError(f"cannot listen for {self.kind} on {self.description}: "
                                 f"{self._result.getErrorMessage()}")

    def _listened(self, result: IListeningPort | Failure) -> None:
        self._result = result
        if isinstance(result, Failure):
            if self._waiting or self.running:
                _log.failure("Cannot listen on {description}", result, description=self.description)
        else:
            self.port = result
            host = result.getHost()
            where = f"{host.host}:{host.port}" if hasattr(host, "port") else getattr(host, "name", host)
            _log.info("Listening for {kind} on {where} ({description})", kind=self.kind, where=where,
                      description=self.description)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(result) if isinstance(result, Failure) else d.callback(result)

    def startService(self) -> None:
        if not self._asked:
            self.privilegedStartService()
        super().startService()

    def whenListening(self) -> defer.Deferred[IListeningPort]:
        """Fires with the port once listening, or fails if listening failed."""
        if isinstance(self._result, Failure):
            return defer.fail(self._result)
        if self._result is not None:
            return defer.succeed(self._result)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


def serverSettings(config: Config, **listenerRules: Any) -> ServerSettings:
    """The settings for one listener: the shared limits plus ``listenerRules``."""
    return ServerSettings(
        hostname=config.hostname,
        greeting=config.smtpGreeting,
        maxMessageSize=config.maxMessageSize,
        maxCommandLine=config.maxCommandLine,
        maxTextLine=config.maxTextLine,
        maxRecipients=config.maxRecipients,
        maxErrors=config.maxErrors,
        idleTimeout=config.idleTimeout,
        maxConnections=config.maxConnections,
        maxConnectionsPerClient=config.maxConnectionsPerClient,
        normaliseLineEndings=config.bareLineEndings == "normalise",
        maxReceivedHeaders=config.maxReceivedHeaders,
        allowPlaintextAuth=config.allowPlaintextAuth,
        allowProxyAuth=config.allowProxyAuth,
        maxAuthFailures=config.maxAuthFailures,
        authFailureDelay=config.authFailureDelay,
        showAuthInReceived=config.showAuthInReceived,
        authservId=config.authservId,
        **listenerRules,
    )


def rcptHostsOf(config: Config) -> RcptHosts | None:
    """The extra domains taken at RCPT (qmail's rcpthosts), if any are configured."""
    if not config.rcptHosts and not config.moreRcptHosts:
        return None
    return RcptHosts(config.rcptHosts, config.moreRcptHosts)


def checkPolicies(config: Config) -> None:
    """Build every listener's checks once and throw them away, so ``--check-config``
    finds an unknown plugin or a bad plugin option."""
    from twisted.internet.threads import deferToThread

    policyChains(config, _globalReactor(), deferToThread)


def policyChains(config: Config, reactor: Any, runInThread: RunInThread) -> dict[str, Chain]:
    """Each listener's policy checks, built from their plugins (see :mod:`jsmail.plugin`).

    Raises :class:`ConfigError` for an unknown plugin or a bad plugin option."""
    names = {"smtp": config.smtpChecks, "submission": config.submissionChecks, "smtps": config.smtpsChecks}
    chains = {kind: Chain() for kind in names}
    if not any(names.values()):
        return chains  # no resolver either: it would watch resolv.conf for nothing
    context = PolicyContext(reactor, makeResolver(config.dnsServer, reactor), runInThread, config.hostname,
                            config.authservId or config.hostname, os.path.abspath(config.dataDir),
                            frozenset(config.domains))
    for kind, plugins in names.items():
        try:
            chains[kind] = buildChain(plugins, config.pluginOptions, context)
        except PluginError as e:
            key = f"policy.{kind}" if e.key == "policy" else e.key
            raise ConfigError("configuration", key, str(e)) from None
    return chains


def makePortal(config: Config, extraCheckers: Sequence[ICredentialsChecker] = ()) -> Portal:
    """AUTH users: the password file under the data directory (``jsmail passwd``), then
    the configured checkers, then any given on the command line (``--auth``)."""
    checkers = [HashedPasswordFile(os.path.abspath(config.passwordPath))]
    checkers += [strcred.makeChecker(description) for description in config.authCheckers]
    checkers += list(extraCheckers)
    return Portal(MailRealm(config.domains, config.senderRule), [AnyOfCheckers(checkers)])


def makeTLS(config: Config, dataDir: str) -> ServerTLS:
    """The configured certificate, or a self-signed one made under the data directory."""
    if config.tlsCertificate:
        return ServerTLS(config.tlsCertificate, config.tlsKey or config.tlsCertificate)
    return ServerTLS(*ensureSelfSigned(os.path.join(dataDir, "tls"), config.hostname))


class _DiskWork(MultiService):
    """A MultiService with a queue and a thread pool for blocking disk work; the pool
    starts before the children and stops after them (deliveries in progress need it),
    and the queue is closed then."""

    def __init__(self, reactor: Any, threads: int) -> None:
        super().__init__()
        self.reactor = reactor
        self.diskThreads = ThreadPool(minthreads=0, maxthreads=threads, name="jsmail-disk")

    queue: MaildirQueue

    def runInThread(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run blocking disk work in the thread pool."""
        return deferToThreadPool(self.reactor, self.diskThreads, f, *args, **kwargs)

    def startService(self) -> None:
        self.diskThreads.start()
        super().startService()

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        if not self.running:
            return defer.succeed(None)
        d = defer.maybeDeferred(super().stopService)

        def stopped(result: object) -> object:
            self.queue.close()
            self.diskThreads.stop()
            return result

        return d.addBoth(stopped)


def _globalReactor() -> Any:
    from twisted.internet import reactor

    return reactor


class DeliveryService(_DiskWork):
    """The scheduler and local delivery over the queue on disk.

    Only one may run per queue: it takes ``queue/send.lock`` before starting (a new
    delivery process waits for an old one to finish its deliveries in progress).  With
    ``flushOnSignal`` it also answers SIGALRM by making every retry due now (as
    qmail-send does), and writes its pid to ``queue/send.pid`` for ``jsmail queue
    flush`` to signal.
    """

    def __init__(self, config: Config, reactor: Any = None, flushOnSignal: bool = False) -> None:
        super().__init__(reactor or _globalReactor(), config.diskThreads)
        dataDir = os.path.abspath(config.dataDir)
        # Delivery queues only bounces: a couple of spare files is plenty.
        self.queue = MaildirQueue(os.path.join(dataDir, "queue"), self.runInThread, sweep=False, spares=2)
        self.local = LocalDelivery(
            os.path.join(dataDir, "mail"), self.runInThread, config.hostname, self.queue.syncer, reactor=self.reactor,
            settings=LocalSettings(
                usersDir=os.path.abspath(config.usersPath), homeDotQmail=config.homeDotQmail,
                separator=config.extensionSeparator, plusExtensions=config.plusExtensions,
                aliases=config.aliasesFile and os.path.abspath(config.aliasesFile),
                programTimeout=config.programTimeout, concurrency=config.localConcurrency,
                noAtHost=config.envNoAtHost, virtualDomains=config.virtualDomains, localDomains=config.domains),
            newMessage=lambda envelope: self.scheduler.funnel.newMessage(envelope))
        resolver = makeResolver(config.dnsServer, self.reactor)
        self.remote = RemoteDelivery(
            self.reactor, self.runInThread, resolver, config.heloHost or config.hostname,
            routes={route.domain: route for route in config.routes}, smarthost=config.smarthostRoute,
            port=config.remotePort, tls=config.remoteTLS, perHost=config.perHost,
            idleTimeout=config.idleTimeoutRemote, connectTimeout=config.connectTimeout,
            backoff=config.hostBackoff, backoffMaximum=config.hostBackoffMaximum,
            mtaSts=PolicyFetcher(self.reactor, resolver) if config.mtaSts else None,
            replyTimeout=config.replyTimeout,
        )
        retry = RetrySchedule(config.retryFirst, config.retryFactor, config.retryMaximum, config.giveUp)
        self.scheduler = Scheduler(self.queue, Router(config.domains, self.local, self.remote, config.virtualDomains), self.reactor,
                                   self.runInThread, config.bounceHost or config.hostname, retry,
                                   config.deliveryConcurrency, config.postmaster or f"postmaster@{config.domains[0]}",
                                   bounceFrom=config.bounceFrom)
        self.scheduler.setServiceParent(self)
        self._lock = SendLock(os.path.join(dataDir, "queue", "send.lock"), self.reactor)
        self.flushOnSignal = flushOnSignal
        self.pidPath = os.path.join(dataDir, "queue", "send.pid")

    def startService(self) -> None:
        self.diskThreads.start()
        Service.startService(self)
        self._lock.acquire().addCallback(self._locked)

    def _locked(self, _: object) -> None:
        if not self.running:
            return
        if self.flushOnSignal:
            signal.signal(signal.SIGALRM, lambda *_: self.reactor.callFromThread(self._flush))
            with open(self.pidPath, "w") as f:
                f.write(f"{os.getpid()}\n")
        for service in self:
            service.startService()

    def _flush(self) -> None:
        """SIGALRM: retry everything now, and take up what other programs queued."""
        self.scheduler.flush()
        self.scheduler.rescan().addErrback(lambda f: _log.failure("Rescanning the queue failed", f))

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        self._lock.cancel()
        d = super().stopService()
        d.addBoth(lambda result: self.remote.close().addCallback(lambda _: result))
        return d.addBoth(self._released)

    def _released(self, result: object) -> object:
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
                _log.info("Waiting for the delivery process before to finish ({path} is locked)", path=self.path)
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


class Outcomes:
    """Waits for the operator log's events about queued messages, to tell an embedder
    how each of its messages ended.  The log is the one channel that reports from the
    delivery process as well as from within this one."""

    def __init__(self, publisher: Any = None) -> None:
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self._waiting: dict[str, tuple[defer.Deferred[list[DeliveryResult]], list[DeliveryResult]]] = {}

    def watch(self, queueId: str) -> defer.Deferred[list[DeliveryResult]]:
        """Fires with one result per recipient once the message has left the queue."""
        if not self._waiting:
            self.publisher.addObserver(self._observe)
        d: defer.Deferred[list[DeliveryResult]] = defer.Deferred()
        self._waiting[queueId] = (d, [])
        return d

    def forget(self, queueId: str) -> None:
        self._waiting.pop(queueId, None)
        if not self._waiting:
            self.publisher.removeObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != "jsmail.maillog" or event.get("queueId") not in self._waiting:
            return
        d, results = self._waiting[event["queueId"]]
        kind = event.get("event")
        if kind in ("delivered", "failed"):
            status = DeliveryStatus.DELIVERED if kind == "delivered" else DeliveryStatus.PERMANENT
            results.append(DeliveryResult(event["recipient"], status, event["detail"]))
        elif kind == "removed":
            del self._waiting[event["queueId"]]
            if not self._waiting:
                self.publisher.removeObserver(self._observe)
            d.callback(results)


class MailGateway(_DiskWork):
    """The gateway, wired from one :class:`Config`.

    Listeners: ``smtp`` (port 25 style: STARTTLS offered, AUTH after it), ``submission``
    (RFC 6409: STARTTLS, then AUTH, before MAIL) and ``smtps`` (RFC 8314: implicit TLS,
    AUTH before MAIL).  Delivery runs in a child process when ``config.deliveryProcess``
    (the default), else in this process as :attr:`delivery`.  ``reactor`` defaults to
    the global one.  ``extraCheckers`` adds twisted.cred checkers for AUTH.  With
    ``standalone`` (set by twistd), SIGHUP reloads the TLS certificate and a port that
    cannot be bound stops start-up with one line; an embedding application gets
    :class:`ListeningError` instead, and may call :meth:`reload` itself.

    Raises :class:`jsmail.tls.TLSError` when the certificate cannot be used.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        extraCheckers: Sequence[ICredentialsChecker] = (),
        standalone: bool = False,
    ) -> None:
        super().__init__(reactor or _globalReactor(), config.diskThreads)
        self.config = config
        self.dataDir = os.path.abspath(config.dataDir)
        self.mailRoot = os.path.join(self.dataDir, "mail")
        self.queue = MaildirQueue(os.path.join(self.dataDir, "queue"), self.runInThread)
        self.delivery: DeliveryService | SendProcess
        if config.deliveryProcess:
            self.delivery = SendProcess(config, self.reactor)
            self.funnel = Funnel(self.queue, lambda queueId, envelope: self.delivery.notify(queueId))
        else:
            self.delivery = DeliveryService(config, self.reactor, flushOnSignal=standalone)
            self.funnel = Funnel(self.queue, self.delivery.scheduler.schedule)
        self.outcomes = Outcomes()
        sink: Any = ProgramQueue(config.queueProgram, self.reactor) if config.queueProgram else self.funnel
        self.delivery.setServiceParent(self)
        self.standalone = standalone
        self.tls = makeTLS(config, self.dataDir)
        portal = makePortal(config, extraCheckers)
        localDomains = frozenset(config.domains)
        relayControl = RelayControl(localDomains.__contains__, config.trustedNetworks, rcptHostsOf(config))
        always = [relayControl, BadMailFrom(config.badMailFrom)] if config.badMailFrom else [relayControl]
        self.chains = policyChains(config, self.reactor, self.runInThread)
        self.listeners: list[ListenerService] = []
        kinds = (
            ("smtp", config.smtpListeners, serverSettings(config), False),
            ("submission", config.submissionListeners, serverSettings(config, requireTLS=True, requireAuth=True), False),
            ("smtps", config.smtpsListeners, serverSettings(config, requireAuth=True), True),
        )
        for kind, descriptions, settings, implicitTLS in kinds:
            chain = self.chains[kind]
            factory: Factory = ESMTPServerFactory(settings, sink, self.reactor, [*always, *chain.policies], kind,
                                                  self.tls, portal, implicitTLS, chain.modifiers, self.runInThread)
            if implicitTLS:
                factory = TLSMemoryBIOFactory(self.tls, False, factory)
            for description in descriptions:
                listener = ListenerService(self.reactor, description, factory, kind)
                listener.setServiceParent(self)
                self.listeners.append(listener)

    @defer.inlineCallbacks
    def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> Any:
        """Queue ``message`` (CR LF lines) for delivery, as if received by SMTP, and fire
        with one :class:`DeliveryResult` per recipient once it has left the queue:
        delivered, or failed for good (after the retries; the sender got a bounce)."""
        envelope = Envelope(sender, tuple(Recipient(r) for r in recipients), arrival=self.reactor.seconds(),
                            clientAddress="127.0.0.1", helo=self.config.hostname, protocol="local")
        incoming = self.funnel.newMessage(envelope)
        incoming.write(message)
        outcome = self.outcomes.watch(incoming.queueId)
        try:
            yield incoming.commit()
        except Exception:
            self.outcomes.forget(incoming.queueId)
            raise
        return (yield outcome)

    def reload(self) -> None:
        """Read the TLS certificate and the checks' list files again; sessions in
        progress keep their certificate."""
        self.tls.reload()
        for chain in self.chains.values():
            for check in chain.policies:
                if hasattr(check, "reload"):
                    check.reload()

    def startService(self) -> None:
        super().startService()
        if self.standalone:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def privilegedStartService(self) -> None:
        _log.info(
            "jsmail {version}: host name {hostname}; data under {data}; queue in {data}{sep}queue; "
            "mail for {domains} is delivered to the Maildirs {mail}{sep}<domain>{sep}<local-part>{sep}; "
            "TLS certificate {certificate}; AUTH users in {passwd} (add one with: jsmail passwd --data {data} USER)",
            version=__version__, hostname=self.config.hostname, data=self.dataDir, sep=os.sep,
            domains=", ".join(self.config.domains), mail=self.mailRoot, certificate=self.tls.certificatePath,
            passwd=os.path.abspath(self.config.passwordPath),
        )
        try:
            super().privilegedStartService()
        except ListeningError as e:
            if not self.standalone:
                raise
            sys.stderr.write(f"jsmail: {e}\n")
            raise SystemExit(2) from None

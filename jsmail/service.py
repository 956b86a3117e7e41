"""The whole gateway as one :class:`MultiService`: what twistd and embedders start.

A thread pool for blocking disk work starts first and stops last, once every child has
finished (the scheduler waits for deliveries in progress, and those need the pool).
Children start in order: the scheduler (which rebuilds its plan from the queue), then
one listener per SMTP endpoint.  Listeners bind in
``privilegedStartService``, so ``twistd --uid`` can drop root right after binding port 25.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from jsmail import __version__
from jsmail.auth import AnyOfCheckers, HashedPasswordFile, MailRealm
from jsmail.config import Config
from jsmail.local import MaildirDelivery
from jsmail.policy import RelayControl
from jsmail.queue import MaildirQueue
from jsmail.route import Router
from jsmail.send import RetrySchedule, Scheduler
from jsmail.smtpd import ESMTPServerFactory, ServerSettings
from jsmail.tls import ServerTLS, ensureSelfSigned

_log = Logger()


class ListenerService(Service):
    """Listens on one endpoint; :meth:`whenListening` gives the bound port."""

    def __init__(self, reactor: Any, description: str, factory: Factory, kind: str = "smtp") -> None:
        self.kind = kind
        self.description = description
        self.endpoint = serverFromString(reactor, description)
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listening = self.endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            host = port.getHost()
            where = f"{host.host}:{host.port}" if hasattr(host, "port") else getattr(host, "name", host)
            _log.info("Listening for {kind} on {where} ({description})", kind=self.kind, where=where,
                      description=self.description)
            return port

        self._listening.addCallback(listening)
        self._listening.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        _log.failure("Cannot listen on {description}", failure, description=self.description)
        from twisted.internet import reactor

        reactor.stop()  # type: ignore[attr-defined]

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()

    def whenListening(self) -> defer.Deferred[IListeningPort]:
        assert self._listening is not None, "not started"
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._listening.addCallback(lambda port: (d.callback(port), port)[1])
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
        **listenerRules,
    )


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


class MailGateway(MultiService):
    """smtpd, queue, scheduler and local delivery, wired from one :class:`Config`.

    Listeners: ``smtp`` (port 25 style: STARTTLS offered, AUTH after it), ``submission``
    (RFC 6409: STARTTLS, then AUTH, before MAIL) and ``smtps`` (RFC 8314: implicit TLS,
    AUTH before MAIL).  ``reactor`` defaults to the global one.  ``extraCheckers`` adds
    twisted.cred checkers for AUTH.  With ``handleSignals``, SIGHUP reloads the TLS
    certificate (twistd sets this; an embedding application may call :meth:`reload`).

    Raises :class:`jsmail.tls.TLSError` when the certificate cannot be used.
    """

    def __init__(
        self,
        config: Config,
        reactor: IReactorTime | None = None,
        extraCheckers: Sequence[ICredentialsChecker] = (),
        handleSignals: bool = False,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor  # type: ignore[assignment]
        self.config = config
        self.dataDir = os.path.abspath(config.dataDir)
        self.reactor = reactor
        self.diskThreads = ThreadPool(minthreads=0, maxthreads=config.diskThreads, name="jsmail-disk")
        self.queue = MaildirQueue(os.path.join(self.dataDir, "queue"), self.runInThread)
        self.mailRoot = os.path.join(self.dataDir, "mail")
        self.local = MaildirDelivery(self.mailRoot, self.runInThread, config.hostname, self.queue.syncer)
        self.router = Router(config.domains, self.local)
        retry = RetrySchedule(config.retryFirst, config.retryFactor, config.retryMaximum, config.giveUp)
        self.scheduler = Scheduler(self.queue, self.router, reactor, self.runInThread, config.hostname,
                                   retry, config.deliveryConcurrency)
        self.scheduler.setServiceParent(self)
        self.handleSignals = handleSignals
        self.tls = makeTLS(config, self.dataDir)
        portal = makePortal(config, extraCheckers)
        policies = [RelayControl(self.router.isLocal, config.trustedNetworks)]
        funnel = self.scheduler.funnel
        self.listeners: list[ListenerService] = []
        kinds = (
            ("smtp", config.smtpListeners, serverSettings(config), False),
            ("submission", config.submissionListeners, serverSettings(config, requireTLS=True, requireAuth=True), False),
            ("smtps", config.smtpsListeners, serverSettings(config, requireAuth=True), True),
        )
        for kind, descriptions, settings, implicitTLS in kinds:
            factory: Factory = ESMTPServerFactory(settings, funnel, reactor, policies, kind, self.tls, portal, implicitTLS)
            if implicitTLS:
                factory = TLSMemoryBIOFactory(self.tls, False, factory)
            for description in descriptions:
                listener = ListenerService(reactor, description, factory, kind)
                listener.setServiceParent(self)
                self.listeners.append(listener)

    def listenersOf(self, kind: str) -> list[ListenerService]:
        """The listeners of one kind: ``smtp``, ``submission`` or ``smtps``."""
        return [listener for listener in self.listeners if listener.kind == kind]

    def reload(self) -> None:
        """Read the TLS certificate again; sessions in progress keep theirs."""
        self.tls.reload()

    def runInThread(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run blocking disk work in the gateway's thread pool."""
        return deferToThreadPool(self.reactor, self.diskThreads, f, *args, **kwargs)

    def startService(self) -> None:
        self.diskThreads.start()
        super().startService()
        if self.handleSignals:
            from twisted.internet import reactor

            signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload))  # type: ignore[attr-defined]

    def privilegedStartService(self) -> None:
        _log.info(
            "jsmail {version}: host name {hostname}; data under {data}; queue in {data}{sep}queue; "
            "mail for {domains} is delivered to the Maildirs {mail}{sep}<domain>{sep}<local-part>{sep}; "
            "TLS certificate {certificate}; AUTH users in {passwd} (add one with: jsmail passwd --data {data} USER)",
            version=__version__, hostname=self.config.hostname, data=self.dataDir, sep=os.sep,
            domains=", ".join(self.config.domains), mail=self.mailRoot, certificate=self.tls.certificatePath,
            passwd=os.path.abspath(self.config.passwordPath),
        )
        super().privilegedStartService()

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda result: (self.diskThreads.stop(), result)[1])
        return d

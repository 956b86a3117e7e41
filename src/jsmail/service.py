"""The whole gateway as one :class:`twisted.application.service.MultiService`: what twistd and embedders start.

:class:`MailGateway` receives: the SMTP listeners and the queue's incoming side.
:class:`DeliveryService` delivers: the scheduler and its agents (qmail-send and
qmail-local).  By default the delivery side runs in a child process of its own
(:mod:`jsmail.send.process`), as qmail runs qmail-send beside qmail-smtpd: each gets a
core and a GIL, and the queue on disk is all they share.

Started as root, the gateway makes the data tree for the user it will run as, binds
its listeners and starts the local spawner in ``privilegedStartService``, and then
gives up root for that user (``[server] user``, or twistd's ``--uid``); everything
after, the delivery process included, runs as that user.  ``docs/security.rst`` has
the whole model.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from functools import partial
from typing import Any, Sequence

from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory

from jsmail import __version__
from jsmail._dns import makeResolver
from jsmail._threads import RunInThread, ThreadPoolService, reactorThreads
from jsmail.auth import AnyOfCheckers, HashedPasswordFile, MailRealm, forSMTPAuth
from jsmail.config import Config, ConfigError
from jsmail.configcheck import checkedConfig
from jsmail.datadir import DataTreeError, prepareDataTree
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus
from jsmail.listen import ListenerService, ListeningError
from jsmail.local.agent import LocalDelivery
from jsmail.local.directory import RecipientDirectory
from jsmail.local.session import SessionDelivery
from jsmail.local.spawner import Spawner, SpawnerSettings
from jsmail.policy.base import Policy
from jsmail.policy.chain import Chain, buildChain
from jsmail.policy.plugin import PluginError, PolicyContext
from jsmail.policy.recipients import KnownRecipients
from jsmail.policy.relay import BadMailFrom, RelayControl, TrustedClient
from jsmail.privileges import Identity, PrivilegeError, becomeUser, identityOf, isRoot
from jsmail.qmail.queuesink import ProgramQueue
from jsmail.queue.funnel import NOTHING, Funnel, Owed
from jsmail.queue.store import MaildirQueue
from jsmail.reply import PeerReply, Reply
from jsmail.route import Router
from jsmail.send.process import SendProcess
from jsmail.send.service import DeliveryService
from jsmail.smtp.commands import withCRLF
from jsmail.smtp.handoff import ReceivingProcesses, SharedFailures
from jsmail.smtp.sasl import FailureCounter
from jsmail.smtp.server import ESMTPServerFactory, Listener
from jsmail.smtp.tls import ServerTLS, ensureSelfSigned
from jsmail.submit.listener import forGateway

_log = Logger()

#: Threads per kind of blocking work, beside ``queue.disk_threads``: password hashes are
#: slow on purpose and checks wait on DNS, so neither may take the disk's threads.
AUTH_THREADS = 2
CHECK_THREADS = 10
LISTENER_KINDS = ("smtp", "submission", "smtps")


def _globalReactor() -> Any:
    from twisted.internet import reactor

    return reactor


def makePortal(config: Config, extraCheckers: Sequence[ICredentialsChecker] = (),
               runInThread: RunInThread | None = None) -> Portal:
    """AUTH users: the password file (``jsmail passwd``), then the configured checkers,
    then any given on the command line (``--auth``).  Password hashes are checked with
    ``runInThread``."""
    checkers: list[ICredentialsChecker] = [HashedPasswordFile(config.auth.passwordFile, runInThread)]
    checkers += [forSMTPAuth(strcred.makeChecker(d), d) for d in config.auth.checkers]
    checkers += [forSMTPAuth(checker) for checker in extraCheckers]
    return Portal(MailRealm(config.server.domains, config.auth.senderRule), [AnyOfCheckers(checkers)])


def runAs(config: Config) -> Identity | None:
    """Whom the gateway runs as once its ports are bound, checked against whom it
    runs as now; raises :class:`ConfigError` for what cannot work: a user that root
    would be needed to become, or per-user delivery without root to do it."""
    server = config.server
    try:
        identity = identityOf(server.user, server.group) if server.user else None
    except PrivilegeError as e:
        raise ConfigError("configuration", "server.user", str(e)) from None
    if identity is not None and not isRoot() and not identity.isCurrent():
        raise ConfigError("configuration", "server.user",
                          f"jsmail runs as uid {os.getuid()}, not root, so it cannot become user {identity.name}")
    if config.local.homeDotQmail and not isRoot():
        raise ConfigError("configuration", "local.home_dotqmail",
                          "delivering as each system user needs jsmail started as root (the local spawner switches "
                          "to the user); it is refused rather than followed as jsmail's own user")
    return identity


_LISTENER_RULES: dict[str, dict[str, bool]] = {
    "smtp": {}, "submission": {"requireTLS": True, "requireAuth": True}, "smtps": {"requireAuth": True}}


def authFailureCounter(config: Config) -> FailureCounter:
    """The count of failed logins the listeners share, bounded as configured."""
    return FailureCounter(config.smtp.authFailureWindow, config.smtp.authRememberedKeys)


def makeListener(config: Config, kind: str, funnel: Funnel, reactor: Any, checks: Sequence[object],
                 modifiers: Sequence[Any], tls: Any, portal: Portal | None, runInThread: RunInThread,
                 roomFor: Any = None, authFailures: FailureCounter | None = None) -> Listener:
    """The listener of ``kind`` ("smtp", "submission" or "smtps") with its rules:
    submission requires STARTTLS and AUTH, smtps is TLS from the first byte and
    requires AUTH, and both are owed Date and Message-ID (RFC 6409 section 8)."""
    owed = NOTHING if kind == "smtp" else Owed(complete=True, hostname=config.server.hostname)
    failures = authFailures if authFailures is not None else authFailureCounter(config)
    rules = replace(config.smtp, **_LISTENER_RULES[kind])  # type: ignore[arg-type]  # all bool fields
    return Listener(rules, funnel.owing(owed), reactor, kind,
                    tuple(checks), tuple(modifiers), tls, portal, kind == "smtps", runInThread, roomFor,
                    failures, owed)


def builtInChecks(config: Config, runInThread: RunInThread, relayControl: bool = True,
                  announce: bool = True) -> list[Policy]:
    """The checks every listener runs before its plugins: no open relay (left out only
    where tcpserver's RELAYCLIENT has said the client may relay), no unknown local
    recipient, and qmail's badmailfrom."""
    server, relay = config.server, config.relay
    checks: list[Policy] = []
    if relayControl:
        checks.append(RelayControl(frozenset(server.domains).__contains__, server.trustedNetworks,
                                   relay.rcptHostsCheck()))
    else:
        checks.append(TrustedClient())
    checks += knownRecipients(config, runInThread, announce)
    if relay.badMailFrom:
        checks.append(BadMailFrom(relay.badMailFrom))
    return checks


def knownRecipients(config: Config, runInThread: RunInThread, announce: bool = True) -> list[Policy]:
    """The RCPT check that refuses unknown local recipients, unless catch-all delivery
    is on (then the start-up log says so, once: ``announce`` is False for a second
    listener built from the same configuration)."""
    if config.local.catchAll:
        if announce:
                _log.info("Catch-all delivery: mail for any local part @{domains} is accepted and gets a Maildir "
                      "of its own (set [local] catch_all = false to refuse unknown recipients)",
                      domains=",".join(config.server.domains))
        return []
    names = HashedPasswordFile(config.auth.passwordFile).userNames
    directory = RecipientDirectory(os.path.join(config.server.dataDir, "mail"), config.local,
                                   config.server.hostname, names)
    return [KnownRecipients(directory, runInThread)]


def makeTLS(config: Config) -> ServerTLS:
    """The configured certificate, or a self-signed one made under the data directory."""
    server = config.server
    if server.tlsCertificate:
        return ServerTLS(server.tlsCertificate, server.tlsKey or server.tlsCertificate)
    return ServerTLS(*ensureSelfSigned(os.path.join(server.dataDir, "tls"), server.hostname))


def policyChains(config: Config, reactor: Any, runInThread: RunInThread, checkOnly: bool = False) -> dict[str, Chain]:
    """Each listener's policy checks, built from their plugins (see :mod:`jsmail.policy`).

    Raises :class:`ConfigError` for an unknown plugin or a bad plugin option."""
    policy = config.policy
    chains = {kind: Chain() for kind in LISTENER_KINDS}
    if not any(policy.checksFor(kind) for kind in LISTENER_KINDS):
        return chains  # no resolver either: it would watch resolv.conf for nothing
    server = config.server
    context = PolicyContext(reactor, makeResolver(config.remote.dnsServer, reactor), runInThread, server.hostname,
                            config.smtp.authservId, server.dataDir, frozenset(server.domains), checkOnly)
    for kind in LISTENER_KINDS:
        try:
            chains[kind] = buildChain(policy.checksFor(kind), policy.plugins, context)
        except PluginError as e:
            key = f"policy.{kind}" if e.key == "policy" else e.key
            raise ConfigError("configuration", key, str(e)) from None
    return chains


def checkPolicies(config: Config, reactor: Any) -> None:
    """Build every listener's checks once and throw them away, so ``--check-config``
    finds an unknown plugin or a bad plugin option (creating none of their files)."""
    policyChains(config, reactor, reactorThreads(reactor), checkOnly=True)


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
            self.publisher.addObserver(self._observe)  # type: ignore[arg-type]  # a callable is an ILogObserver
        d: defer.Deferred[list[DeliveryResult]] = defer.Deferred()
        self._waiting[queueId] = (d, [])
        return d

    def forget(self, queueId: str) -> None:
        self._waiting.pop(queueId, None)
        if not self._waiting:
            self.publisher.removeObserver(self._observe)  # type: ignore[arg-type]

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != "jsmail.maillog" or event.get("queueId") not in self._waiting:
            return
        d, results = self._waiting[event["queueId"]]
        kind = event.get("event")
        if kind in ("delivered", "failed"):
            status = DeliveryStatus.DELIVERED if kind == "delivered" else DeliveryStatus.PERMANENT
            reply = (PeerReply if event["peer"] else Reply)(event["code"], event["enhanced"], event["text"])
            results.append(DeliveryResult(event["recipient"], status, reply, event["reason"]))
        elif kind == "removed":
            del self._waiting[event["queueId"]]
            if not self._waiting:
                self.publisher.removeObserver(self._observe)  # type: ignore[arg-type]
            d.callback(results)


class MailGateway(ThreadPoolService):
    """The gateway, wired from one :class:`Config`.

    Listeners: ``smtp`` (port 25 style: STARTTLS offered, AUTH after it), ``submission``
    (RFC 6409: STARTTLS, then AUTH, before MAIL) and ``smtps`` (RFC 8314: implicit TLS,
    AUTH before MAIL).  Delivery runs in a child process when ``config.queue.deliveryProcess``
    (the default), else in this process as :attr:`delivery`.  ``reactor`` defaults to
    the global one.  ``extraCheckers`` adds twisted.cred checkers for AUTH.  With
    ``standalone`` (set by twistd), SIGHUP calls :meth:`reload` and a port that
    cannot be bound stops start-up with one line; an embedding application gets
    :class:`ListeningError` instead, and may call :meth:`reload` itself.

    Raises :class:`jsmail.smtp.tls.TLSError` when the certificate cannot be used, and
    :class:`ConfigError` for a ``Config(...)`` built in code with a value a TOML file
    could not have (it is checked and completed as :func:`loadConfig` does).
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        extraCheckers: Sequence[ICredentialsChecker] = (),
        standalone: bool = False,
        receiving: Any = None,
    ) -> None:
        config = checkedConfig(config)  # one built in code is checked as a file is
        super().__init__(reactor or _globalReactor(),
                         {"disk": config.queue.diskThreads, "auth": AUTH_THREADS, "checks": CHECK_THREADS})
        self.config = config
        server = config.server
        self.dataDir = server.dataDir
        self.mailRoot = os.path.join(self.dataDir, "mail")
        self.identity = runAs(config)
        try:
            prepareDataTree(self.dataDir, (self.identity.uid, self.identity.gid) if self.identity else None)
        except (DataTreeError, OSError) as e:
            raise ConfigError("configuration", "server.data", str(e)) from None
        runInThread = self.threads("disk")
        self.receiving = receiving
        self.queue = MaildirQueue(os.path.join(self.dataDir, "queue"), runInThread, sweep=receiving is None)
        # Started before the delivery side, so that it is stopped after it.
        self.spawner: Spawner | None = None
        if receiving is None and isRoot() and (config.local.homeDotQmail or os.path.isdir(config.local.usersDir)):
            self.spawner = Spawner(SpawnerSettings.of(config.local), self.reactor)
            self.spawner.setServiceParent(self)
        connect = self.spawner.connection if self.spawner is not None else lambda: None
        self.delivery: DeliveryService | SendProcess | None = None
        self.receivers: ReceivingProcesses | None = None
        if receiving is not None:  # a receiving process: the main one tells the delivery process
            self.funnel = Funnel(self.queue, lambda queueId, envelope: receiving.queued(queueId))
        elif config.queue.deliveryProcess:
            sendProcess = self.delivery = SendProcess(config, self.reactor, connect)
            self.funnel = Funnel(self.queue, lambda queueId, envelope: sendProcess.notify(queueId))
            if config.smtp.processes > 1:
                if extraCheckers:
                    raise ConfigError("command line", "--auth", "checkers given on the command line cannot reach "
                                      "the receiving processes (smtp.processes above 1): set [auth] checkers")
                shared = SharedFailures(config.smtp.authFailureWindow, config.smtp.authRememberedKeys,
                                        lambda key, now: receivers.failedAuth(key, now))
                receivers = self.receivers = ReceivingProcesses(config, self.reactor, sendProcess.notify,
                                                                runInThread, self.queue.tmpDir, shared)
        else:
            self.delivery = DeliveryService(config, self.reactor, flushOnSignal=standalone, spawner=connect)
            self.funnel = Funnel(self.queue, self.delivery.scheduler.schedule)
        self.outcomes = Outcomes()
        # A qmail-queue program takes the mail instead of jsmail's queue, through a funnel
        # of its own (nothing to tell the delivery process).
        funnel = Funnel(ProgramQueue(config.queue.program, self.reactor), lambda *_: None) \
            if config.queue.program else self.funnel
        smtpFunnel = funnel
        if config.local.inSession and not config.queue.program:
            local = LocalDelivery(self.mailRoot, runInThread, server.hostname, self.queue.syncer,
                                  reactor=self.reactor, settings=config.local)
            router = Router(server.domains, local, None, config.local.virtualDomains)
            smtpFunnel = Funnel(SessionDelivery(self.queue, local, router, self.reactor), self.funnel.onQueued)
        if self.delivery is not None:
            self.delivery.setServiceParent(self)
        if self.receivers is not None:
            self.receivers.setServiceParent(self)
        self.standalone = standalone
        self.tls = makeTLS(config)
        self.portal = portal = makePortal(config, extraCheckers, self.threads("auth"))
        always = builtInChecks(config, self.threads("checks"), announce=receiving is None)
        self.chains = policyChains(config, self.reactor, self.threads("checks"))
        self.listeners: list[ListenerService] = []
        # One count for all listeners (and, in receiving processes, shared between them).
        if receiving is not None:
            authFailures = receiving.sharedFailures(config.smtp.authFailureWindow, config.smtp.authRememberedKeys)
        else:
            authFailures = self.receivers.failures if self.receivers is not None else authFailureCounter(config)
        #: Each kind's listener, which a receiving process's sessions take their rules from.
        self.smtpListeners: dict[str, Listener] = {}
        for kind in LISTENER_KINDS:
            listener = self.smtpListeners[kind] = makeListener(
                config, kind, smtpFunnel, self.reactor, (*always, *self.chains[kind].policies),
                self.chains[kind].modifiers, self.tls, portal, runInThread,
                None if config.queue.program else self.queue.roomFor, authFailures)
            if receiving is not None:
                continue  # connections come from the main process
            counting = ESMTPServerFactory(listener)
            factory: IProtocolFactory = TLSMemoryBIOFactory(self.tls, False, counting) if listener.implicitTLS \
                else counting
            handOff = None if self.receivers is None else \
                partial(self.receivers.takeOver, kind, counting, self.tls if listener.implicitTLS else None)
            for description in getattr(config.listen, kind):
                service = ListenerService(self.reactor, description, factory, kind, handOff)
                service.setServiceParent(self)
                self.listeners.append(service)
        #: Local users' mail, from jsmail-sendmail (jsmail.submit); not among the TCP ``listeners``.
        self.localSubmission: ListenerService | None = None
        if config.submit.socket and receiving is None:
            self.localSubmission = forGateway(config, funnel, self.reactor, self.threads("auth"),
                                              None if config.queue.program else self.queue.roomFor,
                                              knownRecipients(config, self.threads("checks"), announce=False))
            self.localSubmission.setServiceParent(self)
        if config.metrics.listen and receiving is None:
            from jsmail.ops.web import OperationsService  # prometheus_client only when asked for

            self.operations = OperationsService(self, config.metrics.listen)
            self.operations.setServiceParent(self)

    @defer.inlineCallbacks
    def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> Any:
        """Queue ``message`` for delivery, as if received by SMTP, and fire with one
        :class:`DeliveryResult` per recipient once it has left the queue: delivered, or
        failed for good (after the retries; the sender got a bounce).  Lines ending in
        LF alone (as ``EmailMessage.as_bytes()`` makes them) are made CR LF, as SMTP
        carries them: a peer would refuse them, and the sender get a bounce."""
        message = withCRLF(message)
        envelope = Envelope(sender, tuple(Recipient(r) for r in recipients), arrival=self.reactor.seconds(),
                            clientAddress="127.0.0.1", helo=self.config.server.hostname, protocol="local",
                            trusted=True)
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
        """Read the TLS certificate, the checks' list files and the password files again
        (SIGHUP), and log what was reloaded; sessions in progress keep their certificate.
        After a drop of root, a file only root may read cannot be reloaded: the log says
        how to make it readable."""
        if self.tls.reload():
            done = ["TLS certificate"]
        else:
            done = ["TLS certificate (failed: the old one is kept)"]
            self._explainUnreadable("reloaded on SIGHUP")
        checks = {id(c): c for chain in self.chains.values() for c in chain.policies if hasattr(c, "reload")}
        checkers = [c for c in getattr(self.portal.checkers.get(IUsernamePassword), "checkers", ())
                    if hasattr(c, "reload")]
        for reloadable in (*checks.values(), *checkers):
            reloadable.reload()
        if self.receivers is not None:
            self.receivers.reload()
            done.append("the same in each receiving process")
        done += [f"{type(c).__name__} lists" for c in checks.values()]
        done += [f"password file {c.path}" for c in checkers]
        _log.info("SIGHUP: reloaded {what}", what=", ".join(done))

    def childrenStopped(self) -> None:
        self.queue.close()

    def _explainUnreadable(self, what: str) -> None:
        """Say how to make the TLS files readable once root is given up."""
        if self.identity is None or isRoot():
            return
        for path in {self.tls.certificatePath, self.tls.keyPath}:
            if not os.access(path, os.R_OK):
                _log.error("{path} cannot be {what}: jsmail runs as user {user} since it started, and that user "
                           "cannot read it; make it readable by {user} (for example: chgrp {group} {path}; "
                           "chmod 0640 {path}) or restart jsmail to read it as root",
                           path=path, what=what, user=self.identity.name, group=self.identity.gid)

    def startService(self) -> None:
        if not self._privileged:
            self.privilegedStartService()  # an embedder that only starts: bind and drop now
        super().startService()
        if self.standalone:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def privilegedStartService(self) -> None:
        if self.receiving is None:  # a receiving process is one of the main process's parts
            _log.info(
                "jsmail {version}: host name {hostname}; data under {data}; queue in {data}{sep}queue; "
                "mail for {domains} is delivered to the Maildirs {mail}{sep}<domain>{sep}<local-part>{sep}; "
                "TLS certificate {certificate}; AUTH users in {passwd} (add one with: jsmail passwd --data {data} "
                "USER)", version=__version__, hostname=self.config.server.hostname, data=self.dataDir, sep=os.sep,
                domains=", ".join(self.config.server.domains), mail=self.mailRoot,
                certificate=self.tls.certificatePath, passwd=self.config.auth.passwordFile,
            )
        self._privileged = True
        if self.standalone and self.umask is not None:
            os.umask(self.umask)
        try:
            super().privilegedStartService()
            self._becomeUser()
        except (ListeningError, PrivilegeError) as e:
            if not self.standalone:
                raise
            sys.stderr.write(f"jsmail: {e}\n")
            raise SystemExit(2) from None

    _privileged = False
    #: Set at start by twistd (``standalone``): nothing jsmail makes is for other users' eyes.
    umask: int | None = 0o077

    def _becomeUser(self) -> None:
        """Give up root, now that the ports are bound and the spawner runs; then check
        that what the rest of the run needs is still within reach."""
        if self.receiving is not None:
            return  # started by the main process as its user, which it checked
        if self.identity is None:
            if isRoot():
                _log.warn("jsmail runs as root: set [server] user (or twistd --uid) to run as a user of its own")
            return
        if isRoot():
            becomeUser(self.identity)
            _log.info("Running as user {user} (uid {uid}, gid {gid}) from now on", user=self.identity.name,
                      uid=self.identity.uid, gid=self.identity.gid)
        package = os.path.dirname(os.path.abspath(__file__))
        if self.config.queue.deliveryProcess and not (os.access(sys.executable, os.X_OK)
                                                      and os.access(package, os.R_OK | os.X_OK)):
            raise PrivilegeError(f"user {self.identity.name} cannot run {sys.executable} or read {package}, so no "
                                 f"delivery process can start: install jsmail where that user can read and run it")
        self._explainUnreadable("read again on SIGHUP")

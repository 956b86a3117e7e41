"""Remote delivery (qmail-remote's job): where mail for a domain goes, and taking it there.

For each recipient domain the destination is, in order: a per-domain route (like
qmail's ``smtproutes``), the smarthost, or the domain's mail exchangers, looked up
as :mod:`jsmail.remote.mx` says.  Only a failure to
set up a session (no connection, a 4xx/5xx greeting, a TLS failure) moves on to the
next address or MX; once a host has answered for the recipients, its answers stand.

TLS, per destination (``tls``): ``none``; ``opportunistic`` (STARTTLS when offered; a
failed handshake is retried once in plaintext on the same host, and logged, unless the
route has credentials, which go only over verified TLS: ``verify`` is their default);
``verify`` (STARTTLS required, certificate checked against the host name with
service_identity; a failure is temporary); ``implicit`` (TLS from the first byte, as on
port 465).  What ``verify`` trusts: the platform's CA store (or the configured trust
root), checked against the name we connected to: for MX delivery that is the MX host
name as the DNS gave it, which an attacker who can forge DNS answers also controls.
MTA-STS (RFC 8461, :mod:`jsmail.remote.mtasts`) closes that gap for domains that publish a
policy: the policy, fetched over HTTPS from the domain's own web name and checked
against the CA store, lists the MX names allowed, and in ``enforce`` mode only those
are used, each with ``verify``.  DANE (RFC 7672, :mod:`jsmail.remote.dane`) closes it for MX
hosts whose TLSA records a validating resolver on loopback vouches for: such a host is
tried with STARTTLS required and its certificate matched against the records instead of
the CA store, whatever MTA-STS said (DANE's DNSSEC is the stronger proof).  Not for
routes and the smarthost (the operator's choice), nor with ``none`` or ``implicit``
(DANE for SMTP is about STARTTLS).  TLSA answers are kept for their TTL
(:class:`~jsmail.remote.dane.TLSACache`); a failed lookup is asked again next time.

MX addresses in internal networks, or of this host itself, are not used
(:mod:`jsmail.remote.destinations`).

Connections are reused: a session that delivered stays open for the next message to
the same host (up to ``idleTimeout`` seconds), and each host gets at most
``perHost`` sessions at once.  A pooled session the peer has closed is not reused; one
whose close crosses the RSET that takes it up is replaced by a new session at once,
once, so a peer's idle timeout never turns into temporary failures.  A host address
that could not be reached is backed off as a whole (like qmail's ``tcpto``): for
``backoff`` seconds, doubling with each further failure up to ``backoffMaximum``, mail
for it is deferred without trying, so a dead MX does not cost every queued message a
connection timeout.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jsmail import maillog, reply
from jsmail._bounded import LRU
from jsmail._threads import RunInThread
from jsmail.envelope import Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryResult, IDeliveryAgent, QueuedMessage
from jsmail.remote.dane import TLSACache, TLSARecord
from jsmail.remote.destinations import Destinations, Sieve
from jsmail.remote.mtasts import PolicyFetcher, applyPolicy
from jsmail.remote.mx import MailExchangers
from jsmail.remote.settings import RemoteSettings
from jsmail.route import Route
from jsmail.smtp.client import ClientSettings, ESMTPClient
from jsmail.smtp.commands import OutgoingMessage
from jsmail.smtp.connect import connectTo, readySession

_log = Logger()

# address, port, TLS mode, the name the certificate was checked for, the TLSA records it matched
_PoolKey = tuple[str, int, str, str, tuple[TLSARecord, ...]]

#: Opens a session with an address and port: :func:`jsmail.smtp.connect.connectTo` by default.
Connect = Callable[[str, int, ClientSettings], defer.Deferred[ESMTPClient]]


@implementer(IDeliveryAgent)
class RemoteDelivery:
    """Delivers to other domains over ESMTP (see the module docstring).  ``connect``
    opens sessions (tests give one that needs no sockets)."""

    def __init__(
        self,
        reactor: Any,
        runInThread: RunInThread,
        resolver: Any,
        settings: RemoteSettings,
        trustRoot: Any = None,
        mtaSts: PolicyFetcher | None = None,
        connect: Connect | None = None,
        destinations: Destinations | None = None,
    ) -> None:
        """``resolver`` answers the MX, address and TLSA questions; ``trustRoot`` is
        the CA store ``verify`` trusts (None: the platform's); ``connect`` opens
        client sessions (a fake network in tests); ``destinations`` says which MX
        addresses may be used (by default: public ones and ``settings.allowInternal``)."""
        self.reactor = reactor
        self.connect: Connect = connect or partial(connectTo, reactor)
        self.runInThread = runInThread
        self.exchangers = MailExchangers(resolver)
        self.tlsa = TLSACache(reactor, resolver)
        self.settings = settings
        # qmail's timeoutremote: one limit for every reply, in place of RFC 5321's per phase
        replyTimeout = settings.replyTimeout
        self.timeouts = {name: replyTimeout for name in ("greetingTimeout", "mailTimeout", "rcptTimeout", "dataTimeout",
                         "dataBlockTimeout", "finalDotTimeout", "commandTimeout")} if replyTimeout else {}
        self.routes = {r.domain.lower(): r for r in settings.routes}
        self.smarthost = settings.smarthostRoute
        self.trustRoot = trustRoot
        self.mtaSts = mtaSts
        self.destinations = destinations or Destinations(settings.allowInternal)
        # (address, port) -> (until, failures, why), for at most rememberedHosts hosts (security review L-10)
        self._down: LRU[tuple[str, int], tuple[float, int, str]] = LRU(settings.rememberedHosts)
        self._slots: dict[tuple[str, int], defer.DeferredSemaphore] = {}  # by address and port, as _down
        self._idle: dict[_PoolKey, list[tuple[ESMTPClient, Any]]] = {}

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        byDomain: dict[str, list[Recipient]] = {}
        for recipient in recipients:
            byDomain.setdefault(recipient.address.rpartition("@")[2].lower(), []).append(recipient)
        d = defer.gatherResults([self._deliverDomain(domain, message, rcpts) for domain, rcpts in byDomain.items()])
        return d.addCallback(lambda groups: [result for group in groups for result in group])

    @defer.inlineCallbacks
    def _deliverDomain(self, domain: str, message: QueuedMessage, recipients: list[Recipient]) -> Any:
        route = self.routes.get(domain) or self.smarthost
        sieve = None if route else Sieve(self.destinations, domain, self.settings.port)  # routes: the operator's choice
        try:
            hosts = [route.host] if route else (yield self.exchangers.hostsFor(domain))
        except DeliveryError as e:
            return DeliveryResult.forAll(recipients, e)
        dane = not route and not domain.startswith("[")
        ours = route is not None  # the operator's own relay: its words and name are private (security review I-5)
        if route:  # a route or smarthost is the operator's choice: MTA-STS and DANE are about MX hosts
            plan = [(host, route.tls) for host in hosts]
        else:
            route = Route(host="", port=self.settings.port, tls=self.settings.tls)
            policy = None
            if self.mtaSts is not None and not domain.startswith("["):
                policy = yield self.mtaSts.policyFor(domain)
            try:
                plan = applyPolicy(policy, domain, hosts, self.settings.tls)
            except DeliveryError as e:
                return DeliveryResult.forAll(recipients, e)
        lastError = DeliveryError(reply.NO_HOST_REACHED.format(domain), False, f"hosts {', '.join(hosts)}")
        for host, tls in plan:
            tlsa: tuple[TLSARecord, ...] = ()
            if dane and tls in ("opportunistic", "verify"):
                try:
                    records = yield self.tlsa.lookup(host, route.port)
                except DeliveryError as e:
                    lastError = e  # not this host now, and never without its TLSA check
                    continue
                if records:
                    _log.info("DANE: {host} has TLSA records; its certificate must match them", host=host)
                    tls, tlsa = "opportunistic", tuple(records)
            try:
                addresses = yield self.exchangers.addressesOf(host, domain)
            except DeliveryError as e:
                lastError = e
                continue
            if sieve is not None:
                addresses = sieve.sift(host, addresses)
                if sieve.loopsAt:
                    break  # this host: the MX hosts after it are its backups, not it theirs
            for address in addresses:
                outcome = yield self._deliverHost(replace(route, host=host, tls=tls), address, message, recipients,
                                                  tlsa)
                if isinstance(outcome, list):
                    return [replace(r, reply=replace(r.reply, private=True)) for r in outcome] if ours else outcome
                lastError = outcome
        refused = sieve.verdict([host for host, _ in plan]) if sieve else None
        if refused is not None:
            return DeliveryResult.forAll(recipients, refused)  # no host to try, now or later
        # No host took the session: another, or this one later, may (even after a 5xx to AUTH).
        return DeliveryResult.forAll(recipients, DeliveryError(lastError.reply, False, lastError.detail))

    def _deliverHost(self, route: Route, address: str, message: QueuedMessage, recipients: list[Recipient],
                     tlsa: tuple[TLSARecord, ...]) -> Any:
        """Results for the recipients, or a :class:`DeliveryError` saying why this host
        could not be tried.  ``tlsa``: the host's validated TLSA records, if any (DANE)."""
        slots = self._slots.setdefault((address, route.port), defer.DeferredSemaphore(self.settings.perHost))
        if len(slots.waiting) >= self.settings.perHost:
            # As many wait as are in session: a host that is slow on purpose (a tarpit)
            # holds at most twice per_host attempts; the rest wait in the queue.
            return defer.succeed(DeliveryError(reply.HOST_BUSY, False, f"{route.host} [{address}]"))
        d = slots.run(self._session, route, address, message, recipients, tlsa)

        def released(result: object) -> object:
            if not slots.waiting and slots.tokens == slots.limit:
                self._slots.pop((address, route.port), None)  # no map grows with the destinations seen
            return result

        return d.addBoth(released)

    @defer.inlineCallbacks
    def _session(self, route: Route, address: str, message: QueuedMessage, recipients: list[Recipient],
                 tlsa: tuple[TLSARecord, ...]) -> Any:
        client = self._takeIdle(route, address, tlsa)
        reused = client is not None
        if client is None:
            client = yield self._fresh(route, address, tlsa, message)
            if isinstance(client, DeliveryError):
                return client
        _logSession(message, route, address, tlsa, client)
        size, eightBit = yield self.runInThread(_measure, message)
        outgoing = OutgoingMessage(
            sender=message.envelope.sender,
            recipients=tuple(recipients),
            mailParams=message.envelope.mailParams,
            size=size,
            open=message.open,
            eightBit=eightBit,
        )
        results = yield self._withDeadline(client, client.send(outgoing), recipients)
        if reused and client.resetFailed:
            # The peer closed the pooled session just as it was reused (its close crossed
            # our RSET): nothing was sent, so one new session tries now, not a retry later.
            _log.info("The idle session with {host} [{address}] was closed by the peer; opening a new one",
                      host=route.host, address=address)
            client = yield self._fresh(route, address, tlsa, message)
            if isinstance(client, DeliveryError):
                return client
            _logSession(message, route, address, tlsa, client)
            results = yield self._withDeadline(client, client.send(outgoing), recipients)
        if self.settings.idleTimeout > 0 and not client.closed:
            self._keepIdle(route, address, tlsa, client)
        else:
            client.quit()  # reuse turned off (one session per message), or nothing left to reuse
        remote = f"dns; {route.host}" if route.host else f"dns; [{address}]"
        return [replace(r, remoteMTA=remote) for r in results]

    @defer.inlineCallbacks
    def _fresh(self, route: Route, address: str, tlsa: tuple[TLSARecord, ...], message: QueuedMessage) -> Any:
        """A new session, or the :class:`DeliveryError` why there is none (a host that
        cannot be reached is backed off; a host still backed off is not tried)."""
        now = self.reactor.seconds()
        until, failures, why = self._down.get((address, route.port), (0.0, 0, ""))
        if until > now:
            return DeliveryError(reply.HOST_BACKED_OFF, False, f"{why}; not tried again for {until - now:.0f} s")
        try:
            client = yield self._open(route, address, tlsa)
        except DeliveryError as e:
            _logSession(message, route, address, tlsa, None, "failed" if _isPolicyFailure(e) else "unreachable")
            why = f"{e} ({route.host} [{address}])"
            if not _isPolicyFailure(e):
                # Only a host that cannot be reached is backed off for everyone: a
                # TLS or policy failure is about this destination's demands, and an
                # attacker's domain pointing at a big provider's MX must not defer
                # other domains' mail there (security review M-6).
                delay = min(self.settings.hostBackoff * 2 ** failures, self.settings.hostBackoffMaximum)
                self._down[address, route.port] = (self.reactor.seconds() + delay, failures + 1, why)
            return DeliveryError(e.reply, e.permanent, f"{e.detail} ({route.host} [{address}])".lstrip())
        self._down.pop((address, route.port), None)
        return client

    def _withDeadline(self, client: ESMTPClient, sending: defer.Deferred[list[DeliveryResult]],
                      recipients: list[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        """A whole transaction gets ``sessionDeadline`` seconds, however slowly the peer
        answers each step within its own time-outs (a tarpit)."""
        timer = self.reactor.callLater(self.settings.sessionDeadline, client.abort,
                                       f"the transaction took longer than {self.settings.sessionDeadline:g} s")

        def done(results: list[DeliveryResult]) -> list[DeliveryResult]:
            if timer.active():
                timer.cancel()
            return results

        return sending.addBoth(done)

    def _open(self, route: Route, address: str, tlsa: tuple[TLSARecord, ...]) -> defer.Deferred[ESMTPClient]:
        """A session ready for mail (see :func:`jsmail.smtp.connect.readySession`);
        fails with :class:`DeliveryError`."""
        tlsHostname = route.host if route.tls in ("verify", "implicit") or tlsa else None
        settings = ClientSettings(heloName=self.settings.heloHost, tls=route.tls, tlsHostname=tlsHostname,
                                  trustRoot=self.trustRoot, tlsa=tlsa, username=route.username,
                                  password=route.password, allowInsecureAuth=self.settings.allowInsecureAuth,
                                  connectTimeout=self.settings.connectTimeout,
                                  **self.timeouts)  # type: ignore[arg-type]  # all float fields
        return defer.Deferred.fromCoroutine(readySession(lambda s: self.connect(address, route.port, s), settings))

    @staticmethod
    def _poolKey(route: Route, address: str, tlsa: tuple[TLSARecord, ...]) -> _PoolKey:
        """Sessions are shared only where they are equally trusted: a session verified
        for one name, or against one set of TLSA records, is not reused for another
        name or other records (or none) at the same address."""
        checked = route.tls in ("verify", "implicit") or tlsa
        return address, route.port, route.tls, route.host if checked else "", tlsa

    def _takeIdle(self, route: Route, address: str, tlsa: tuple[TLSARecord, ...]) -> ESMTPClient | None:
        key = self._poolKey(route, address, tlsa)
        pool = self._idle.get(key, [])
        while pool:
            client, timer = pool.pop()
            timer.cancel()
            if not client.closed:
                break
        else:
            client = None
        if not pool:
            self._idle.pop(key, None)  # no map grows with the destinations seen
        return client

    def _keepIdle(self, route: Route, address: str, tlsa: tuple[TLSARecord, ...], client: ESMTPClient) -> None:
        key = self._poolKey(route, address, tlsa)
        pool = self._idle.setdefault(key, [])

        def expire() -> None:
            pool[:] = [(c, t) for c, t in pool if c is not client]
            if not pool and self._idle.get(key) is pool:
                del self._idle[key]
            client.quit()

        pool.append((client, self.reactor.callLater(self.settings.idleTimeout, expire)))

    def close(self) -> defer.Deferred[Any]:
        """Say QUIT on every idle session; call off MTA-STS refreshes, and let their
        stored-policy writes finish."""
        quits = []
        for pool in self._idle.values():
            for client, timer in pool:
                timer.cancel()
                quits.append(defer.maybeDeferred(client.quit))
            pool.clear()
        if self.mtaSts is not None:
            quits.append(self.mtaSts.close())
        return defer.DeferredList(quits)


def _measure(message: QueuedMessage) -> tuple[int, bool]:
    """The message's size in octets, and whether it has 8-bit octets (blocking: run in
    a thread; the client needs both before MAIL)."""
    with message.open() as f:
        start = f.tell()
        eightBit = False
        while not eightBit and (chunk := f.read(65536)):
            eightBit = not chunk.isascii()
        return f.seek(0, 2) - start, eightBit


def _logSession(message: QueuedMessage, route: Route, address: str, tlsa: tuple[TLSARecord, ...],
                client: ESMTPClient | None, failure: str = "") -> None:
    """The operator log's ``remote`` event: which host, and how it went with TLS."""
    handle: Any = getattr(getattr(client, "transport", None), "getHandle", lambda: None)()
    tls = ""
    if hasattr(handle, "get_protocol_version_name"):
        tls = f"{handle.get_protocol_version_name()} with cipher {handle.get_cipher_name()}"
    maillog.remote(message.queueId, route.host, address, route.port, "dane" if tlsa else route.tls, tls,
                   failure or ("tls" if tls else "plaintext"))


def _isPolicyFailure(error: DeliveryError) -> bool:
    """A security or policy status (RFC 3463 class X.7.X: TLS required but missing, a
    certificate or TLSA mismatch, AUTH refused), as opposed to a host that is down."""
    return error.reply.enhanced[2:4] == "7."

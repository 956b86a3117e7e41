"""Remote delivery's choices without sockets: MX lookups answered by an in-process zone,
sessions by fakes given to RemoteDelivery as its ``connect``, time by a Clock."""

from __future__ import annotations

import io
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.names.authority import FileAuthority
from twisted.trial.unittest import SynchronousTestCase

from jsmail import reply
from jsmail.envelope import Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryResult, DeliveryStatus, QueuedMessage
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.mx import MailExchangers
from jsmail.remote.settings import RemoteSettings
from jsmail.reply import PeerReply
from jsmail.route import Route
from jsmail.smtp.client import ClientSettings
from jsmail.smtp.commands import OutgoingMessage
from jsmail.testing import runNow

DELIVERED, TEMPORARY, PERMANENT = DeliveryStatus.DELIVERED, DeliveryStatus.TEMPORARY, DeliveryStatus.PERMANENT

RECORDS: list[tuple[str, Any]] = [
    ("example.test", dns.Record_MX(20, b"mx2.example.test")),
    ("example.test", dns.Record_MX(10, b"mx1.example.test")),
    ("mx1.example.test", dns.Record_A("192.0.2.1")),
    ("mx1.example.test", dns.Record_AAAA("2001:db8::1")),
    ("mx2.example.test", dns.Record_A("192.0.2.2")),
    ("equal.test", dns.Record_MX(10, b"a.equal.test")),
    ("equal.test", dns.Record_MX(10, b"b.equal.test")),
    ("nomx.test", dns.Record_A("192.0.2.3")),
    ("null.test", dns.Record_MX(0, b"")),
    ("ghost.test", dns.Record_MX(10, b"mx.ghost.test")),
    ("mx.ghost.test", dns.Record_TXT(b"no address here")),
    ("relay.example.net", dns.Record_A("192.0.2.50")),
    ("smart.example.net", dns.Record_A("192.0.2.60")),
]


class Zone(FileAuthority):
    """Every name under the root, from ``RECORDS``: a name it lacks does not exist
    (NXDOMAIN); a name in ``failing`` gets SERVFAIL.  It has no servers, so DANE finds
    no validating resolver to ask and looks no further."""

    servers: Sequence[tuple[str, int]] = ()
    dynServers: Sequence[tuple[str, int]] = ()

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.failing = {name.encode("idna") for name in failing}
        super().__init__("")

    def loadFile(self, filename: object) -> None:
        soa = dns.Record_SOA(mname=b"ns.test", rname=b"hostmaster.test", serial=1, refresh=60, retry=60,
                             expire=60, minimum=1, ttl=1)
        self.soa = (b"", soa)
        self.records = {}
        for name, record in RECORDS:
            self.records.setdefault(name.encode("idna"), []).append(record)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        if name.lower() in self.failing:
            return defer.fail(dnserror.DNSServerError(name))
        return super()._lookup(name, cls, type, timeout)


class Session:
    """What RemoteDelivery needs of an ESMTPClient.  It is set up, or fails to be with
    ``setupError``; a recipient whose address starts with "bad" is refused (550 5.1.1)."""

    def __init__(self, address: str, settings: ClientSettings, setupError: DeliveryError | None,
                 tlsFailed: bool) -> None:
        self.peer = address
        self.settings = settings
        self.tlsFailed = tlsFailed
        self.closed = False
        self.resetFailed = False
        self.sent: list[OutgoingMessage] = []
        self.stalls = False  # a tarpit: send never answers until aborted
        self._setupError = setupError
        self._pending: defer.Deferred[list[DeliveryResult]] | None = None

    @property
    def ready(self) -> defer.Deferred[None]:
        return defer.fail(self._setupError) if self._setupError is not None else defer.succeed(None)

    def send(self, message: OutgoingMessage) -> defer.Deferred[list[DeliveryResult]]:
        self.sent.append(message)
        if self.stalls:
            self._pending = defer.Deferred()
            self._recipients = message.recipients
            return self._pending
        return defer.succeed([
            DeliveryResult(r.address, PERMANENT, PeerReply(550, "5.1.1", "no such user")) if r.address.startswith("bad")
            else DeliveryResult(r.address, DELIVERED, PeerReply(250, "2.0.0", "queued")) for r in message.recipients])

    def quit(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def abort(self, why: str) -> None:
        self.closed = True
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.callback([DeliveryResult(r.address, TEMPORARY, reply.PEER_TIMEOUT, why) for r in self._recipients])


class Network:
    """Stands in for :func:`jsmail.smtp.connect.connectTo`: addresses in ``down`` take no
    connection; those in ``tlsBreaks`` break in the TLS handshake (and work without
    TLS); those in ``setupErrors`` fail to set up with that error.  Every attempt is
    kept."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.setupErrors: dict[str, DeliveryError] = {}
        self.tlsBreaks: set[str] = set()
        self.attempts: list[tuple[str, int, ClientSettings]] = []
        self.sessions: list[Session] = []

    tarpits: set[str] = set()

    def connect(self, address: str, port: int, settings: ClientSettings) -> defer.Deferred[Session]:
        self.attempts.append((address, port, settings))
        if address in self.down:
            return defer.fail(DeliveryError(reply.CANNOT_CONNECT, False, f"cannot connect to {address} port {port}"))
        if address in self.tlsBreaks and settings.tls != "none":
            session = Session(address, settings, DeliveryError(reply.PEER_TLS_FAILED, False, "handshake"), True)
        else:
            session = Session(address, settings, self.setupErrors.get(address), False)
        session.stalls = address in self.tarpits
        self.sessions.append(session)
        return defer.succeed(session)

    @property
    def addresses(self) -> list[str]:
        return [address for address, _, _ in self.attempts]


class MailExchangerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mx = MailExchangers(Zone(failing=["servfail.test"]))

    def test_preference_order(self) -> None:
        self.assertEqual(self.successResultOf(self.mx.hostsFor("example.test")),
                         ["mx1.example.test", "mx2.example.test"])

    def test_equal_preferences_in_random_order(self) -> None:
        orders = {tuple(self.successResultOf(self.mx.hostsFor("equal.test"))) for _ in range(64)}
        self.assertEqual(orders, {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")})

    def test_implicit_mx(self) -> None:
        """No MX: the domain itself (RFC 5321 section 5.1); an address literal is its own host."""
        self.assertEqual(self.successResultOf(self.mx.hostsFor("nomx.test")), ["nomx.test"])
        self.assertEqual(self.successResultOf(self.mx.hostsFor("[192.0.2.7]")), ["[192.0.2.7]"])

    def assertFails(self, d: defer.Deferred[Any], shown: str, permanent: bool, detail: str) -> None:
        error = self.failureResultOf(d, DeliveryError).value
        self.assertEqual((str(error.reply), error.permanent, error.detail), (shown, permanent, detail))

    def test_null_mx(self) -> None:
        self.assertFails(self.mx.hostsFor("null.test"),
                         "556 5.1.10 Domain null.test accepts no mail (null MX, RFC 7505)", True, "")

    def test_nxdomain(self) -> None:
        self.assertFails(self.mx.hostsFor("missing.test"), "550 5.1.2 Domain missing.test does not exist", True,
                         "NXDOMAIN for its MX")

    def test_servfail_is_temporary(self) -> None:
        self.assertFails(self.mx.hostsFor("servfail.test"), "451 4.4.3 DNS lookup for servfail.test failed", False,
                         "MX lookup: DNSServerError")

    def test_addresses_ipv6_first(self) -> None:
        self.assertEqual(self.successResultOf(self.mx.addressesOf("mx1.example.test")), ["2001:db8::1", "192.0.2.1"])
        self.assertEqual(self.successResultOf(self.mx.addressesOf("192.0.2.8")), ["192.0.2.8"])
        self.assertEqual(self.successResultOf(self.mx.addressesOf("[IPv6:2001:db8::8]")), ["2001:db8::8"])

    def test_host_without_address_is_temporary(self) -> None:
        self.assertFails(self.mx.addressesOf("mx.ghost.test", "ghost.test"),
                         "451 4.4.4 A mail exchanger of ghost.test has no address", False,
                         "mx.ghost.test has no address")


class RemoteDeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = Network()

    def remote(self, smarthost: Route | None = None, **settings: Any) -> RemoteDelivery:
        """Remote delivery over the fake network; ``settings`` are RemoteSettings fields."""
        if smarthost is not None:
            settings.update(smarthost=f"{smarthost.host}:{smarthost.port}", smarthostTLS=smarthost.tls,
                            smarthostUsername=smarthost.username or "", smarthostPassword=smarthost.password or "")
        return RemoteDelivery(self.clock, runNow, Zone(failing=["servfail.test"]),
                              RemoteSettings(heloHost="me.test", idleTimeout=0, **settings),
                              connect=self.network.connect)

    def deliver(self, remote: RemoteDelivery, *recipients: str) -> list[DeliveryResult]:
        envelope = Envelope("a@me.test", tuple(Recipient(r) for r in recipients))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"))
        return self.successResultOf(remote.deliver(message, envelope.recipients))

    def outcome(self, results: list[DeliveryResult]) -> list[tuple[str, DeliveryStatus, str, str]]:
        return [(r.recipient, r.status, str(r.reply), r.remoteMTA) for r in results]

    def test_best_mx_its_addresses_in_turn_then_the_next(self) -> None:
        self.network.down = {"2001:db8::1", "192.0.2.1"}
        results = self.deliver(self.remote(), "x@example.test")
        self.assertEqual(self.network.addresses, ["2001:db8::1", "192.0.2.1", "192.0.2.2"])
        self.assertEqual(self.outcome(results),
                         [("x@example.test", DELIVERED, "250 2.0.0 queued", "dns; mx2.example.test")])
        _, port, settings = self.network.attempts[-1]
        self.assertEqual((port, settings.heloName, settings.tls, settings.tlsHostname),
                         (25, "me.test", "opportunistic", None))

    def test_an_answer_stands(self) -> None:
        """Once a host has answered for a recipient, no other MX is asked."""
        results = self.deliver(self.remote(), "bad@example.test", "x@example.test")
        self.assertEqual(self.network.addresses, ["2001:db8::1"])
        self.assertEqual(self.outcome(results), [
            ("bad@example.test", PERMANENT, "550 5.1.1 no such user", "dns; mx1.example.test"),
            ("x@example.test", DELIVERED, "250 2.0.0 queued", "dns; mx1.example.test")])

    def test_implicit_mx(self) -> None:
        results = self.deliver(self.remote(), "x@nomx.test")
        self.assertEqual((self.network.addresses, results[0].status), (["192.0.2.3"], DELIVERED))

    def test_destination_errors(self) -> None:
        """Null MX and NXDOMAIN bounce, SERVFAIL and a host without address defer; each
        domain is decided on its own."""
        results = self.deliver(self.remote(), "a@null.test", "b@missing.test", "c@servfail.test", "d@ghost.test",
                               "e@nomx.test")
        self.assertEqual(self.outcome(results), [
            ("a@null.test", PERMANENT, "556 5.1.10 Domain null.test accepts no mail (null MX, RFC 7505)", ""),
            ("b@missing.test", PERMANENT, "550 5.1.2 Domain missing.test does not exist", ""),
            ("c@servfail.test", TEMPORARY, "451 4.4.3 DNS lookup for servfail.test failed", ""),
            ("d@ghost.test", TEMPORARY, "451 4.4.4 A mail exchanger of ghost.test has no address", ""),
            ("e@nomx.test", DELIVERED, "250 2.0.0 queued", "dns; nomx.test")])
        self.assertEqual(self.network.addresses, ["192.0.2.3"])

    def test_route_then_smarthost_then_mx(self) -> None:
        """A domain's route wins, the smarthost takes every other domain, and neither
        looks up an MX (routed.test has none: it does not exist)."""
        route = Route("relay.example.net", 2525, "none", domain="Routed.Test")
        smarthost = Route("smart.example.net", 587, "verify", "user", "secret")
        results = self.deliver(self.remote(routes=(route,), smarthost=smarthost),
                               "x@routed.test", "y@example.test")
        self.assertEqual([(address, port, s.tls, s.tlsHostname, s.username) for address, port, s in self.network.attempts],
                         [("192.0.2.50", 2525, "none", None, None),
                          ("192.0.2.60", 587, "verify", "smart.example.net", "user")])
        self.assertEqual([(r.status, r.remoteMTA) for r in results],
                         [(DELIVERED, "dns; relay.example.net"), (DELIVERED, "dns; smart.example.net")])
        self.deliver(self.remote(), "z@example.test")
        self.assertEqual(self.network.attempts[-1][:2], ("2001:db8::1", 25))

    def test_relayHostRepliesArePrivate(self) -> None:
        """Security review I-5: what a route or the smarthost says, and its name, are
        the operator's internals (a bounce shows them to trusted senders only); what a
        domain's own MX says is not."""
        route = Route("relay.example.net", 2525, "none", domain="routed.test")
        results = self.deliver(self.remote(routes=(route,)), "bad@routed.test", "x@routed.test", "bad@example.test")
        self.assertEqual([(r.recipient, r.reply.private) for r in results],
                         [("bad@routed.test", True), ("x@routed.test", True), ("bad@example.test", False)])

    def test_host_back_off_doubles_and_ends_with_a_session(self) -> None:
        remote = self.remote(hostBackoff=60, hostBackoffMaximum=100)
        self.network.down = {"192.0.2.3"}
        [first] = self.deliver(remote, "x@nomx.test")
        self.assertEqual((first.status, str(first.reply)),
                         (TEMPORARY, "451 4.4.1 Cannot connect to the mail exchanger"))
        self.assertEqual(first.detail, "cannot connect to 192.0.2.3 port 25 (nomx.test [192.0.2.3])")
        attempts = []
        for seconds in (59, 1, 99, 1, 100):  # backed off 60 s, then 100 (doubled, at most backoffMaximum)
            self.clock.advance(seconds)
            [result] = self.deliver(remote, "x@nomx.test")
            attempts.append(len(self.network.attempts))
            self.assertEqual(result.status, TEMPORARY)
        self.assertEqual(attempts, [1, 2, 2, 3, 4])
        self.assertEqual(str(result.reply), "451 4.4.1 Cannot connect to the mail exchanger")
        self.clock.advance(50)
        [backedOff] = self.deliver(remote, "x@nomx.test")
        self.assertEqual(str(backedOff.reply), "451 4.4.1 The mail exchanger failed lately; not tried again yet")
        self.assertIn("not tried again for 50 s", backedOff.detail)
        self.network.down.clear()
        self.clock.advance(50)
        [delivered] = self.deliver(remote, "x@nomx.test")
        self.assertEqual(delivered.status, DELIVERED)
        self.network.down = {"192.0.2.3"}
        self.deliver(remote, "x@nomx.test")
        self.clock.advance(60)
        self.deliver(remote, "x@nomx.test")
        self.assertEqual(len(self.network.attempts), 7, "a session clears the back-off: 60 s again")

    def test_no_host_taking_a_session_is_temporary(self) -> None:
        """Even a permanent refusal to set a session up (a 535 to AUTH) defers: the
        operator may fix the credentials, and another MX may take the mail."""
        refusal = DeliveryError(PeerReply(535, "5.7.8", "bad credentials"), True)
        self.network.setupErrors = {"192.0.2.60": refusal}
        [result] = self.deliver(self.remote(smarthost=Route("smart.example.net", 587, "verify", "u", "p")), "x@b.test")
        self.assertEqual((result.status, str(result.reply), result.fromPeer),
                         (TEMPORARY, "535 5.7.8 bad credentials", True))

    def test_failed_opportunistic_tls_retried_in_plaintext_once(self) -> None:
        self.network.tlsBreaks = {"192.0.2.3"}
        [result] = self.deliver(self.remote(), "x@nomx.test")
        self.assertEqual([s.tls for _, _, s in self.network.attempts], ["opportunistic", "none"])
        self.assertEqual(result.status, DELIVERED)

    def test_no_plaintext_retry_with_credentials(self) -> None:
        self.network.tlsBreaks = {"192.0.2.60"}
        smarthost = Route("smart.example.net", 587, "opportunistic", "u", "p")
        [result] = self.deliver(self.remote(smarthost=smarthost), "x@b.test")
        self.assertEqual([s.tls for _, _, s in self.network.attempts], ["opportunistic"])
        self.assertEqual((result.status, str(result.reply)),
                         (TEMPORARY, "454 4.7.5 TLS with the mail exchanger failed"))


class PolicyFailureTests(SynchronousTestCase):
    def test_tlsPolicyFailureDoesNotBackOffTheHostForOtherDomains(self) -> None:
        """Security review M-6: one domain's TLS demand that a host fails (here: TLS
        required, STARTTLS missing) backed the host's address off for every domain,
        so an attacker pointing a domain at a big provider's MX deferred all mail to
        that provider.  Only a host that cannot be reached is backed off."""
        clock, network = Clock(), Network()
        remote = RemoteDelivery(clock, runNow, Zone(failing=[]), RemoteSettings(heloHost="me.test", idleTimeout=0),
                                connect=network.connect)
        network.setupErrors = {"192.0.2.3": DeliveryError(reply.PEER_NO_STARTTLS, False, "no STARTTLS")}
        envelope = Envelope("a@me.test", (Recipient("x@nomx.test"),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"x\r\n"))
        [first] = self.successResultOf(remote.deliver(message, envelope.recipients))
        self.assertEqual(str(first.reply), "454 4.7.5 TLS is required but the mail exchanger does not offer STARTTLS")
        network.setupErrors = {}
        [second] = self.successResultOf(remote.deliver(message, envelope.recipients))
        self.assertEqual((second.status, len(network.attempts)), (DELIVERED, 2), "tried again at once")
        network.down = {"192.0.2.3"}
        self.successResultOf(remote.deliver(message, envelope.recipients))
        network.down = set()
        [backedOff] = self.successResultOf(remote.deliver(message, envelope.recipients))
        self.assertEqual((str(backedOff.reply), len(network.attempts)),
                         ("451 4.4.1 The mail exchanger failed lately; not tried again yet", 3),
                         "a host that cannot be reached is backed off")

    def test_tarpitHoldsFewAttemptsAndEachForAtMostTheDeadline(self) -> None:
        """Security review M-5: deliveries to a host that answers each step just within
        its time-out held every delivery slot.  Now at most as many attempts wait for a
        host as are in session with it (the rest defer at once), and each session ends
        at the transaction deadline."""
        clock, network = Clock(), Network()
        network.tarpits = {"192.0.2.3"}
        remote = RemoteDelivery(clock, runNow, Zone(failing=[]),
                                RemoteSettings(heloHost="me.test", idleTimeout=0, perHost=2, sessionDeadline=60.0),
                                connect=network.connect)
        envelope = Envelope("a@me.test", (Recipient("x@nomx.test"),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"x\r\n"))
        attempts = [remote.deliver(message, envelope.recipients) for _ in range(6)]
        busy = [self.successResultOf(d) for d in attempts[4:]]
        self.assertEqual([str(r[0].reply) for r in busy],
                         ["451 4.4.5 The mail exchanger is busy with other deliveries; trying later"] * 2)
        self.assertEqual(len(network.attempts), 2, "two in session, two waiting")
        clock.advance(60)
        clock.advance(60)
        results = [self.successResultOf(d) for d in attempts[:4]]
        self.assertEqual({str(r[0].reply) for r in results}, {"451 4.4.2 Timed out waiting for the mail exchanger"})

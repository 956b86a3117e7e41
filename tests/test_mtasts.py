"""MTA-STS: parsing and matching in memory; discovery end to end against a real DNS
server and a real HTTPS server (trustme certificate for mta-sts.example.test), both on
loopback."""

from __future__ import annotations

import io
import ipaddress
import json
import os
from typing import Any

import trustme
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import client, dns
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from jsmail.envelope import Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.destinations import Destinations
from jsmail.remote.mtasts import (
    MAX_AGE,
    Policy,
    PolicyFetcher,
    _policyAsJSON,
    _policyFromJSON,
    applyPolicy,
    parsePolicy,
    parseTXT,
)
from jsmail.remote.settings import RemoteSettings
from jsmail.remote.stsstore import PolicyStore, fileName
from jsmail.testing import DNSServer, runNow

LOOPBACK_ALLOWED = Destinations(allowed=(ipaddress.ip_network("127.0.0.0/8"),))  # where the test servers are
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n"


class TXTTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for record, policyId in [("v=STSv1; id=20160831085700Z;", "20160831085700Z"), ("v=STSv1;id=1", "1"),
                                 ("v=STSv1; ext=x; id=abc; id=def", "abc")]:
            self.assertEqual(parseTXT(record), policyId, record)

    def test_invalid(self) -> None:
        for record in ["v=STSv1", "v=STSv1;", "v=STSv1; id=", "v=STSv1; id=a-b", "v=STSv1; id=1; no value",
                       "v=STSv1; id=" + "1" * 33, "id=1; v=STSv1"]:
            self.assertRaises(ValueError, parseTXT, record)


class PolicyParseTests(SynchronousTestCase):
    def test_valid(self) -> None:
        policy = parsePolicy(POLICY, "7")
        self.assertEqual(policy, Policy(id="7", mode="enforce", mxPatterns=("mx1.example.test", "*.mx.example.test"),
                                        maxAge=86400))

    def test_lf_lines_unknown_fields_and_first_of_repeated(self) -> None:
        body = b"version: STSv1\nmode: testing\nmode: enforce\nfoo: bar\nmx:MX1.Example.Test\nmax_age: 0\n"
        self.assertEqual(parsePolicy(body, "1"), Policy(id="1", mode="testing", mxPatterns=("mx1.example.test",),
                                                        maxAge=0))

    def test_mode_none_needs_no_mx(self) -> None:
        self.assertEqual(parsePolicy(b"version: STSv1\nmode: none\nmax_age: 60\n", "1").mxPatterns, ())

    def test_invalid(self) -> None:
        base = {"version": "STSv1", "mode": "enforce", "mx": "mx.example.test", "max_age": "86400"}
        broken = {
            "no version": {"version": None}, "version STSv2": {"version": "STSv2"}, "mode bogus": {"mode": "bogus"},
            "mode in upper case": {"mode": "ENFORCE"}, "no mx": {"mx": None},
            "max_age too large": {"max_age": str(MAX_AGE + 1)}, "max_age not a number": {"max_age": "1e5"},
            "no max_age": {"max_age": None}, "two wildcards": {"mx": "*.*.example.test"},
            "wildcard inside": {"mx": "mx.*.example.test"}, "mx with port": {"mx": "mx.example.test:25"},
        }
        for change in broken.values():
            fields = {**base, **change}
            body = "".join(f"{key}: {value}\r\n" for key, value in fields.items() if value is not None)
            self.assertRaises(ValueError, parsePolicy, body.encode(), "1")
        self.assertRaises(ValueError, parsePolicy, POLICY + b"a line without colon\r\n", "1")
        self.assertRaises(ValueError, parsePolicy, POLICY.replace(b"mx1", b"mx\xff"), "1")


class MatchTests(SynchronousTestCase):
    policy = Policy(id="1", mode="enforce", mxPatterns=("mail.example.test", "*.example.net"), maxAge=60)

    def test_matches(self) -> None:
        for host in ["mail.example.test", "MAIL.Example.TEST", "mail.example.test.", "mx.example.net",
                     "MX.EXAMPLE.NET."]:
            self.assertTrue(self.policy.matches(host), host)

    def test_does_not_match(self) -> None:
        for host in ["example.test", "x.mail.example.test", "example.net", "a.b.example.net", "xexample.net",
                     ".example.net", "mail.example.test.evil"]:
            self.assertFalse(self.policy.matches(host), host)


class ApplyPolicyTests(SynchronousTestCase):
    hosts = ["mx.example.net", "stray.example.org", "mail.example.test"]

    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def policy(self, mode: str) -> Policy:
        return Policy(id="1", mode=mode, mxPatterns=("mail.example.test", "*.example.net"), maxAge=60)

    def test_no_policy_or_mode_none(self) -> None:
        for policy in [None, self.policy("none")]:
            self.assertEqual(applyPolicy(policy, "example.test", self.hosts, "opportunistic"),
                             [(host, "opportunistic") for host in self.hosts])
        self.assertEqual(self.logged, [])

    def test_testing_delivers_as_usual_and_logs(self) -> None:
        plan = applyPolicy(self.policy("testing"), "example.test", self.hosts, "opportunistic")
        self.assertEqual(plan, [(host, "opportunistic") for host in self.hosts])
        self.assertEqual([e.get("host") for e in self.logged], ["stray.example.org"])

    def test_enforce_keeps_matching_hosts_with_verify(self) -> None:
        for tls, enforced in [("opportunistic", "verify"), ("none", "verify"), ("verify", "verify"),
                              ("implicit", "implicit")]:
            self.assertEqual(applyPolicy(self.policy("enforce"), "example.test", self.hosts, tls),
                             [("mx.example.net", enforced), ("mail.example.test", enforced)])

    def test_enforce_without_matching_host_is_temporary(self) -> None:
        error = self.assertRaises(DeliveryError, applyPolicy, self.policy("enforce"), "example.test",
                                  ["stray.example.org"], "opportunistic")
        self.assertEqual((str(error.reply), error.permanent),
                         ("451 4.7.5 No MX host of example.test matches its MTA-STS policy", False))


class PolicyResource(Resource):
    """Serves ``body`` with ``code`` and ``contentType`` (and ``headers``), counting
    requests; with ``hang`` it never answers."""

    isLeaf = True

    def __init__(self, body: bytes = POLICY) -> None:
        super().__init__()
        self.body = body
        self.code = 200
        self.contentType = b"text/plain; charset=utf-8"
        self.headers: dict[bytes, bytes] = {}
        self.hang = False
        self.requests = 0

    def render_GET(self, request: Any) -> Any:
        self.requests += 1
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.contentType)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.body


class DiscoveryTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.ca = trustme.CA()
        certificate = self.ca.issue_cert("mta-sts.example.test")
        self.policy = PolicyResource()
        self.elsewhere = PolicyResource()
        wellKnown = Resource()
        wellKnown.putChild(b"mta-sts.txt", self.policy)
        wellKnown.putChild(b"elsewhere.txt", self.elsewhere)
        root = Resource()
        root.putChild(b".well-known", wellKnown)
        tls = PrivateCertificate.loadPEM(certificate.private_key_and_cert_chain_pem.bytes()).options()
        port = self.https = reactor.listenSSL(0, Site(root), tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.httpsPort = port.getHost().port
        self.dns = DNSServer({"example.test": [
            ("_mta-sts.example.test", dns.Record_TXT(b"v=STSv1; id=1")),
            ("mta-sts.example.test", dns.Record_A("127.0.0.1")),
            ("example.test", dns.Record_MX(10, b"stray.example.test")),
        ]})
        self.dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)
        self.clock = task.Clock()
        self.fetcher = self.makeFetcher()

    def makeFetcher(self, **overrides: Any) -> PolicyFetcher:
        resolver = client.Resolver(servers=[("127.0.0.1", self.dns.port)], timeout=(1,), reactor=reactor)
        settings: dict[str, Any] = dict(clock=self.clock, trustRoot=Certificate.loadPEM(self.ca.cert_pem.bytes()),
                                        httpsPort=self.httpsPort, timeout=5.0, destinations=LOOPBACK_ALLOWED)
        settings.update(overrides)
        fetcher = PolicyFetcher(reactor, resolver, **settings)
        self.addCleanup(fetcher.settled)  # refreshes in the background end with the test
        return fetcher

    def setTXT(self, *texts: bytes) -> None:
        """Make the _mta-sts record ``texts`` (none: no such name)."""
        [zone] = self.dns.factory.resolver.resolvers
        zone.records.pop(b"_mta-sts.example.test", None)
        if texts:
            zone.records[b"_mta-sts.example.test"] = [dns.Record_TXT(text) for text in texts]

    @defer.inlineCallbacks
    def test_mtaStsFetchToPrivateAddressRefused(self):  # type: ignore[no-untyped-def]
        """Security review I-6: a domain whose mta-sts name points at loopback gets no
        request from us (the server there sees none), and so no policy."""
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        policy = yield self.makeFetcher(destinations=Destinations()).policyFor("example.test")
        self.assertIsNone(policy)
        self.assertEqual(self.policy.requests, 0)
        self.assertIn("MTA-STS: no policy for example.test: An error occurred while connecting: "
                      "mta-sts.example.test has internal addresses only: 127.0.0.1 is loopback.",
                      [formatEvent(e) for e in logged])

    @defer.inlineCallbacks
    def test_policy_fetched_and_parsed(self):  # type: ignore[no-untyped-def]
        policy = yield self.fetcher.policyFor("Example.Test.")
        self.assertEqual(policy, parsePolicy(POLICY, "1"))
        self.assertEqual(self.policy.requests, 1)

    @defer.inlineCallbacks
    def test_cached_while_id_unchanged(self):  # type: ignore[no-untyped-def]
        """Until the last quarter of its life (a day here), a policy whose id is
        unchanged is not fetched again."""
        first = yield self.fetcher.policyFor("example.test")
        self.clock.advance(64799)
        second = yield self.fetcher.policyFor("example.test")
        self.assertIs(second, first)
        yield self.fetcher.settled()
        self.assertEqual(self.policy.requests, 1)

    @defer.inlineCallbacks
    def test_policy_nearing_its_end_is_refreshed_in_the_background(self):  # type: ignore[no-untyped-def]
        first = yield self.fetcher.policyFor("example.test")
        self.clock.advance(64800)
        self.assertIs((yield self.fetcher.policyFor("example.test")), first, "served at once meanwhile")
        yield self.fetcher.settled()
        self.assertEqual(self.policy.requests, 2)
        self.clock.advance(86400 - 64800)
        renewed = yield self.fetcher.policyFor("example.test")
        self.assertEqual((renewed, self.policy.requests), (first, 2), "the refreshed policy, not a new fetch")

    @defer.inlineCallbacks
    def test_concurrent_discoveries_share_one_fetch(self):  # type: ignore[no-untyped-def]
        results = yield defer.gatherResults([self.fetcher.policyFor("example.test") for _ in range(3)])
        self.assertEqual([p.id for p in results], ["1"] * 3)
        self.assertEqual(self.policy.requests, 1)

    @defer.inlineCallbacks
    def test_changed_id_refetches(self):  # type: ignore[no-untyped-def]
        """A new id is fetched in the background; the policy in force answers meanwhile."""
        yield self.fetcher.policyFor("example.test")
        self.setTXT(b"v=STSv1; id=2")
        self.policy.body = POLICY.replace(b"enforce", b"testing")
        meanwhile = yield self.fetcher.policyFor("example.test")
        self.assertEqual(meanwhile.id, "1")
        yield self.fetcher.settled()
        policy = yield self.fetcher.policyFor("example.test")
        self.assertEqual((policy.id, policy.mode, self.policy.requests), ("2", "testing", 2))

    @defer.inlineCallbacks
    def test_expired_policy_refetched(self):  # type: ignore[no-untyped-def]
        yield self.fetcher.policyFor("example.test")
        self.clock.advance(86400)
        yield self.fetcher.policyFor("example.test")
        self.assertEqual(self.policy.requests, 2)

    @defer.inlineCallbacks
    def test_max_cache_age_caps_max_age(self):  # type: ignore[no-untyped-def]
        fetcher = self.makeFetcher(maxCacheAge=60)
        yield fetcher.policyFor("example.test")
        self.clock.advance(60)
        yield fetcher.policyFor("example.test")
        self.assertEqual(self.policy.requests, 2)

    @defer.inlineCallbacks
    def test_no_txt_record_no_policy(self):  # type: ignore[no-untyped-def]
        self.setTXT()
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))
        self.assertEqual(self.policy.requests, 0)

    @defer.inlineCallbacks
    def test_other_txt_records_ignored(self):  # type: ignore[no-untyped-def]
        self.setTXT(b"v=spf1 -all", b"v=STSv1; id=1")
        self.assertEqual((yield self.fetcher.policyFor("example.test")).id, "1")

    @defer.inlineCallbacks
    def test_bad_txt_records_no_policy(self):  # type: ignore[no-untyped-def]
        """Two STSv1 records, or one without an id, mean no policy (RFC 8461 section 3.1)."""
        for texts in [(b"v=STSv1; id=1", b"v=STSv1; id=2"), (b"v=STSv1; ext=1",)]:
            self.setTXT(*texts)
            self.assertIsNone((yield self.fetcher.policyFor("example.test")), texts)
        self.assertEqual(self.policy.requests, 0)

    @defer.inlineCallbacks
    def test_invalid_policy_no_policy(self):  # type: ignore[no-untyped-def]
        self.policy.body = POLICY.replace(b"enforce", b"strict")
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))

    @defer.inlineCallbacks
    def test_http_404_no_policy(self):  # type: ignore[no-untyped-def]
        self.policy.code = 404
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))
        self.assertEqual(self.policy.requests, 1)

    @defer.inlineCallbacks
    def test_redirect_not_followed(self):  # type: ignore[no-untyped-def]
        self.policy.code = 301
        self.policy.headers[b"location"] = b"https://mta-sts.example.test:%d/.well-known/elsewhere.txt" % self.httpsPort
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))
        self.assertEqual((self.policy.requests, self.elsewhere.requests), (1, 0))

    @defer.inlineCallbacks
    def test_not_text_plain_no_policy(self):  # type: ignore[no-untyped-def]
        self.policy.contentType = b"text/html"
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))

    @defer.inlineCallbacks
    def test_policy_over_64_kib_no_policy(self):  # type: ignore[no-untyped-def]
        self.policy.body = POLICY + b"pad: " + b"x" * (64 * 1024) + b"\r\n"
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))

    @defer.inlineCallbacks
    def test_untrusted_certificate_no_policy(self):  # type: ignore[no-untyped-def]
        fetcher = self.makeFetcher(trustRoot=Certificate.loadPEM(trustme.CA().cert_pem.bytes()))
        self.assertIsNone((yield fetcher.policyFor("example.test")))
        self.assertEqual(self.policy.requests, 0)

    @defer.inlineCallbacks
    def test_hanging_server_times_out(self):  # type: ignore[no-untyped-def]
        self.policy.hang = True
        fetcher = self.makeFetcher(timeout=0.3)
        self.assertIsNone((yield fetcher.policyFor("example.test")))

    @defer.inlineCallbacks
    def test_cached_policy_kept_when_txt_record_vanishes(self):  # type: ignore[no-untyped-def]
        first = yield self.fetcher.policyFor("example.test")
        self.setTXT()
        self.assertIs((yield self.fetcher.policyFor("example.test")), first)
        self.clock.advance(86400)
        self.assertIsNone((yield self.fetcher.policyFor("example.test")))

    @defer.inlineCallbacks
    def test_cached_policy_kept_when_dns_fails(self):  # type: ignore[no-untyped-def]
        first = yield self.fetcher.policyFor("example.test")
        yield self.dns.stop()
        self.assertIs((yield self.fetcher.policyFor("example.test")), first)

    @defer.inlineCallbacks
    def test_cached_policy_kept_when_refetch_fails(self):  # type: ignore[no-untyped-def]
        first = yield self.fetcher.policyFor("example.test")
        self.setTXT(b"v=STSv1; id=2")
        self.policy.code = 500
        self.assertIs((yield self.fetcher.policyFor("example.test")), first)
        yield self.fetcher.settled()
        self.assertEqual(self.policy.requests, 2)
        self.assertIs((yield self.fetcher.policyFor("example.test")), first)

    @defer.inlineCallbacks
    def restarted(self, directory: str) -> Any:
        """A first fetcher keeps the policy under ``directory`` and stops; the HTTPS
        server goes away; a second fetcher (the gateway after a restart) is returned."""
        before = self.makeFetcher(directory=directory)
        policy = yield before.policyFor("example.test")
        self.assertEqual(policy.mode, "enforce")
        yield before.settled()
        yield self.https.stopListening()
        return self.makeFetcher(directory=directory)

    @defer.inlineCallbacks
    def test_downgradeAfterRestartBlockedByStoredPolicy(self):  # type: ignore[no-untyped-def]
        """An attacker who removes the TXT record and blocks the policy host after a
        restart does not switch enforcement off: mail to a host outside the policy is
        deferred with 4.7.5, as before the restart."""
        directory = self.mktemp()
        after = yield self.restarted(directory)
        self.setTXT()
        resolver = client.Resolver(servers=[("127.0.0.1", self.dns.port)], timeout=(1,), reactor=reactor)
        remote = RemoteDelivery(reactor, runNow, resolver, RemoteSettings(heloHost="me.test"), mtaSts=after)
        envelope = Envelope("a@me.test", (Recipient("b@example.test"),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"x\r\n"))
        [result] = yield remote.deliver(message, envelope.recipients)
        self.assertEqual((result.status, str(result.reply)),
                         (DeliveryStatus.TEMPORARY, "451 4.7.5 No MX host of example.test matches its MTA-STS policy"))
        self.assertEqual(self.policy.requests, 1)

    @defer.inlineCallbacks
    def test_storedPolicyRefreshedWhenIdChanges(self):  # type: ignore[no-untyped-def]
        directory = self.mktemp()
        before = self.makeFetcher(directory=directory)
        yield before.policyFor("example.test")
        self.setTXT(b"v=STSv1; id=2")
        self.policy.body = POLICY.replace(b"enforce", b"testing")
        yield before.policyFor("example.test")
        yield before.settled()
        after = self.makeFetcher(directory=directory)
        self.assertEqual(((yield after.policyFor("example.test")).id, self.policy.requests), ("2", 2))

    @defer.inlineCallbacks
    def test_slowPolicyHostDoesNotHoldUpAShutdown(self):  # type: ignore[no-untyped-def]
        """A refresh stuck on a policy host that never answers (with a minute to go
        before its time-out) is called off by close(), which a stopping gateway waits
        for; the policy in force stays stored."""
        directory = self.mktemp()
        fetcher = self.makeFetcher(directory=directory, timeout=60.0)
        first = yield fetcher.policyFor("example.test")
        self.setTXT(b"v=STSv1; id=2")
        self.policy.hang = True
        self.assertIs((yield fetcher.policyFor("example.test")), first)
        while self.policy.requests < 2:  # the refresh reached the policy host, which hangs
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield fetcher.close()
        self.policy.hang = False
        after = self.makeFetcher(directory=directory)
        self.assertEqual((yield after.policyFor("example.test")), first)

    @defer.inlineCallbacks
    def test_expiredStoredPolicyNotLoaded(self):  # type: ignore[no-untyped-def]
        directory = self.mktemp()
        after = yield self.restarted(directory)
        self.clock.advance(86400)
        self.assertIsNone((yield after.policyFor("example.test")))
        self.assertEqual(os.listdir(directory), [])


class PolicyStoreTests(SynchronousTestCase):
    """The store on disk, with writes run on the spot."""

    policy = Policy(id="1", mode="enforce", mxPatterns=("mx.example.test",), maxAge=86400)

    def store(self, directory: str, limit: int = 10_000) -> PolicyStore[Policy]:
        store: PolicyStore[Policy] = PolicyStore(directory, runNow, _policyAsJSON, _policyFromJSON, limit, 86400)
        self.successResultOf(store.load(1000.0))
        return store

    def test_forgedDomainCannotNameAnotherPath(self) -> None:
        directory = self.mktemp()
        store = self.store(directory)
        forged = ["../../etc/passwd", "a/b", ".hidden", "bücher.example"]
        for domain in forged:
            store.put(domain, self.policy, 2000.0)
        self.assertEqual(sorted(os.listdir(directory)), sorted(fileName(d) for d in forged))
        self.assertTrue(all(len(name) == 69 for name in os.listdir(directory)))
        self.assertEqual(self.store(directory).get("bücher.example"), (self.policy, 2000.0))

    def test_tamperedFilesRemovedAtLoad(self) -> None:
        """A file that is not JSON, claims another domain, holds an invalid policy,
        or has expired is removed; a good one beside them is kept."""
        directory = self.mktemp()
        self.store(directory).put("good.test", self.policy, 2000.0)
        with open(os.path.join(directory, "good.test.json")) as f:
            good = json.load(f)
        bad = {
            "garbage.test.json": "{not json",
            "other.test.json": json.dumps({**good, "domain": "good.test"}),
            "invalid.test.json": json.dumps({**good, "domain": "invalid.test",
                                             "policy": {**good["policy"], "mode": "off"}}),
            "old.test.json": json.dumps({**good, "domain": "old.test", "expires": 999.0}),
            "nan.test.json": json.dumps({**good, "domain": "nan.test"}).replace("2000.0", "NaN"),
            ".half.test.json.tmp": "{",
        }
        for name, text in bad.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
        store = self.store(directory)
        self.assertEqual((len(store), os.listdir(directory)), (1, ["good.test.json"]))

    def test_farFutureExpiryCapped(self) -> None:
        directory = self.mktemp()
        self.store(directory).put("good.test", self.policy, 1e12)
        self.assertEqual(self.store(directory).get("good.test"), (self.policy, 1000.0 + 86400))

    def test_manyDomainsKeepTheStoreBounded(self) -> None:
        """The least used domain goes first, from memory and disk."""
        directory = self.mktemp()
        store = self.store(directory, limit=2)
        store.put("a.test", self.policy, 2000.0)
        store.put("b.test", self.policy, 2000.0)
        store.get("a.test")
        store.put("c.test", self.policy, 2000.0)
        self.assertEqual((store.get("b.test"), sorted(os.listdir(directory))),
                         (None, ["a.test.json", "c.test.json"]))

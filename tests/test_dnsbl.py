"""DNS block and allow lists (jsmail.policy.dnsbl, RFC 5782) against a real loopback DNS
server through the real twisted.names resolver."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.trial import unittest

from jsmail._dns import makeResolver
from jsmail.address import parsePath
from jsmail.policy import dnsbl
from jsmail.policy.plugin import PolicyContext
from jsmail.policy.verdict import Verdict
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings, Session
from jsmail.testing import Dialog, DNSServer

QUEUED = rb"^250 2\.0\.0 Queued as [0-9A-F]{21}\r\n$"
V6_CLIENT = "2001:db8:1:2:3:4:567:89ab"  # RFC 5782 section 2.4's example
V6_NAME = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"


def txt(*strings: str) -> Any:
    return dns.Record_TXT(*(s.encode() for s in strings))


ZONES = {
    "bl.test": [
        ("2.0.0.127.bl.test", dns.Record_A("127.0.0.2")),  # the test entry every list has (RFC 5782 section 5)
        ("2.0.0.127.bl.test", txt("Test entry")),
        ("1.2.0.192.bl.test", dns.Record_A("127.0.0.2")),
        ("1.2.0.192.bl.test", txt("Listed: see http://bl.test/?192.0.2.1")),
        ("3.2.0.192.bl.test", dns.Record_A("127.0.0.1")),  # never a listing (RFC 5782 section 5)
        ("4.2.0.192.bl.test", dns.Record_A("127.255.255.254")),  # an error code (e.g. "public resolver")
        ("5.2.0.192.bl.test", dns.Record_A("10.0.0.1")),  # outside 127/8
        ("6.2.0.192.bl.test", dns.Record_A("127.0.0.4")),  # listed, but no TXT
        ("7.2.0.192.bl.test", dns.Record_A("127.0.0.2")),  # listed here, but on the allow list too
        ("7.2.0.192.bl.test", txt("Listed 7")),
        ("8.2.0.192.bl.test", dns.Record_A("10.0.0.1")),  # several answers, one of them a listing
        ("8.2.0.192.bl.test", dns.Record_A("127.0.0.11")),
        ("8.2.0.192.bl.test", txt("first part", " second part")),
        ("9.2.0.192.bl.test", dns.Record_A("127.0.0.2")),
        ("9.2.0.192.bl.test", txt("Bad\r\nText\x00\u00e9" + "x" * 150, "x" * 150)),
        (V6_NAME + ".bl.test", dns.Record_A("127.0.0.2")),
        (V6_NAME + ".bl.test", txt("IPv6 listed")),
    ],
    "bl2.test": [
        ("1.2.0.192.bl2.test", dns.Record_A("127.0.0.3")),
        ("1.2.0.192.bl2.test", txt("Second list")),
        ("10.2.0.192.bl2.test", dns.Record_A("127.0.0.3")),
        ("10.2.0.192.bl2.test", txt("Only in the second list")),
    ],
    "wl.test": [
        ("7.2.0.192.wl.test", dns.Record_A("127.0.10.1")),
        ("1.2.0.192.wl.test", dns.Record_A("127.0.0.1")),  # the test answer: not a listing here either
    ],
}


class ReversedNameTests(unittest.SynchronousTestCase):
    def test_ipv4(self) -> None:
        # RFC 5782 section 2.1: 192.168.42.23 is looked up as 23.42.168.192.<zone>.
        self.assertEqual(dnsbl.reversedName("192.168.42.23", "dnsbl.example.net"), "23.42.168.192.dnsbl.example.net")

    def test_ipv6_in_nibbles(self) -> None:
        # RFC 5782 section 2.4.
        self.assertEqual(dnsbl.reversedName(V6_CLIENT, "dnsbl.example.net"), V6_NAME + ".dnsbl.example.net")
        self.assertEqual(dnsbl.reversedName("2001:DB8::1", "bl.test"),
                         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")

    def test_a_scoped_link_local_address(self) -> None:
        self.assertEqual(dnsbl.reversedName("fe80::1%eth0", "bl.test"),
                         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.bl.test")

    def test_ipv4_mapped_is_looked_up_as_ipv4(self) -> None:
        self.assertEqual(dnsbl.reversedName("::ffff:192.0.2.1", "bl.test"), "1.2.0.192.bl.test")

    def test_no_name_for_something_that_is_no_address(self) -> None:
        self.assertIsNone(dnsbl.reversedName("unknown", "bl.test"))
        self.assertIsNone(dnsbl.reversedName("", "bl.test"))


def recipient(path: str) -> Any:
    address, _ = parsePath(path, allowNull=False, utf8=False, postmasterDomain="mx.test")
    return address


class DNSTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.server = DNSServer(ZONES)
        self.resolver = makeResolver(self.server.start(), reactor)
        self.addCleanup(self.server.stop)

    def policy(self, zones: tuple[str, ...] = ("bl.test",), allowZones: tuple[str, ...] = (), **kw: Any) -> dnsbl.DNSBL:
        return dnsbl.DNSBL(self.resolver, zones, allowZones, **kw)

    @defer.inlineCallbacks
    def connect(self, policy: dnsbl.DNSBL, client: str) -> Any:
        """A session for ``client`` after the connect check; (session, its verdict)."""
        session = Session(clientAddress=client, clientPort=40000)
        verdict = yield defer.maybeDeferred(policy.checkConnect, session)
        return session, verdict

    @defer.inlineCallbacks
    def rcpt(self, policy: dnsbl.DNSBL, client: str, path: str = "<user@mx.test>") -> Any:
        """The verdict at RCPT for ``client``, after its connect check."""
        session, _ = yield self.connect(policy, client)
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient(path), {})
        return verdict

    def assertRefused(self, verdict: Any, wire: bytes) -> None:
        self.assertIsInstance(verdict, Verdict)
        self.assertEqual(b"".join(verdict.refusal.lines()), wire)


class BlockListTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_listed_client_is_refused_at_rcpt_with_the_list_text(self) -> None:
        policy = self.policy()
        session, verdict = yield self.connect(policy, "192.0.2.1")
        self.assertIsNone(verdict)  # nothing said at connect: rblsmtpd answers at RCPT
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<user@mx.test>"), {})
        self.assertRefused(verdict, b"554 5.7.1 Listed: see http://bl.test/?192.0.2.1\r\n")
        self.assertEqual(verdict.reason, "192.0.2.1 is listed in bl.test")

    @defer.inlineCallbacks
    def test_rfc5782_test_entry_is_listed(self) -> None:
        verdict = yield self.rcpt(self.policy(), "127.0.0.2")
        self.assertRefused(verdict, b"554 5.7.1 Test entry\r\n")

    @defer.inlineCallbacks
    def test_ipv6_client(self) -> None:
        verdict = yield self.rcpt(self.policy(), V6_CLIENT)
        self.assertRefused(verdict, b"554 5.7.1 IPv6 listed\r\n")

    @defer.inlineCallbacks
    def test_ipv4_client_on_a_dual_stack_listener(self) -> None:
        verdict = yield self.rcpt(self.policy(), "::ffff:192.0.2.1")
        self.assertRefused(verdict, b"554 5.7.1 Listed: see http://bl.test/?192.0.2.1\r\n")

    @defer.inlineCallbacks
    def test_postmaster_is_still_accepted(self) -> None:
        # RFC 5321 section 4.5.1: a blocked sender must be able to reach postmaster.
        policy = self.policy()
        session, _ = yield self.connect(policy, "192.0.2.1")
        for path in ("<postmaster@mx.test>", "<PostMaster@other.test>", "<Postmaster>"):
            verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient(path), {})
            self.assertIsNone(verdict, path)
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<post@mx.test>"), {})
        self.assertRefused(verdict, b"554 5.7.1 Listed: see http://bl.test/?192.0.2.1\r\n")

    @defer.inlineCallbacks
    def test_listing_without_text(self) -> None:
        verdict = yield self.rcpt(self.policy(), "192.0.2.6")
        self.assertRefused(verdict, b"554 5.7.1 192.0.2.6 is listed in bl.test\r\n")

    @defer.inlineCallbacks
    def test_any_answer_in_127_8_is_a_listing(self) -> None:
        # One TXT record's strings are joined as they are (RFC 7208 section 3.3 does so too).
        verdict = yield self.rcpt(self.policy(), "192.0.2.8")
        self.assertRefused(verdict, b"554 5.7.1 first part second part\r\n")

    @defer.inlineCallbacks
    def test_text_is_made_printable_and_short(self) -> None:
        verdict = yield self.rcpt(self.policy(), "192.0.2.9")
        self.assertRefused(verdict, b"554 5.7.1 Bad??Text??" + b"x" * 189 + b"\r\n")

    @defer.inlineCallbacks
    def test_not_listings(self) -> None:
        for client in ("192.0.2.3",  # 127.0.0.1
                       "192.0.2.4",  # 127.255.255.254
                       "192.0.2.5",  # 10.0.0.1
                       "192.0.2.200",  # NXDOMAIN
                       "2001:db8::99",  # NXDOMAIN for IPv6
                       "unknown"):  # a UNIX socket peer: nothing to look up
            session, verdict = yield self.connect(self.policy(), client)
            self.assertIsNone(verdict, client)
            self.assertIsNone(session.notes["dnsbl"], client)
            verdict = yield defer.maybeDeferred(self.policy().checkRecipient, session, recipient("<u@mx.test>"), {})
            self.assertIsNone(verdict, client)

    @defer.inlineCallbacks
    def test_a_zone_that_does_not_exist_lists_nobody(self) -> None:
        verdict = yield self.rcpt(self.policy(("absent.test",)), "192.0.2.1")
        self.assertIsNone(verdict)

    @defer.inlineCallbacks
    def test_the_first_list_that_lists_the_client_gives_the_text(self) -> None:
        policy = self.policy(("bl2.test", "bl.test"))
        self.assertRefused((yield self.rcpt(policy, "192.0.2.1")), b"554 5.7.1 Second list\r\n")
        self.assertRefused((yield self.rcpt(policy, "192.0.2.10")), b"554 5.7.1 Only in the second list\r\n")
        self.assertRefused((yield self.rcpt(policy, "192.0.2.6")), b"554 5.7.1 192.0.2.6 is listed in bl.test\r\n")


class AllowListTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_allow_list_wins(self) -> None:
        policy = self.policy(allowZones=("wl.test",))
        session, verdict = yield self.connect(policy, "192.0.2.7")
        self.assertIsNone(verdict)
        self.assertIsNone(session.notes["dnsbl"])
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<u@mx.test>"), {})
        self.assertIsNone(verdict)

    @defer.inlineCallbacks
    def test_without_the_allow_list_the_same_client_is_refused(self) -> None:
        verdict = yield self.rcpt(self.policy(), "192.0.2.7")
        self.assertRefused(verdict, b"554 5.7.1 Listed 7\r\n")

    @defer.inlineCallbacks
    def test_the_allow_list_test_answer_allows_nobody(self) -> None:
        verdict = yield self.rcpt(self.policy(allowZones=("wl.test",)), "192.0.2.1")
        self.assertRefused(verdict, b"554 5.7.1 Listed: see http://bl.test/?192.0.2.1\r\n")

    @defer.inlineCallbacks
    def test_only_an_allow_list(self) -> None:
        verdict = yield self.rcpt(self.policy((), ("wl.test",)), "192.0.2.1")
        self.assertIsNone(verdict)


class TagTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_tag_adds_a_header_field_and_refuses_nothing(self) -> None:
        policy = self.policy(action="tag")
        session, verdict = yield self.connect(policy, "192.0.2.1")
        self.assertEqual(verdict, Verdict.accept(
            ["X-DNSBL: 192.0.2.1 listed in bl.test: Listed: see http://bl.test/?192.0.2.1"]))
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<u@mx.test>"), {})
        self.assertIsNone(verdict)

    @defer.inlineCallbacks
    def test_tag_adds_nothing_for_a_client_not_listed(self) -> None:
        _, verdict = yield self.connect(self.policy(action="tag"), "192.0.2.3")
        self.assertIsNone(verdict)


class Silent(protocol.DatagramProtocol):
    """A DNS server that reads queries and never answers."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.seen = getattr(self, "seen", 0) + 1


class ServerFailure:
    """An authority that fails every query for a reason other than "no such name",
    so the server answers SERVFAIL."""

    def query(self, query: Any, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.fail(RuntimeError("zone data broken"))


class LookupFailureTests(unittest.TestCase):
    def silentResolver(self) -> Any:
        self.silent = Silent()
        port = reactor.listenUDP(0, self.silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return makeResolver(f"127.0.0.1:{port.getHost().port}", reactor)

    def servfailResolver(self) -> Any:
        factory = DNSServerFactory(authorities=[ServerFailure()])
        factory.noisy = False
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return makeResolver(f"127.0.0.1:{port.getHost().port}", reactor)

    @defer.inlineCallbacks
    def check(self, resolver: Any, **kw: Any) -> Any:
        policy = dnsbl.DNSBL(resolver, ["bl.test"], timeout=0.5, **kw)
        session = Session(clientAddress="192.0.2.1")
        connect = yield defer.maybeDeferred(policy.checkConnect, session)
        self.assertIsNone(connect)
        verdict = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<u@mx.test>"), {})
        postmaster = yield defer.maybeDeferred(policy.checkRecipient, session, recipient("<postmaster@mx.test>"), {})
        self.assertIsNone(postmaster)
        return verdict

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_decides_nothing_by_default(self) -> None:
        verdict = yield self.check(self.silentResolver())
        self.assertIsNone(verdict)
        self.assertEqual(self.silent.seen, 1)  # asked once, with the configured time-out

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_tempfails_when_told_to(self) -> None:
        verdict = yield self.check(self.silentResolver(), onError="tempfail")
        self.assertEqual(b"".join(verdict.refusal.lines()),
                         b"451 4.7.1 Temporary DNS block list lookup error, try again later\r\n")
        self.assertEqual(verdict.reason, "1.2.0.192.bl.test: TimeoutError")

    @defer.inlineCallbacks
    def test_servfail_tempfails_when_told_to(self) -> None:
        verdict = yield self.check(self.servfailResolver(), onError="tempfail")
        self.assertEqual(b"".join(verdict.refusal.lines()),
                         b"451 4.7.1 Temporary DNS block list lookup error, try again later\r\n")
        self.assertEqual(verdict.reason, "1.2.0.192.bl.test: DNSServerError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_servfail_decides_nothing_by_default(self) -> None:
        verdict = yield self.check(self.servfailResolver())
        self.assertIsNone(verdict)
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_tag_with_tempfail_still_tempfails_on_error(self) -> None:
        verdict = yield self.check(self.silentResolver(), action="tag", onError="tempfail")
        self.assertEqual(verdict.refusal.code, 451)


class DialogTests(DNSTestCase):
    """What a client sees through smtpd.  Dialog runs smtpd on a fake clock while the
    lookups go through the real reactor, so each reply is waited for (boundedly)."""

    @defer.inlineCallbacks
    def reply(self, d: Dialog, data: bytes = b"") -> Any:
        if data:
            d.server.dataReceived(data)
        for _ in range(500):  # at most 5 s
            out = d.read()
            if out:
                return out
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"no reply to {data!r}")

    def start(self, client: str, **kw: Any) -> Dialog:
        self.queue = MemoryQueue()
        context = PolicyContext(reactor, self.resolver, None, "mx.test", "mx.test", ".")  # type: ignore[arg-type]
        policy = dnsbl.build({"zones": ["bl.test"], "allow_zones": ["wl.test"], "timeout": 2.0, **kw}, context)
        return Dialog(ServerSettings(hostname="mx.test"), self.queue, policies=[policy], clientAddress=client)

    @defer.inlineCallbacks
    def test_listed_client_sees_554_at_rcpt_and_reaches_postmaster(self) -> None:
        d = self.start("192.0.2.1")
        self.assertEqual((yield self.reply(d)), b"220 mx.test ESMTP jsmail ready\r\n")
        d.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<user@mx.test>\r\n"),
                         b"554 5.7.1 Listed: see http://bl.test/?192.0.2.1\r\n")
        self.assertEqual(d.send(b"RCPT TO:<postmaster@mx.test>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)

    @defer.inlineCallbacks
    def test_tagged_message_is_queued_with_the_field_on_top(self) -> None:
        d = self.start("192.0.2.1", action="tag")
        yield self.reply(d)
        d.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<user@mx.test>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)
        [(_, data)] = self.queue.messages.values()
        lines = data.split(b"\r\n")
        self.assertEqual(lines[0], b"X-DNSBL: 192.0.2.1 listed in bl.test: Listed: see http://bl.test/?192.0.2.1")
        self.assertTrue(lines[1].startswith(b"Received: from client.example"))

    @defer.inlineCallbacks
    def test_allowed_client_is_not_refused(self) -> None:
        d = self.start("192.0.2.7")
        yield self.reply(d)
        d.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<user@mx.test>\r\n"), b"250 2.1.5 Recipient OK\r\n")


class BuildTests(unittest.SynchronousTestCase):
    context = PolicyContext(task.Clock(), object(), None, "mx.test", "mx.test", ".")  # type: ignore[arg-type]

    def test_options(self) -> None:
        policy = dnsbl.build({"zones": ["bl.test"], "allow_zones": ["wl.test"], "action": "tag",
                              "on_error": "tempfail", "timeout": 2}, self.context)
        self.assertEqual((policy.zones, policy.allowZones, policy.action, policy.onError, policy.timeout),
                         (("bl.test",), ("wl.test",), "tag", "tempfail", 2))
        self.assertIs(policy.resolver, self.context.resolver)

    def test_defaults(self) -> None:
        policy = dnsbl.build({"zones": ["bl.test"]}, self.context)
        self.assertEqual((policy.allowZones, policy.action, policy.onError, policy.timeout),
                         ((), "reject", "accept", 5.0))

    def test_bad_options_are_named(self) -> None:
        for options, named in [({}, "zones"),
                               ({"zones": "bl.test"}, "zones"),
                               ({"zones": ["bl.test"], "action": "drop"}, "action"),
                               ({"zones": ["bl.test"], "on_error": "reject"}, "on_error"),
                               ({"zones": ["bl.test"], "timeout": "5"}, "timeout"),
                               ({"zones": ["bl.test"], "zone": ["x"]}, "'zone'")]:
            e = self.assertRaises(ValueError, dnsbl.build, options, self.context)
            self.assertIn(named, str(e), options)

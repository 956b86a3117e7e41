"""DMARC (RFC 9989): parsing policy records, the DNS Tree Walk (policy discovery and
Organizational Domains), identifier alignment, the author domain, evaluation, and
fetching records from a real DNS server on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._dns import makeResolver
from jsmail.address import Address
from jsmail.headers import fromDomain
from jsmail.policy.authresults import authResultsField
from jsmail.policy.dmarc import (
    Discovery,
    DMARCTemporaryError,
    Evaluation,
    Record,
    evaluate,
    fetchRecord,
    parseRecord,
    walk,
)
from jsmail.policy.emailauth import DMARCCheck
from jsmail.smtp.assembly import Spool
from jsmail.smtp.server import Session
from jsmail.testing import DNSServer, runNow


def record(policy: str, sub: str | None = None, nonexistent: str | None = None, **tags: Any) -> Record:
    sub = sub or policy
    return Record(policy=policy, subdomainPolicy=sub, nonexistentPolicy=nonexistent or sub, **tags)


class ParseRecordTests(SynchronousTestCase):
    """The tags, and which texts are no DMARC record at all."""

    def test_every_tag(self) -> None:
        parsed = parseRecord("v=DMARC1; p=quarantine; sp=reject; np=none; adkim=s; aspf=s; psd=n; t=y; "
                             "rua=mailto:dmarc@example.org; fo=1")
        self.assertEqual(parsed, record("quarantine", "reject", "none", adkim="s", aspf="s", psd="n", testing=True))

    def test_defaults(self) -> None:
        """sp defaults to p and np to sp; alignment is relaxed; psd unsaid; no testing."""
        self.assertEqual(parseRecord("v=DMARC1; p=reject"),
                         Record(policy="reject", subdomainPolicy="reject", nonexistentPolicy="reject", adkim="r",
                                aspf="r", psd="u", testing=False))
        self.assertEqual(parseRecord("v=DMARC1; p=reject; sp=quarantine").nonexistentPolicy, "quarantine")

    def test_spaces_and_case(self) -> None:
        self.assertEqual(parseRecord(" v = DMARC1 ;P=Reject; SP = None ;"), record("reject", "none"))

    def test_version_must_come_first(self) -> None:
        self.assertIsNone(parseRecord("p=reject; v=DMARC1"))
        self.assertIsNone(parseRecord("vp=reject; v=DMARC1; p=reject"))

    def test_version_must_be_dmarc1_exactly(self) -> None:
        self.assertIsNone(parseRecord("v=dmarc1; p=reject"))
        self.assertIsNone(parseRecord("v=DMARC2; p=reject"))
        self.assertIsNone(parseRecord("v=spf1 -all"))
        self.assertIsNone(parseRecord(""))

    def test_a_record_without_p_is_p_none(self) -> None:
        """RFC 9989: such a record counts (a psd=n record needs no p) and is p=none."""
        self.assertEqual(parseRecord("v=DMARC1"), record("none"))
        self.assertEqual(parseRecord("v=DMARC1; psd=n"), record("none", psd="n"))

    def test_invalid_policy_without_rua_is_no_record(self) -> None:
        self.assertIsNone(parseRecord("v=DMARC1; p=bounce"))

    def test_invalid_policy_with_rua_is_none(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=bounce; rua=mailto:r@example.org").policy, "none")

    def test_invalid_subdomain_policies_fall_back(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=quarantine; sp=bounce").subdomainPolicy, "quarantine")
        self.assertEqual(parseRecord("v=DMARC1; p=quarantine; sp=reject; np=x").nonexistentPolicy, "reject")

    def test_unknown_alignment_and_psd_values(self) -> None:
        parsed = parseRecord("v=DMARC1; p=none; adkim=x; aspf=S; psd=maybe")
        self.assertEqual((parsed.adkim, parsed.aspf, parsed.psd), ("r", "s", "u"))

    def test_legacy_pct_zero_is_testing_and_other_values_are_ignored(self) -> None:
        """The pct tag is gone in RFC 9989; pct=0 asked for nothing to be applied, which
        is what t=y says.  Other values no longer sample: the policy applies."""
        self.assertTrue(parseRecord("v=DMARC1; p=reject; pct=0").testing)
        for pct in ("100", "50", "1", "-5", "half"):
            self.assertFalse(parseRecord(f"v=DMARC1; p=reject; pct={pct}").testing, pct)
        self.assertFalse(parseRecord("v=DMARC1; p=reject; pct=0; t=n").testing, "t says it")
        self.assertFalse(parseRecord("v=DMARC1; p=reject; t=N0").testing)

    def test_first_of_a_repeated_tag_counts(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=none; p=reject").policy, "none")


class WalkTests(SynchronousTestCase):
    """RFC 9989 section 4.10: which names a DNS Tree Walk queries."""

    def test_each_parent(self) -> None:
        self.assertEqual(walk("a.mail.example.com"), ["a.mail.example.com", "mail.example.com", "example.com", "com"])

    def test_a_long_name_jumps_to_its_last_seven_labels(self) -> None:
        """The RFC's example: thirteen labels, eight queries."""
        self.assertEqual(walk("a.b.c.d.e.f.g.h.i.j.mail.example.com"), [
            "a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com", "h.i.j.mail.example.com",
            "i.j.mail.example.com", "j.mail.example.com", "mail.example.com", "example.com", "com"])

    def test_eight_labels(self) -> None:
        self.assertEqual(len(walk("a.b.c.d.e.f.g.com")), 8)
        self.assertEqual(walk("Com."), ["com"])


def header(*fields: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


class AuthorDomainTests(SynchronousTestCase):
    """Sections 3.1.1 and 6.6.1: the one address in the one From field."""

    def test_one_address(self) -> None:
        self.assertEqual(fromDomain(header(b"From: a@Example.ORG", b"To: b@example.net")), "example.org")

    def test_display_names(self) -> None:
        self.assertEqual(fromDomain(header(b'From: "Doe, Jane" <jane@example.org>')), "example.org")
        self.assertEqual(fromDomain(header(b"From: Jane Doe <jane@example.org>")), "example.org")

    def test_folded_field(self) -> None:
        self.assertEqual(fromDomain(header(b"Subject: s", b"From: A Very Long Display Name\r\n\t<a@example.org>")),
                         "example.org")

    def test_two_from_fields(self) -> None:
        self.assertIsNone(fromDomain(header(b"From: a@example.org", b"From: b@example.org")))

    def test_two_addresses(self) -> None:
        self.assertIsNone(fromDomain(header(b"From: a@example.org, b@example.net")))

    def test_no_from_field(self) -> None:
        self.assertIsNone(fromDomain(header(b"Subject: no author")))

    def test_a_from_line_in_the_body_does_not_count(self) -> None:
        self.assertIsNone(fromDomain(header(b"Subject: s", body=b"From: a@example.org\r\n")))

    def test_no_domain(self) -> None:
        self.assertIsNone(fromDomain(header(b"From: undisclosed")))
        self.assertIsNone(fromDomain(header(b"From: a@")))

    def test_utf8_domain_is_an_a_label(self) -> None:
        """RFC 6532 mail: the record is looked up under the A-label."""
        self.assertEqual(fromDomain(header("From: Zoë <zoe@Exämple.org>".encode())), "xn--exmple-cua.org")

    def test_unusable_domains(self) -> None:
        """Octets that are not UTF-8, an empty label, a label over 63 octets: no author
        domain (and so no DNS lookup that could go wrong)."""
        self.assertIsNone(fromDomain(header(b"From: <a@ex\xe9.org>")))
        self.assertIsNone(fromDomain(header(b"From: a@example..org")))
        self.assertIsNone(fromDomain(header(b"From: a@" + b"x" * 64 + b".org")))


    def test_nestedCommentsAreNoAuthorNotARecursionError(self) -> None:
        """L-5: six folded lines of 900 "(" made the address parser recurse until
        RecursionError (451 and a 1000-frame traceback).  Unbalanced, they are no author;
        balanced, they are skipped in one pass."""
        self.assertIsNone(fromDomain(header(b"From: " + b"\r\n ".join([b"(" * 900] * 6))))
        nested = b"(" * 3000 + b"x" + b")" * 3000
        self.assertEqual(fromDomain(header(b"From: " + nested + b" a@example.org")), "example.org")
        self.assertIsNone(fromDomain(header(b"From: " + b"(" * 5000 + b"x" + b")" * 5000 + b" a@example.org")),
                          "over MAX_FROM octets")

    def test_commentsAndQuotes(self) -> None:
        self.assertEqual(fromDomain(header(b'From: "Doe (Jane)" <jane(x)@(y)example.org>')), "example.org")
        self.assertIsNone(fromDomain(header(b"From: a@example.org)")))
        self.assertIsNone(fromDomain(header(b'From: "unclosed <a@example.org>')))

    def test_severalAddressesOfOneDomain(self) -> None:
        """RFC 5322 lets one From field name several authors; one domain for all is
        that domain, two are none."""
        self.assertEqual(fromDomain(header(b"From: a@example.org, B <b@EXAMPLE.org>")), "example.org")
        self.assertIsNone(fromDomain(header(b"From: a@example.org, b@sub.example.org")))

    def test_fromWithoutColonSpaceAndObsoleteSpace(self) -> None:
        self.assertEqual(fromDomain(header(b"from :a@example.org")), "example.org")

    def test_addressLiteralIsNoAuthorDomain(self) -> None:
        self.assertIsNone(fromDomain(header(b"From: a@[192.0.2.1]")))


def txt(*strings: str) -> Any:
    return dns.Record_TXT(*[s.encode("ascii") for s in strings], ttl=60)


class FetchRecordTests(TestCase):
    """Policy discovery against a real DNS server on loopback."""

    timeout = 20

    def setUp(self) -> None:
        server = DNSServer({
            "example.org": [
                ("_dmarc.example.org", txt("v=DMARC1; p=reject; sp=quarantine")),
                ("_dmarc.example.org", txt("google-site-verification=xyz")),
                ("_dmarc.own.example.org", txt("v=DMARC1; p=none")),
                ("_dmarc.broken.example.org", txt("v=DMARC2; p=none")),
            ],
            "example.co.uk": [("_dmarc.example.co.uk", txt("v=DMARC1;", " p=quarantine"))],
            "twice.test": [
                ("_dmarc.twice.test", txt("v=DMARC1; p=reject")),
                ("_dmarc.twice.test", txt("v=DMARC1; p=none")),
            ],
            "slow.test": [],
        }, silent=["_dmarc.slow.test"])
        self.resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)

    @defer.inlineCallbacks
    def test_record_at_the_author_domain(self) -> Any:
        found = yield fetchRecord(self.resolver, "own.example.org")
        self.assertEqual(found, (record("none"), "own.example.org"))

    @defer.inlineCallbacks
    def test_other_txt_records_are_ignored(self) -> Any:
        found = yield fetchRecord(self.resolver, "example.org")
        self.assertEqual(found, (record("reject", "quarantine"), "example.org"))

    @defer.inlineCallbacks
    def test_strings_of_a_record_are_joined(self) -> Any:
        found = yield fetchRecord(self.resolver, "example.co.uk")
        self.assertEqual(found, (record("quarantine"), "example.co.uk"))

    @defer.inlineCallbacks
    def test_the_walk_finds_a_parents_record(self) -> Any:
        found = yield fetchRecord(self.resolver, "a.b.example.org")
        self.assertEqual(found, (record("reject", "quarantine"), "example.org"))
        found = yield fetchRecord(self.resolver, "mail.example.co.uk")
        self.assertEqual(found[1], "example.co.uk")

    @defer.inlineCallbacks
    def test_an_invalid_record_falls_back_too(self) -> Any:
        found = yield fetchRecord(self.resolver, "broken.example.org")
        self.assertEqual(found[1], "example.org")

    @defer.inlineCallbacks
    def test_two_records_are_none(self) -> Any:
        found = yield fetchRecord(self.resolver, "twice.test")
        self.assertIsNone(found)

    @defer.inlineCallbacks
    def test_nxdomain_is_none(self) -> Any:
        self.assertIsNone((yield fetchRecord(self.resolver, "nowhere.test")))
        self.assertIsNone((yield fetchRecord(self.resolver, "deep.nowhere.test")))

    def test_a_server_that_does_not_answer_is_a_temporary_error(self) -> Any:
        silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        resolver = makeResolver(f"127.0.0.1:{silent.getHost().port}", reactor)
        d = self.assertFailure(fetchRecord(resolver, "example.org", timeout=0.3), DMARCTemporaryError)
        d.addCallback(lambda e: self.assertEqual(str(e), "_dmarc.example.org: TimeoutError"))
        return d

    def test_a_name_the_server_leaves_unanswered_is_a_temporary_error(self) -> Any:
        d = self.assertFailure(fetchRecord(self.resolver, "slow.test", timeout=0.3), DMARCTemporaryError)
        d.addCallback(lambda e: self.assertEqual(str(e), "_dmarc.slow.test: TimeoutError"))
        return d


WALK_ZONES = {
    "com": [
        ("_dmarc.com", txt("v=DMARC1; p=reject; psd=y")),  # a Public Suffix Domain's record
        ("_dmarc.example.com", txt("v=DMARC1; p=quarantine; sp=none; np=reject")),
        ("mail.example.com", dns.Record_A("192.0.2.25", ttl=60)),
        ("_dmarc.testing.com", txt("v=DMARC1; p=reject; t=y")),
        ("_dmarc.legacy.com", txt("v=DMARC1; p=reject; pct=0")),
    ],
    "test": [
        ("_dmarc.plain.test", txt("v=DMARC1; p=none")),
        ("_dmarc.sub.plain.test", txt("v=DMARC1; p=reject")),
        ("_dmarc.own.test", txt("v=DMARC1; p=reject")),
        ("_dmarc.dept.own.test", txt("v=DMARC1; psd=n")),
    ],
}


class TreeWalkTests(TestCase):
    """RFC 9989 section 4.10 against a real DNS server on loopback, with the RFC's
    kinds of example: a Public Suffix Domain publishing psd=y, an Organizational
    Domain, records on subdomains, a psd=n boundary."""

    timeout = 20

    def setUp(self) -> None:
        server = DNSServer(WALK_ZONES)
        self.resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)
        self.discovery = Discovery(self.resolver)

    @defer.inlineCallbacks
    def test_organizational_domain_found_by_the_walk(self) -> Any:
        """Thirteen labels: the walk jumps to the last seven, finds example.com's
        record, then com's psd=y: the Organizational Domain is one label below com."""
        found = yield self.discovery.organizationalDomain("a.b.c.d.e.f.g.h.i.j.mail.example.com")
        self.assertEqual(found, "example.com")
        self.assertEqual((yield self.discovery.organizationalDomain("Example.COM.")), "example.com")

    @defer.inlineCallbacks
    def test_psd_y_stops_the_walk(self) -> Any:
        """Below a psd=y record the Organizational Domain is the name one label under
        it, whether or not that name has a record of its own."""
        self.assertEqual((yield self.discovery.organizationalDomain("www.nothing-here.com")), "nothing-here.com")
        self.assertEqual((yield self.discovery.organizationalDomain("com")), "com")  # the walk started there

    @defer.inlineCallbacks
    def test_without_psd_the_record_with_the_fewest_labels(self) -> Any:
        self.assertEqual((yield self.discovery.organizationalDomain("x.sub.plain.test")), "plain.test")

    @defer.inlineCallbacks
    def test_psd_n_is_the_boundary(self) -> Any:
        self.assertEqual((yield self.discovery.organizationalDomain("x.dept.own.test")), "dept.own.test")

    @defer.inlineCallbacks
    def test_no_record_anywhere_is_its_own_organizational_domain(self) -> Any:
        self.assertEqual((yield self.discovery.organizationalDomain("a.b.nowhere.test")), "a.b.nowhere.test")

    @defer.inlineCallbacks
    def test_policy_discovery_takes_the_first_record_up_the_tree(self) -> Any:
        found = yield fetchRecord(self.resolver, "x.sub.plain.test")
        self.assertEqual(found, (record("reject"), "sub.plain.test"))
        found = yield fetchRecord(self.resolver, "a.b.c.d.e.f.g.h.i.j.mail.example.com")
        self.assertEqual(found[1], "example.com")

    @defer.inlineCallbacks
    def test_alignment(self) -> Any:
        for domain, author, mode, expected in [
            ("example.com", "EXAMPLE.com.", "s", True),
            ("mail.example.com", "example.com", "s", False),
            ("mail.example.com", "example.com", "r", True),
            ("example.com", "news.example.com", "r", True),
            ("other.com", "example.com", "r", False),  # psd=y: com is no shared organization
            ("own.test", "x.dept.own.test", "r", False),  # psd=n: dept.own.test is its own
            ("y.dept.own.test", "x.dept.own.test", "r", True),
        ]:
            self.assertEqual((yield self.discovery.aligned(domain, author, mode)), expected, (domain, author, mode))

    @defer.inlineCallbacks
    def test_each_name_is_asked_once(self) -> Any:
        asked: list[str] = []
        lookupText = self.resolver.lookupText
        self.patch(self.resolver, "lookupText", lambda name, **kw: asked.append(name) or lookupText(name, **kw))
        yield self.discovery.policyRecord("a.mail.example.com")
        yield self.discovery.aligned("b.mail.example.com", "a.mail.example.com", "r")
        self.assertEqual(sorted(asked), sorted({"_dmarc.a.mail.example.com", "_dmarc.mail.example.com",
                                                "_dmarc.example.com", "_dmarc.com", "_dmarc.b.mail.example.com"}))


class EvaluateTests(TestCase):
    """Which policy applies and whether it is applied, through the walk."""

    timeout = 20

    def setUp(self) -> None:
        server = DNSServer(WALK_ZONES)
        self.resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)

    def evaluate(self, author: str, spfResult: str = "none", spfDomain: str = "",
                 dkimPasses: tuple[str, ...] = ()) -> defer.Deferred[Evaluation]:
        return evaluate(Discovery(self.resolver), author, spfResult, spfDomain, dkimPasses)

    @defer.inlineCallbacks
    def test_aligned_spf_pass(self) -> Any:
        result = yield self.evaluate("example.com", "pass", "bounces.example.com")
        self.assertEqual(result, Evaluation("pass", "example.com", "quarantine",
                                            reason="SPF aligned (bounces.example.com)"))

    @defer.inlineCallbacks
    def test_aligned_dkim_pass(self) -> Any:
        result = yield self.evaluate("mail.example.com", "fail", "example.com", ("signer.test", "example.com"))
        self.assertEqual((result.result, result.reason), ("pass", "DKIM aligned (example.com)"))

    @defer.inlineCallbacks
    def test_unaligned_fail_applies_the_policy(self) -> Any:
        result = yield self.evaluate("example.com", "pass", "other.com", ("other.com",))
        self.assertEqual(result, Evaluation("fail", "example.com", "quarantine", True,
                                            "neither SPF nor DKIM passed for an aligned domain"))

    @defer.inlineCallbacks
    def test_an_existing_subdomain_gets_sp(self) -> Any:
        result = yield self.evaluate("mail.example.com")
        self.assertEqual((result.result, result.policy, result.applied), ("fail", "none", True))

    @defer.inlineCallbacks
    def test_np_applies_to_a_non_existent_subdomain(self) -> Any:
        """ghost.example.com has no A, AAAA or MX (NXDOMAIN): np=reject, not sp=none."""
        result = yield self.evaluate("ghost.example.com")
        self.assertEqual((result.result, result.policy, result.applied), ("fail", "reject", True))

    @defer.inlineCallbacks
    def test_a_psd_policy_applies_below_it(self) -> Any:
        result = yield self.evaluate("unregistered.com")
        self.assertEqual((result.result, result.policy), ("fail", "reject"))

    @defer.inlineCallbacks
    def test_t_y_does_not_reject(self) -> Any:
        for author in ("testing.com", "legacy.com"):  # t=y, and the legacy pct=0
            result = yield self.evaluate(author)
            self.assertEqual((result.result, result.policy, result.applied), ("fail", "reject", False), author)
            session = Session(clientAddress="192.0.2.1", helo="client.test", sender=Address("a", author))
            spool = Spool(runNow)
            spool.write(f"From: a@{author}\r\nSubject: s\r\n\r\nhi\r\n".encode())
            verdict = yield DMARCCheck(self.resolver).checkMessage(session, spool)
            self.assertIsNone(verdict.refusal)
            self.assertEqual(authResultsField("mx.test", verdict.results),
                             f"Authentication-Results: mx.test; dmarc=fail header.from={author} policy.dmarc=reject")

    @defer.inlineCallbacks
    def test_no_record(self) -> Any:
        result = yield self.evaluate("nowhere.test", "pass", "nowhere.test")
        self.assertEqual(result, Evaluation("none", "nowhere.test", reason="no DMARC record"))

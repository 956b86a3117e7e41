"""DMARC (RFC 7489): parsing policy records, the organizational domain, identifier
alignment, the author domain, evaluation, and fetching the record from a real DNS
server on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail.policy.dmarc import (DMARCTemporaryError, Evaluation, Record, aligned, authorDomain, evaluate, fetchRecord,
                          organizationalDomain, parseRecord)
from jsmail._dns import makeResolver
from jsmail.testing import DNSServer


class ParseRecordTests(SynchronousTestCase):
    """Section 6.3: the tags, and which texts are no DMARC record at all."""

    def test_every_tag(self) -> None:
        record = parseRecord("v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s; pct=25; "
                             "rua=mailto:dmarc@example.org; fo=1")
        self.assertEqual(record, Record(policy="quarantine", subdomainPolicy="reject", adkim="s", aspf="s", pct=25))

    def test_defaults(self) -> None:
        """sp defaults to p; alignment is relaxed and every message is sampled."""
        self.assertEqual(parseRecord("v=DMARC1; p=reject"),
                         Record(policy="reject", subdomainPolicy="reject", adkim="r", aspf="r", pct=100))

    def test_spaces_and_case(self) -> None:
        self.assertEqual(parseRecord(" v = DMARC1 ;P=Reject; SP = None ;"),
                         Record(policy="reject", subdomainPolicy="none"))

    def test_version_must_come_first(self) -> None:
        self.assertIsNone(parseRecord("p=reject; v=DMARC1"))
        self.assertIsNone(parseRecord("vp=reject; v=DMARC1; p=reject"))

    def test_version_must_be_dmarc1_exactly(self) -> None:
        self.assertIsNone(parseRecord("v=dmarc1; p=reject"))
        self.assertIsNone(parseRecord("v=DMARC2; p=reject"))
        self.assertIsNone(parseRecord("v=spf1 -all"))
        self.assertIsNone(parseRecord(""))

    def test_missing_or_invalid_policy_without_rua_is_no_record(self) -> None:
        self.assertIsNone(parseRecord("v=DMARC1"))
        self.assertIsNone(parseRecord("v=DMARC1; p=bounce"))

    def test_missing_or_invalid_policy_with_rua_is_none(self) -> None:
        """Section 6.6.3: such a record is taken as p=none."""
        self.assertEqual(parseRecord("v=DMARC1; p=bounce; rua=mailto:r@example.org").policy, "none")
        self.assertEqual(parseRecord("v=DMARC1; rua=mailto:r@example.org"),
                         Record(policy="none", subdomainPolicy="none"))

    def test_invalid_subdomain_policy_falls_back_to_p(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=quarantine; sp=bounce").subdomainPolicy, "quarantine")

    def test_unknown_alignment_is_relaxed(self) -> None:
        record = parseRecord("v=DMARC1; p=none; adkim=x; aspf=S")
        self.assertEqual((record.adkim, record.aspf), ("r", "s"))

    def test_pct_is_clamped(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=reject; pct=150").pct, 100)
        self.assertEqual(parseRecord("v=DMARC1; p=reject; pct=0").pct, 0)
        self.assertEqual(parseRecord("v=DMARC1; p=reject; pct=-5").pct, 100)
        self.assertEqual(parseRecord("v=DMARC1; p=reject; pct=half").pct, 100)

    def test_first_of_a_repeated_tag_counts(self) -> None:
        self.assertEqual(parseRecord("v=DMARC1; p=none; p=reject").policy, "none")


class OrganizationalDomainTests(SynchronousTestCase):
    """Section 3.2, by the public suffix list."""

    def test_below_a_two_label_suffix(self) -> None:
        self.assertEqual(organizationalDomain("example.co.uk"), "example.co.uk")
        self.assertEqual(organizationalDomain("mail.example.co.uk"), "example.co.uk")

    def test_deep_subdomain(self) -> None:
        self.assertEqual(organizationalDomain("a.b.example.com"), "example.com")

    def test_case_and_trailing_dot(self) -> None:
        self.assertEqual(organizationalDomain("Mail.Example.COM."), "example.com")

    def test_a_bare_public_suffix_is_its_own(self) -> None:
        self.assertEqual(organizationalDomain("co.uk"), "co.uk")
        self.assertEqual(organizationalDomain("com"), "com")


class AlignedTests(SynchronousTestCase):
    """Section 3.1: strict and relaxed identifier alignment."""

    def test_strict(self) -> None:
        self.assertTrue(aligned("example.com", "EXAMPLE.com.", "s"))
        self.assertFalse(aligned("mail.example.com", "example.com", "s"))

    def test_relaxed(self) -> None:
        self.assertTrue(aligned("mail.example.com", "example.com", "r"))
        self.assertTrue(aligned("example.com", "news.example.com", "r"))
        self.assertFalse(aligned("example.net", "example.com", "r"))

    def test_relaxed_does_not_cross_a_public_suffix(self) -> None:
        self.assertFalse(aligned("a.co.uk", "b.co.uk", "r"))
        self.assertTrue(aligned("a.example.co.uk", "b.example.co.uk", "r"))


def header(*fields: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


class AuthorDomainTests(SynchronousTestCase):
    """Sections 3.1.1 and 6.6.1: the one address in the one From field."""

    def test_one_address(self) -> None:
        self.assertEqual(authorDomain(header(b"From: a@Example.ORG", b"To: b@example.net")), "example.org")

    def test_display_names(self) -> None:
        self.assertEqual(authorDomain(header(b'From: "Doe, Jane" <jane@example.org>')), "example.org")
        self.assertEqual(authorDomain(header(b"From: Jane Doe <jane@example.org>")), "example.org")

    def test_folded_field(self) -> None:
        self.assertEqual(authorDomain(header(b"Subject: s", b"From: A Very Long Display Name\r\n\t<a@example.org>")),
                         "example.org")

    def test_two_from_fields(self) -> None:
        self.assertIsNone(authorDomain(header(b"From: a@example.org", b"From: b@example.org")))

    def test_two_addresses(self) -> None:
        self.assertIsNone(authorDomain(header(b"From: a@example.org, b@example.net")))

    def test_no_from_field(self) -> None:
        self.assertIsNone(authorDomain(header(b"Subject: no author")))

    def test_a_from_line_in_the_body_does_not_count(self) -> None:
        self.assertIsNone(authorDomain(header(b"Subject: s", body=b"From: a@example.org\r\n")))

    def test_no_domain(self) -> None:
        self.assertIsNone(authorDomain(header(b"From: undisclosed")))
        self.assertIsNone(authorDomain(header(b"From: a@")))

    def test_utf8_domain_is_an_a_label(self) -> None:
        """RFC 6532 mail: the record is looked up under the A-label."""
        self.assertEqual(authorDomain(header("From: Zoë <zoe@Exämple.org>".encode("utf-8"))), "xn--exmple-cua.org")

    def test_unusable_domains(self) -> None:
        """Octets that are not UTF-8, an empty label, a label over 63 octets: no author
        domain (and so no DNS lookup that could go wrong)."""
        self.assertIsNone(authorDomain(header(b"From: <a@ex\xe9.org>")))
        self.assertIsNone(authorDomain(header(b"From: a@example..org")))
        self.assertIsNone(authorDomain(header(b"From: a@" + b"x" * 64 + b".org")))


    def test_nestedCommentsAreNoAuthorNotARecursionError(self) -> None:
        """L-5: six folded lines of 900 "(" made the address parser recurse until
        RecursionError (451 and a 1000-frame traceback).  Unbalanced, they are no author;
        balanced, they are skipped in one pass."""
        self.assertIsNone(authorDomain(header(b"From: " + b"\r\n ".join([b"(" * 900] * 6))))
        nested = b"(" * 3000 + b"x" + b")" * 3000
        self.assertEqual(authorDomain(header(b"From: " + nested + b" a@example.org")), "example.org")
        self.assertIsNone(authorDomain(header(b"From: " + b"(" * 5000 + b"x" + b")" * 5000 + b" a@example.org")),
                          "over MAX_FROM octets")

    def test_commentsAndQuotes(self) -> None:
        self.assertEqual(authorDomain(header(b'From: "Doe (Jane)" <jane(x)@(y)example.org>')), "example.org")
        self.assertIsNone(authorDomain(header(b"From: a@example.org)")))
        self.assertIsNone(authorDomain(header(b'From: "unclosed <a@example.org>')))

    def test_severalAddressesOfOneDomain(self) -> None:
        """RFC 5322 lets one From field name several authors; one domain for all is
        that domain, two are none."""
        self.assertEqual(authorDomain(header(b"From: a@example.org, B <b@EXAMPLE.org>")), "example.org")
        self.assertIsNone(authorDomain(header(b"From: a@example.org, b@sub.example.org")))

    def test_fromWithoutColonSpaceAndObsoleteSpace(self) -> None:
        self.assertEqual(authorDomain(header(b"from :a@example.org")), "example.org")

    def test_addressLiteralIsNoAuthorDomain(self) -> None:
        self.assertIsNone(authorDomain(header(b"From: a@[192.0.2.1]")))


STRICT = Record(policy="reject", subdomainPolicy="quarantine", adkim="s", aspf="s")
RELAXED = Record(policy="reject", subdomainPolicy="quarantine")


class EvaluateTests(SynchronousTestCase):
    """Section 6.6.2: pass when SPF or DKIM passed for an aligned domain."""

    def test_aligned_spf_pass(self) -> None:
        result = evaluate(RELAXED, "example.org", "example.org", "pass", "bounces.example.org", [])
        self.assertEqual(result,
                         Evaluation("pass", "example.org", "reject", reason="SPF aligned (bounces.example.org)"))

    def test_strict_spf_needs_the_same_domain(self) -> None:
        result = evaluate(STRICT, "example.org", "example.org", "pass", "bounces.example.org", [], sample=0)
        self.assertEqual(result.result, "fail")

    def test_spf_result_other_than_pass_does_not_count(self) -> None:
        result = evaluate(RELAXED, "example.org", "example.org", "softfail", "example.org", [], sample=0)
        self.assertEqual(result.result, "fail")

    def test_aligned_dkim_pass(self) -> None:
        result = evaluate(STRICT, "example.org", "example.org", "fail", "example.org",
                          ["signer.example", "example.org"])
        self.assertEqual((result.result, result.reason), ("pass", "DKIM aligned (example.org)"))

    def test_subdomain_uses_sp(self) -> None:
        result = evaluate(RELAXED, "example.org", "news.example.org", "none", "", [], sample=0)
        self.assertEqual((result.result, result.authorDomain, result.policy, result.applied),
                         ("fail", "news.example.org", "quarantine", True))

    def test_unaligned_fail(self) -> None:
        result = evaluate(RELAXED, "example.org", "example.org", "pass", "example.net", ["example.net"], sample=0)
        self.assertEqual(result, Evaluation("fail", "example.org", "reject", True,
                                            "neither SPF nor DKIM passed for an aligned domain"))

    def test_pct_sampling(self) -> None:
        """A failing message is under the policy when the sample falls below pct."""
        half = Record(policy="reject", subdomainPolicy="reject", pct=50)
        self.assertTrue(evaluate(half, "example.org", "example.org", "none", "", [], sample=49.9).applied)
        self.assertFalse(evaluate(half, "example.org", "example.org", "none", "", [], sample=50).applied)
        none = Record(policy="reject", subdomainPolicy="reject", pct=0)
        self.assertFalse(evaluate(none, "example.org", "example.org", "none", "", [], sample=0).applied)

    def test_no_record(self) -> None:
        self.assertEqual(evaluate(None, "", "example.org", "pass", "example.org", []),
                         Evaluation("none", "example.org", reason="no DMARC record"))


def txt(*strings: str) -> Any:
    return dns.Record_TXT(*[s.encode("ascii") for s in strings], ttl=60)


class FetchRecordTests(TestCase):
    """Section 6.6.3 against a real DNS server on loopback."""

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
        self.assertEqual(found, (Record(policy="none", subdomainPolicy="none"), "own.example.org"))

    @defer.inlineCallbacks
    def test_other_txt_records_are_ignored(self) -> Any:
        found = yield fetchRecord(self.resolver, "example.org")
        self.assertEqual(found, (Record(policy="reject", subdomainPolicy="quarantine"), "example.org"))

    @defer.inlineCallbacks
    def test_strings_of_a_record_are_joined(self) -> Any:
        found = yield fetchRecord(self.resolver, "example.co.uk")
        self.assertEqual(found, (Record(policy="quarantine", subdomainPolicy="quarantine"), "example.co.uk"))

    @defer.inlineCallbacks
    def test_fallback_to_the_organizational_domain(self) -> Any:
        found = yield fetchRecord(self.resolver, "a.b.example.org")
        self.assertEqual(found, (Record(policy="reject", subdomainPolicy="quarantine"), "example.org"))
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

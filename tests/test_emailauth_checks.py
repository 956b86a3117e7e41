"""The SPF, DKIM, DMARC and ARC checks and the DKIM signing and ARC sealing modifiers
of :mod:`jsmail.policy.emailauth`, each driven directly with a session and a spooled message,
against a real DNS server on loopback; and their plugin factories.

(tests/test_emailauth.py runs them end to end through the gateway.)
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import TestCase

from jsmail._dns import makeResolver
from jsmail._threads import reactorThreads
from jsmail.address import NULL, Address
from jsmail.auth import MailUser
from jsmail.error import SMTPReplyError
from jsmail.plugins import jsmail_builtin
from jsmail.policy.arc import ARCResult, ARCSealer, ARCVerifier
from jsmail.policy.authresults import authResultsField
from jsmail.policy.chain import buildChain
from jsmail.policy.dkim import DKIMSigner, DKIMVerifier, SigningKey, generateKey, keyRecord, zoneEntry
from jsmail.policy.emailauth import ARCCheck, ARCSeal, DKIMCheck, DKIMSign, DMARCCheck, SPFCheck
from jsmail.policy.plugin import PluginError, PolicyContext
from jsmail.policy.spf import SPFChecker
from jsmail.smtp.assembly import Spool
from jsmail.smtp.server import Session
from jsmail.testing import DNSServer

AUTHSERV = "mx.test"
# One RSA key for the module: 1024 bits keeps key generation quick.
KEY_PEM = generateKey("rsa", 1024)
DEFAULT_ACTIONS = {"fail": "reject", "softfail": "tag", "permerror": "tag", "temperror": "tag"}


def txt(text: str) -> Any:
    """A TXT record, cut into strings of at most 255 octets."""
    data = text.encode("ascii")
    return dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)], ttl=60)


def message(author: str = "a@example.test", *extra: str) -> bytes:
    fields = [f"From: {author}", "To: x@mx.test", "Subject: hello", "Message-ID: <1@client.test>", *extra]
    return ("\r\n".join(fields) + "\r\n\r\nHello there.\r\n").encode("ascii")


def spooled(data: bytes) -> Spool:
    spool = Spool(reactorThreads(reactor))
    spool.write(data)
    return spool


def rendered(verdict: Any) -> str:
    """The Authentication-Results field smtpd would make of a verdict's results."""
    return authResultsField(AUTHSERV, verdict.results)


class DNSTestCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.keyPath = self.mktemp()
        with open(self.keyPath, "wb") as f:
            f.write(KEY_PEM)
        self.key = SigningKey.load("example.test", "sel", self.keyPath)
        server = DNSServer({
            "example.test": [
                ("example.test", txt("v=spf1 ip4:127.0.0.1 -all")),
                ("_dmarc.example.test", txt("v=DMARC1; p=reject")),
                ("sel._domainkey.example.test", txt(keyRecord(KEY_PEM))),
            ],
            "fail.test": [
                ("fail.test", txt("v=spf1 -all exp=why.fail.test")),
                ("why.fail.test", txt("%{i} is not one of %{d}'s mail servers")),
            ],
            "plain.test": [("plain.test", txt("v=spf1 -all"))],
            "soft.test": [
                ("soft.test", txt("v=spf1 ~all")),
                ("_dmarc.soft.test", txt("v=DMARC1; p=quarantine")),
            ],
            "strict.test": [
                ("strict.test", txt("v=spf1 ~all")),
                ("_dmarc.strict.test", txt("v=DMARC1; p=reject")),
            ],
            "perm.test": [("perm.test", txt("v=spf1 frobnicate:x -all"))],
            "slow.test": [],
            "slowdmarc.test": [("slowdmarc.test", txt("v=spf1 ip4:127.0.0.1 -all"))],
        }, silent=["slow.test", "_dmarc.slowdmarc.test"])
        self.dns = server.start()
        self.addCleanup(server.stop)
        self.resolver = makeResolver(self.dns, reactor)

    def session(self, sender: str = "a@example.test", user: Any = None, helo: str = "client.test") -> Session:
        local, _, domain = sender.rpartition("@")
        return Session(clientAddress="127.0.0.1", helo=helo, sender=Address(local, domain) if sender else NULL,
                       user=user)

    def spf(self, actions: dict[str, str] | None = None, timeout: float = 5.0) -> SPFCheck:
        checker = SPFChecker(reactor, self.resolver, timeout, receiver=AUTHSERV)
        return SPFCheck(checker, AUTHSERV, {**DEFAULT_ACTIONS, **(actions or {})})

    def checkSender(self, check: SPFCheck, session: Session) -> defer.Deferred[Any]:
        return check.checkSender(session, session.sender, {})


class SPFCheckTests(DNSTestCase):
    @defer.inlineCallbacks
    def test_pass_adds_received_spf_and_a_result(self) -> Any:
        session = self.session("a@example.test")
        verdict = yield self.checkSender(self.spf(), session)
        self.assertIsNone(verdict.refusal)
        self.assertEqual(verdict.headers, (
            "Received-SPF: pass (mx.test: domain of a@example.test designates 127.0.0.1 as permitted sender) "
            "client-ip=127.0.0.1; envelope-from=\"a@example.test\"; helo=client.test; receiver=mx.test; "
            "mechanism=\"ip4:127.0.0.1\"; identity=mailfrom;",))
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@example.test")
        self.assertEqual(session.transactionNotes["spf"].result, "pass")

    @defer.inlineCallbacks
    def test_fail_with_reject_refuses_with_the_explanation(self) -> Any:
        verdict = yield self.checkSender(self.spf(), self.session("a@fail.test"))
        self.assertEqual(str(verdict.refusal),
                         "550 5.7.23 SPF validation failed: 127.0.0.1 is not one of fail.test's mail servers")
        self.assertEqual(verdict.reason, "SPF fail for fail.test")
        error = self.assertRaises(SMTPReplyError, verdict.raiseIfRefused)
        self.assertEqual(error.reply.lines(),
                         [b"550 5.7.23 SPF validation failed: 127.0.0.1 is not one of fail.test's mail servers\r\n"])

    @defer.inlineCallbacks
    def test_fail_without_exp_gives_the_default_explanation(self) -> Any:
        verdict = yield self.checkSender(self.spf(), self.session("a@plain.test"))
        self.assertEqual(str(verdict.refusal), "550 5.7.23 SPF validation failed: SPF fail - not authorized")

    @defer.inlineCallbacks
    def test_fail_with_tag_accepts_with_the_result(self) -> Any:
        verdict = yield self.checkSender(self.spf({"fail": "tag"}), self.session("a@plain.test"))
        self.assertIsNone(verdict.refusal)
        self.assertTrue(verdict.headers[0].startswith("Received-SPF: fail (mx.test: domain of a@plain.test does "
                                                      "not designate 127.0.0.1 as permitted sender)"),
                        verdict.headers)
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; spf=fail smtp.mailfrom=a@plain.test")

    @defer.inlineCallbacks
    def test_softfail_tag(self) -> Any:
        verdict = yield self.checkSender(self.spf(), self.session("a@soft.test"))
        self.assertIsNone(verdict.refusal)
        self.assertTrue(verdict.headers[0].startswith(
            "Received-SPF: softfail (mx.test: domain of transitioning a@soft.test does not designate 127.0.0.1 "
            "as permitted sender)"), verdict.headers)
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; spf=softfail smtp.mailfrom=a@soft.test")

    @defer.inlineCallbacks
    def test_softfail_reject(self) -> Any:
        verdict = yield self.checkSender(self.spf({"softfail": "reject"}), self.session("a@soft.test"))
        self.assertEqual(str(verdict.refusal), "550 5.7.23 SPF validation failed: softfail")

    @defer.inlineCallbacks
    def test_permerror(self) -> Any:
        tagged = yield self.checkSender(self.spf(), self.session("a@perm.test"))
        self.assertEqual(rendered(tagged), "Authentication-Results: mx.test; spf=permerror smtp.mailfrom=a@perm.test")
        rejected = yield self.checkSender(self.spf({"permerror": "reject"}), self.session("a@perm.test"))
        self.assertEqual((rejected.refusal.code, rejected.refusal.enhanced), (550, "5.7.24"))
        self.assertTrue(rejected.refusal.text.startswith("SPF validation error: "), rejected.refusal.text)

    @defer.inlineCallbacks
    def test_temperror_tempfail(self) -> Any:
        verdict = yield self.checkSender(self.spf({"temperror": "tempfail"}, timeout=0.5), self.session("a@slow.test"))
        self.assertEqual((verdict.refusal.code, verdict.refusal.enhanced), (451, "4.7.24"))
        self.assertTrue(verdict.refusal.text.startswith("SPF validation error, try again later: "),
                        verdict.refusal.text)
        self.assertEqual(verdict.reason, "SPF temperror for slow.test")

    @defer.inlineCallbacks
    def test_temperror_tag(self) -> Any:
        verdict = yield self.checkSender(self.spf(timeout=0.5), self.session("a@slow.test"))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; spf=temperror smtp.mailfrom=a@slow.test")

    @defer.inlineCallbacks
    def test_null_sender_checks_the_helo_name(self) -> Any:
        verdict = yield self.checkSender(self.spf(), self.session("", helo="example.test"))
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; spf=pass smtp.helo=example.test")
        self.assertIn("identity=helo;", verdict.headers[0])

    def test_authenticated_session_is_not_checked(self) -> None:
        session = self.session("a@fail.test", user=MailUser("u"))
        self.assertIsNone(self.checkSender(self.spf(), session))
        self.assertNotIn("spf", session.transactionNotes)


class DKIMCheckTests(DNSTestCase):
    def check(self) -> DKIMCheck:
        return DKIMCheck(DKIMVerifier(reactor, self.resolver, timeout=5))

    @defer.inlineCallbacks
    def test_pass(self) -> Any:
        signature = yield DKIMSigner(reactor, [self.key]).sign(message(), "example.test")
        session = self.session()
        verdict = yield self.check().checkMessage(session, spooled(signature + message()))
        [result] = session.transactionNotes["dkim"]
        self.assertEqual((result.result, result.domain, result.selector), ("pass", "example.test", "sel"))
        # header.b is base64: authres quotes it when it holds "/" or "+" (RFC 2045 tspecials)
        self.assertIn(rendered(verdict).replace('"', ""),
                      "Authentication-Results: mx.test; dkim=pass header.d=example.test "
                      f"header.i=@example.test header.a=rsa-sha256 header.s=sel header.b={result.headerB}")
        self.assertEqual(len(result.headerB), 8)

    @defer.inlineCallbacks
    def test_altered_message_fails(self) -> Any:
        signature = yield DKIMSigner(reactor, [self.key]).sign(message(), "example.test")
        verdict = yield self.check().checkMessage(self.session(), spooled(signature + message().replace(b"Hello",
                                                                                                        b"Hullo")))
        self.assertIn("dkim=fail reason=\"body hash did not verify\" header.d=example.test", rendered(verdict))

    @defer.inlineCallbacks
    def test_unsigned_is_none(self) -> Any:
        session = self.session()
        verdict = yield self.check().checkMessage(session, spooled(message()))
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; dkim=none")
        self.assertEqual(session.transactionNotes["dkim"], [])

    def test_authenticated_session_is_not_checked(self) -> None:
        session = self.session(user=MailUser("u"))
        self.assertIsNone(self.check().checkMessage(session, spooled(message())))
        self.assertNotIn("dkim", session.transactionNotes)


class DMARCCheckTests(DNSTestCase):
    @defer.inlineCallbacks
    def outcome(self, sender: str, data: bytes, dmarc: DMARCCheck, dkim: bool = False) -> Any:
        """SPF at MAIL FROM (fail rejects, the rest tags), DKIM if asked, then DMARC."""
        session = self.session(sender)
        spfVerdict = yield self.checkSender(self.spf(), session)
        self.assertIsNone(spfVerdict.refusal)
        spool = spooled(data)
        if dkim:
            yield DKIMCheck(DKIMVerifier(reactor, self.resolver, timeout=5)).checkMessage(session, spool)
        verdict = yield dmarc.checkMessage(session, spool)
        return verdict

    @defer.inlineCallbacks
    def test_aligned_spf_passes(self) -> Any:
        verdict = yield self.outcome("a@example.test", message("a@example.test"), DMARCCheck(self.resolver))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict),
                         "Authentication-Results: mx.test; dmarc=pass header.from=example.test policy.dmarc=reject")

    @defer.inlineCallbacks
    def test_aligned_dkim_passes_when_spf_does_not(self) -> Any:
        signature = yield DKIMSigner(reactor, [self.key]).sign(message("b@example.test"), "example.test")
        verdict = yield self.outcome("a@soft.test", signature + message("b@example.test"), DMARCCheck(self.resolver),
                                 dkim=True)
        self.assertIsNone(verdict.refusal)
        self.assertIn("dmarc=pass header.from=example.test", rendered(verdict))

    @defer.inlineCallbacks
    def test_p_reject_rejects(self) -> Any:
        verdict = yield self.outcome("a@strict.test", message("a@strict.test"), DMARCCheck(self.resolver))
        self.assertEqual(str(verdict.refusal), "550 5.7.1 Message rejected by the DMARC policy of strict.test")
        self.assertEqual(verdict.reason,
                         "DMARC reject for strict.test: neither SPF nor DKIM passed for an aligned domain")

    @defer.inlineCallbacks
    def test_p_reject_with_tag_accepts_with_the_result(self) -> Any:
        check = DMARCCheck(self.resolver, onReject="tag")
        verdict = yield self.outcome("a@strict.test", message("a@strict.test"), check)
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict),
                         "Authentication-Results: mx.test; dmarc=fail header.from=strict.test policy.dmarc=reject")

    @defer.inlineCallbacks
    def test_unaligned_spf_pass_is_a_fail(self) -> Any:
        """SPF passed for example.test, but the author is strict.test."""
        verdict = yield self.outcome("a@example.test", message("a@strict.test"), DMARCCheck(self.resolver))
        self.assertEqual(str(verdict.refusal), "550 5.7.1 Message rejected by the DMARC policy of strict.test")

    @defer.inlineCallbacks
    def test_p_quarantine_is_tagged_by_default(self) -> Any:
        verdict = yield self.outcome("a@soft.test", message("a@soft.test"), DMARCCheck(self.resolver))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict),
                         "Authentication-Results: mx.test; dmarc=fail header.from=soft.test policy.dmarc=quarantine")

    @defer.inlineCallbacks
    def test_p_quarantine_can_reject(self) -> Any:
        check = DMARCCheck(self.resolver, onQuarantine="reject")
        verdict = yield self.outcome("a@soft.test", message("a@soft.test"), check)
        self.assertEqual(str(verdict.refusal), "550 5.7.1 Message rejected by the DMARC policy of soft.test")

    @defer.inlineCallbacks
    def test_no_record_is_none(self) -> Any:
        verdict = yield self.outcome("a@example.test", message("a@nowhere.test"), DMARCCheck(self.resolver))
        self.assertEqual(rendered(verdict),
                         "Authentication-Results: mx.test; dmarc=none header.from=nowhere.test policy.dmarc=none")

    @defer.inlineCallbacks
    def test_two_from_addresses_is_a_permerror(self) -> Any:
        data = message("a@example.test, b@strict.test")
        verdict = yield self.outcome("a@example.test", data, DMARCCheck(self.resolver))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict), 'Authentication-Results: mx.test; dmarc=permerror '
                                            'reason="not exactly one usable author address in From"')

    @defer.inlineCallbacks
    def test_an_unusable_from_domain_is_a_permerror(self) -> Any:
        verdict = yield self.outcome("a@example.test", message("a@example..test"), DMARCCheck(self.resolver))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict), 'Authentication-Results: mx.test; dmarc=permerror '
                                            'reason="not exactly one usable author address in From"')

    @defer.inlineCallbacks
    def test_nestedCommentsInFromAreAPermerrorNotA451(self) -> Any:
        """L-5: the review's From of six folded lines of 900 "(" each."""
        data = message("\r\n ".join(["(" * 900] * 6))
        verdict = yield self.outcome("a@example.test", data, DMARCCheck(self.resolver))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict), 'Authentication-Results: mx.test; dmarc=permerror '
                                            'reason="not exactly one usable author address in From"')

    @defer.inlineCallbacks
    def test_unanswered_lookup_is_a_temperror(self) -> Any:
        verdict = yield self.outcome("a@slowdmarc.test", message("a@slowdmarc.test"),
                                 DMARCCheck(self.resolver, timeout=0.3))
        self.assertIsNone(verdict.refusal)
        self.assertEqual(rendered(verdict), 'Authentication-Results: mx.test; dmarc=temperror '
                                            'reason="_dmarc.slowdmarc.test: TimeoutError" header.from=slowdmarc.test')

    def test_authenticated_session_is_not_checked(self) -> None:
        session = self.session("a@strict.test", user=MailUser("u"))
        self.assertIsNone(DMARCCheck(self.resolver).checkMessage(session, spooled(message("a@strict.test"))))


ARRIVED = b"Authentication-Results: mx.test; arc=none; spf=pass smtp.mailfrom=a@example.test\r\n"


class ARCTests(DNSTestCase):
    def seal(self) -> ARCSeal:
        return ARCSeal(ARCSealer(reactor, self.key, AUTHSERV), AUTHSERV)

    @defer.inlineCallbacks
    def test_seal_makes_a_chain_that_validates(self) -> Any:
        fields = yield self.seal().modify(self.session(), ARRIVED + message())
        self.assertEqual(sorted(f.split(":", 1)[0] for f in fields),
                         ["ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"])
        [results] = [f for f in fields if f.startswith("ARC-Authentication-Results:")]
        self.assertEqual(" ".join(results.split()),
                         "ARC-Authentication-Results: i=1; mx.test; arc=none; spf=pass smtp.mailfrom=a@example.test")
        sealed = "".join(f + "\r\n" for f in fields).encode("ascii") + ARRIVED + message()
        result = yield ARCVerifier(reactor, self.resolver, timeout=5).verify(sealed)
        self.assertEqual(result, ARCResult("pass", "", 1))

        session = self.session()
        verdict = yield ARCCheck(ARCVerifier(reactor, self.resolver, timeout=5)).checkMessage(session, spooled(sealed))
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; arc=pass smtp.remote-ip=127.0.0.1")
        self.assertEqual(session.transactionNotes["arc"], ARCResult("pass", "", 1))

    @defer.inlineCallbacks
    def test_check_of_an_unsealed_message_is_none(self) -> Any:
        verdict = yield ARCCheck(ARCVerifier(reactor, self.resolver, timeout=5)).checkMessage(self.session(),
                                                                                              spooled(message()))
        self.assertEqual(rendered(verdict), "Authentication-Results: mx.test; arc=none smtp.remote-ip=127.0.0.1")

    def test_nothing_to_seal_without_an_arc_result(self) -> None:
        self.assertEqual(self.seal().modify(self.session(), message()), [])
        withoutARC = b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@example.test\r\n" + message()
        self.assertEqual(self.seal().modify(self.session(), withoutARC), [])

    def test_another_hosts_results_are_not_sealed(self) -> None:
        theirs = b"Authentication-Results: elsewhere.test; arc=pass\r\n" + message()
        self.assertEqual(self.seal().modify(self.session(), theirs), [])


class DKIMSignTests(DNSTestCase):
    def sign(self, everything: bool = False) -> DKIMSign:
        return DKIMSign(DKIMSigner(reactor, [self.key]), everything)

    @defer.inlineCallbacks
    def verified(self, fields: list[str], data: bytes) -> Any:
        [field] = fields
        self.assertTrue(field.startswith("DKIM-Signature: "), field)
        [result] = yield DKIMVerifier(reactor, self.resolver, timeout=5).verify(field.encode("ascii") + b"\r\n" + data)
        return result

    @defer.inlineCallbacks
    def test_signs_mail_of_authenticated_users(self) -> Any:
        fields = yield self.sign().modify(self.session(user=MailUser("a@example.test")), message())
        result = yield self.verified(fields, message())
        self.assertEqual((result.result, result.domain, result.selector), ("pass", "example.test", "sel"))

    def test_spoofedFromIsNotSigned(self) -> None:
        """M-11: the key signs only a From (and Sender) the user may send as."""
        user = MailUser("alice@example.test")
        self.assertEqual(self.sign().modify(self.session(user=user), message("ceo@example.test")), [])
        spoofedSender = message("alice@example.test", "Sender: ceo@example.test")
        self.assertEqual(self.sign().modify(self.session(user=user), spoofedSender), [])

    def test_unauthenticated_mail_is_not_signed(self) -> None:
        self.assertEqual(self.sign().modify(self.session(), message()), [])

    @defer.inlineCallbacks
    def test_sign_all(self) -> Any:
        fields = yield self.sign(everything=True).modify(self.session(), message())
        result = yield self.verified(fields, message())
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_parent_domain_key(self) -> Any:
        data = message("a@News.Example.Test")
        fields = yield self.sign().modify(self.session(user=MailUser("a@news.example.test")), data)
        result = yield self.verified(fields, data)
        self.assertEqual((result.result, result.domain), ("pass", "example.test"))

    def test_no_key_for_the_from_domain(self) -> None:
        user = MailUser("u")
        self.assertEqual(self.sign().modify(self.session(user=user), message("a@other.test")), [])
        self.assertEqual(self.sign().modify(self.session(user=user), message("a@notexample.test")), [])

    def test_from_domains_that_differ_are_not_signed(self) -> None:
        data = message("a@example.test, b@other.test")
        self.assertEqual(self.sign(everything=True).modify(self.session(), data), [])

    def test_twoFromFieldsAreNotSigned(self) -> None:
        """RFC 5322 section 3.6 allows one From field: the signer follows the same rule
        as DMARC, which finds no author in a message with two."""
        data = message("a@example.test", "From: b@example.test")
        self.assertEqual(self.sign(everything=True).modify(self.session(), data), [])

    def test_nestedCommentsInFromAreNotSignedNotATraceback(self) -> None:
        data = message("(" * 5000 + "a@example.test")
        self.assertEqual(self.sign(everything=True).modify(self.session(), data), [])

    @defer.inlineCallbacks
    def test_uLabelFromDomainIsSignedAsItsALabel(self) -> Any:
        """A key configured for the U-label domain signs d= with the A-label (RFC 6376
        section 3.5), for a From field in either form."""
        key = SigningKey.load("exämple.test", "sel", self.keyPath)
        self.assertEqual(key.domain, "xn--exmple-cua.test")
        server = DNSServer({"xn--exmple-cua.test": [("sel._domainkey.xn--exmple-cua.test", txt(keyRecord(KEY_PEM)))]})
        resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)
        for author in ("a@exämple.test", "a@xn--exmple-cua.test"):
            data = message("a@example.test").replace(b"a@example.test", author.encode("utf-8"), 1)
            [field] = yield DKIMSign(DKIMSigner(reactor, [key]), everything=True).modify(self.session(), data)
            self.assertIn("d=xn--exmple-cua.test;", " ".join(field.split()))
            [result] = yield DKIMVerifier(reactor, resolver, timeout=5).verify(field.encode("ascii") + b"\r\n" + data)
            self.assertEqual((result.result, result.domain), ("pass", "xn--exmple-cua.test"))


class FactoryTests(TestCase):
    """The plugins' factories, through buildChain as the gateway calls them."""

    timeout = 30

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        self.keyPath = os.path.join(self.data, "rsa.key")
        with open(self.keyPath, "wb") as f:
            f.write(KEY_PEM)
        self.context = PolicyContext(reactor, makeResolver("127.0.0.1:53", reactor), reactorThreads(reactor),
                                     "mx.test", "auth.mx.test", self.data)
        self.plugins = {p.name: p for p in (jsmail_builtin.spf, jsmail_builtin.dkim, jsmail_builtin.arc,
                                            jsmail_builtin.dmarc, jsmail_builtin.dkimSign, jsmail_builtin.arcSeal)}

    def build(self, name: str, options: dict[str, Any]) -> Any:
        chain = buildChain([name], {name: options}, self.context, self.plugins)
        [built] = chain.policies + chain.modifiers
        return built

    def refused(self, name: str, options: Any) -> str:
        error = self.assertRaises(PluginError, buildChain, [name], {name: options}, self.context, self.plugins)
        self.assertEqual(error.key, f"plugins.{name}")
        return str(error)

    def test_spf(self) -> None:
        check = self.build("spf", {"softfail": "reject", "temperror": "tempfail", "timeout": 3})
        self.assertIsInstance(check, SPFCheck)
        self.assertEqual(check.actions, {"fail": "reject", "softfail": "reject", "permerror": "tag",
                                         "temperror": "tempfail"})
        self.assertEqual(check.receiver, "mx.test")

    def test_spf_bad_options(self) -> None:
        self.assertEqual(self.refused("spf", {"fail": "bounce"}), "fail: must be one of reject, tag; got 'bounce'")
        self.assertEqual(self.refused("spf", {"temperror": "reject"}),
                         "temperror: must be one of tempfail, tag; got 'reject'")
        self.assertEqual(self.refused("spf", {"timeout": "soon"}), "timeout: expected float, got 'soon'")
        self.assertEqual(self.refused("spf", {"softfial": "tag"}), "unknown option 'softfial'")

    def test_dkim_arc_dmarc(self) -> None:
        self.assertIsInstance(self.build("dkim", {"max_signatures": 3}), DKIMCheck)
        self.assertIsInstance(self.build("arc", {}), ARCCheck)
        dmarc = self.build("dmarc", {"reject": "tag", "quarantine": "reject", "timeout": 2.5})
        self.assertEqual((dmarc.onReject, dmarc.onQuarantine, dmarc.timeout), ("tag", "reject", 2.5))

    def test_dkim_arc_dmarc_bad_options(self) -> None:
        self.assertEqual(self.refused("dkim", {"max_signatures": "5"}), "max_signatures: expected int, got '5'")
        self.assertEqual(self.refused("arc", {"timeout": True}), "timeout: expected float, got True")
        self.assertEqual(self.refused("dmarc", {"reject": "quarantine"}),
                         "reject: must be one of reject, tag; got 'quarantine'")
        self.assertEqual(self.refused("dmarc", {"policy": "reject"}), "unknown option 'policy'")
        self.assertEqual(self.refused("dmarc", ["reject"]), "expected a table of options, got ['reject']")

    @defer.inlineCallbacks
    def test_dkim_sign(self) -> Any:
        sign = self.build("dkim-sign", {"keys": [{"domain": "example.test", "selector": "sel", "key": self.keyPath}],
                                        "sign": "all"})
        self.assertTrue(sign.everything)
        fields = yield sign.modify(Session(clientAddress="127.0.0.1"), message())
        self.assertTrue(fields[0].startswith("DKIM-Signature: "), fields)
        self.assertIn("d=example.test; ", " ".join(fields[0].split()))

    def test_dkim_sign_bad_options(self) -> None:
        key = {"domain": "example.test", "selector": "sel", "key": self.keyPath}
        self.assertEqual(self.refused("dkim-sign", {}),
                         "keys: list the signing keys, e.g. [{domain = ..., selector = ..., key = ...}]")
        self.assertEqual(self.refused("dkim-sign", {"keys": []}),
                         "keys: expected a list of {domain, selector, key} tables")
        self.assertEqual(self.refused("dkim-sign", {"keys": [{"domain": "example.test", "key": self.keyPath}]}),
                         f"keys: a key is a table of domain, selector and key (a file); got "
                         f"{{'domain': 'example.test', 'key': {self.keyPath!r}}}")
        self.assertEqual(self.refused("dkim-sign", {"keys": [key], "sign": "some"}),
                         "sign: must be one of authenticated, all; got 'some'")
        self.assertEqual(self.refused("dkim-sign", {"keys": [key], "selector": "x"}), "unknown option 'selector'")

    def test_dkim_sign_bad_key_file(self) -> None:
        bad = os.path.join(self.data, "bad.key")
        with open(bad, "wb") as f:
            f.write(b"not a key\n")
        self.assertEqual(self.refused("dkim-sign", {"keys": [{"domain": "example.test", "selector": "s",
                                                               "key": bad}]}),
                         f"keys: DKIM key {bad}: neither PEM nor a base64 Ed25519 seed")

    def test_dkim_sign_makes_a_missing_key(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = {"keys": [{"domain": "example.test", "selector": "new", "key": "dkim/example.test.key"}]}
        sign = self.build("dkim-sign", options)
        path = os.path.join(self.data, "dkim", "example.test.key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            made = f.read()
        self.assertEqual(sign.signer.keyFor("example.test"), SigningKey.load("example.test", "new", path))
        [warning] = [e for e in events if e.get("log_format", "").startswith("Made a new DKIM key")]
        self.assertEqual(warning["path"], path)
        self.assertEqual(warning["record"], zoneEntry("new", "example.test", keyRecord(made)))
        self.assertTrue(warning["record"].startswith('new._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p='))
        self.build("dkim-sign", options)  # a second start uses the key made by the first
        with open(path, "rb") as f:
            self.assertEqual(f.read(), made)

    def test_arc_seal(self) -> None:
        seal = self.build("arc-seal", {"key": {"domain": "example.test", "selector": "sel", "key": self.keyPath}})
        self.assertIsInstance(seal, ARCSeal)
        self.assertEqual(seal.authservId, "auth.mx.test")

    def test_arc_seal_bad_options(self) -> None:
        self.assertEqual(self.refused("arc-seal", {}),
                         "key: give the sealing key as {domain = ..., selector = ..., key = ...}")
        ed = os.path.join(self.data, "ed.key")
        with open(ed, "wb") as f:
            f.write(generateKey("ed25519"))
        self.assertEqual(self.refused("arc-seal", {"key": {"domain": "example.test", "selector": "ed", "key": ed}}),
                         f"DKIM key {ed}: ARC seals with RSA keys only (RFC 8617 section 4.1.3)")

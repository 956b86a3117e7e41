"""The policy chain inside smtpd: order, verdicts and what they add, end-of-data checks,
modifiers, and failures that give 451 without taking the session down."""

from __future__ import annotations

from typing import Any

import authres
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from jsmail import metrics, reply
from jsmail.config import ConfigError, loadConfig
from jsmail.error import SMTPReplyError
from jsmail.interfaces import IMessagePolicy, IModifier
from jsmail.policy.base import Policy
from jsmail.policy.chain import Additions, PhaseRunner
from jsmail.policy.verdict import Verdict
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.smtp.session import Session
from jsmail.testing import Dialog

QUEUED = rb"^250 2\.0\.0 Queued as [0-9A-F]{21}\r\n$"


class Recording(Policy):
    """Records the phases it sees; answers what it is told to, per phase."""

    def __init__(self, name: str, log: list[str], answers: dict[str, Any] | None = None) -> None:
        self.name, self.log, self.answers = name, log, answers or {}

    def _answer(self, phase: str) -> Any:
        self.log.append(f"{self.name}:{phase}")
        answer = self.answers.get(phase)
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    def checkConnect(self, session: object) -> Any:
        return self._answer("connect")

    def checkHelo(self, session: object, name: str) -> Any:
        return self._answer("helo")

    def checkSender(self, session: object, address: object, params: dict) -> Any:
        return self._answer("mail")

    def checkRecipient(self, session: object, address: object, params: dict) -> Any:
        return self._answer("rcpt")


@implementer(IMessagePolicy)
class MessageCheck(Recording):
    seen: bytes = b""

    def checkMessage(self, session: object, content: Any) -> Any:
        def read(data: bytes) -> Any:
            self.seen = data
            return self._answer("data")

        return content.read().addCallback(read)


@implementer(IModifier)
class Stamp:
    """A modifier that adds one field, and records the message it was shown."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.shown = b""

    def modify(self, session: object, message: bytes) -> list[str]:
        self.shown = message
        return [self.field]


SPF_PASS = authres.SPFAuthenticationResult(result="pass", smtp_mailfrom="a@b.example")


class ChainTestCase(SynchronousTestCase):
    def start(self, policies: tuple = (), modifiers: tuple = (), **kw: Any) -> Dialog:
        self.queue = MemoryQueue()
        kw.setdefault("hostname", "mx.test")
        d = Dialog(ServerSettings(**kw), self.queue, policies=policies, modifiers=modifiers)
        d.read()
        d.send(b"EHLO client.example\r\n")
        return d

    def transaction(self, d: Dialog, message: bytes = b"Subject: t\r\n\r\nhello\r\n") -> bytes:
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        return d.send(message + b".\r\n")

    def queued(self) -> bytes:
        [(_, data)] = self.queue.messages.values()
        return data


class OrderTests(ChainTestCase):
    def test_checks_run_in_order_for_every_phase(self) -> None:
        log: list[str] = []
        d = self.start((Recording("a", log), Recording("b", log)))
        self.assertRegex(self.transaction(d), QUEUED)
        self.assertEqual(log, ["a:connect", "b:connect", "a:helo", "b:helo", "a:mail", "b:mail", "a:rcpt", "b:rcpt"])

    def test_first_refusal_wins_and_later_checks_do_not_run(self) -> None:
        log: list[str] = []
        refusal = Verdict.reject(reply.RELAY_DENIED.withText("No thanks"), "private reason")
        d = self.start((Recording("a", log, {"rcpt": refusal}), Recording("b", log)))
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@mx.test>\r\n"), b"550 5.7.1 No thanks\r\n")
        self.assertEqual(log[-1], "a:rcpt")

    def test_tempfail_verdict(self) -> None:
        d = self.start((Recording("a", [], {"mail": Verdict.tempfail(reply.CHECK_FAILED.withText("Later"))}),))
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"451 4.3.0 Later\r\n")

    def test_verdicts_must_use_the_right_class_of_reply(self) -> None:
        self.assertRaises(ValueError, Verdict.reject, reply.CHECK_FAILED)
        self.assertRaises(ValueError, Verdict.tempfail, reply.RELAY_DENIED)

    def test_a_check_that_raises_gives_451_and_the_session_goes_on(self) -> None:
        d = self.start((Recording("a", [], {"mail": RuntimeError("bug in a check")}),))
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"451 4.3.0 Temporary local problem, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(d.send(b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_a_deferred_that_fails_gives_451(self) -> None:
        d = self.start((Recording("a", [], {"rcpt": lambda: defer.fail(KeyError("x"))}),))
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@mx.test>\r\n"), b"451 4.3.0 Temporary local problem, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_an_answer_that_is_not_a_verdict_is_a_temporary_failure(self) -> None:
        d = self.start((Recording("a", [], {"mail": "yes"}),))
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n")[:10], b"451 4.3.0 ")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class AdditionTests(ChainTestCase):
    def test_header_fields_go_above_received(self) -> None:
        tag = Verdict.accept(headers=["X-Listed: yes"])
        d = self.start((Recording("a", [], {"connect": tag, "mail": Verdict.accept(["X-Mail: 1"])}),))
        self.assertRegex(self.transaction(d), QUEUED)
        lines = self.queued().split(b"\r\n")
        self.assertEqual(lines[:2], [b"X-Listed: yes", b"X-Mail: 1"])
        self.assertTrue(lines[2].startswith(b"Received: from client.example"))

    def test_transaction_additions_do_not_carry_over(self) -> None:
        d = self.start((Recording("a", [], {"connect": Verdict.accept(["X-Conn: 1"]),
                                            "mail": Verdict.accept(["X-Mail: 1"])}),))
        self.transaction(d)
        d.send(b"RSET\r\n")
        self.queue.messages.clear()
        self.policiesOff(d)
        self.assertRegex(self.transaction(d), QUEUED)
        self.assertIn(b"X-Conn: 1\r\n", self.queued())
        self.assertNotIn(b"X-Mail", self.queued())

    def policiesOff(self, d: Dialog) -> None:
        for p in d.listener.phases.policies:
            p.answers.pop("mail", None)  # type: ignore[attr-defined]

    def test_a_refused_recipient_adds_nothing(self) -> None:
        answers = {"n": 0}

        def rcpt() -> Verdict:
            answers["n"] += 1
            if answers["n"] == 1:
                return Verdict.accept(["X-First: 1"])
            return Verdict.reject(reply.BAD_MAILBOX)

        d = self.start((Recording("a", [], {"rcpt": rcpt}), Recording("b", [], {"rcpt": lambda: None})))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<y@mx.test>\r\n"), b"550 5.1.1 No such mailbox\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"\r\nbody\r\n.\r\n"), QUEUED)
        self.assertEqual(self.queued().count(b"X-First"), 1)

    def test_results_make_one_authentication_results_field_on_top(self) -> None:
        dkim = authres.DKIMAuthenticationResult(result="none")
        d = self.start((Recording("a", [], {"mail": Verdict.accept(["Received-SPF: pass"], [SPF_PASS])}),
                        Recording("b", [], {"rcpt": Verdict.accept(results=[dkim])})), authservId="auth.test")
        self.assertRegex(self.transaction(d), QUEUED)
        lines = self.queued().split(b"\r\n")
        self.assertEqual(lines[0], b"Authentication-Results: auth.test; spf=pass smtp.mailfrom=a@b.example; dkim=none")
        self.assertEqual(lines[1], b"Received-SPF: pass")
        self.assertTrue(lines[2].startswith(b"Received: "))
        self.assertEqual(self.queued().count(b"Authentication-Results"), 1)

    def test_authserv_id_defaults_to_the_host_name(self) -> None:
        d = self.start((Recording("a", [], {"mail": Verdict.accept(results=[SPF_PASS])}),))
        self.transaction(d)
        self.assertTrue(self.queued().startswith(b"Authentication-Results: mx.test; spf=pass"))

    def test_forged_authentication_results_are_removed(self) -> None:
        d = self.start((Recording("a", [], {"mail": Verdict.accept(results=[SPF_PASS])}),), authservId="auth.test")
        message = (b"Authentication-Results: AUTH.test (forged);\r\n dkim=pass header.d=bank.example\r\n"
                   b"Authentication-Results: auth.test.evil; spf=pass\r\n"
                   b"Authentication-Results: auth.test 1; dmarc=pass\r\n"
                   b"Subject: hi\r\n\r\nAuthentication-Results: auth.test; body text stays\r\n")
        self.assertRegex(self.transaction(d, message), QUEUED)
        queued = self.queued()
        self.assertEqual(queued.count(b"Authentication-Results: auth.test;"), 2)  # ours, and the body line
        self.assertNotIn(b"forged", queued)
        self.assertNotIn(b"dmarc=pass", queued)
        self.assertIn(b"Authentication-Results: auth.test.evil; spf=pass\r\nSubject: hi\r\n\r\n", queued)

    def test_forgedAuthenticationResultsRemovedOnAListenerWithoutChecks(self) -> None:
        """RFC 8601 section 5 holds for every listener: a port without checks adds no
        field, yet a forged one must not reach local delivery as if this host wrote it."""
        d = self.start((), authservId="auth.test")
        message = (b"Authentication-Results: auth.test; dkim=pass header.d=bank.example\r\n"
                   b"Subject: hi\r\n"
                   b"Authentication-Results: other.test; spf=fail\r\n"
                   b"Authentication-Results: (c) auth.test;\r\n dmarc=pass\r\n"
                   b"\r\nAuthentication-Results: auth.test; body text stays\r\n")
        self.assertRegex(self.transaction(d, message), QUEUED)
        self.assertIsNone(d.server.transaction._spool)
        queued = self.queued()
        self.assertNotIn(b"bank.example", queued)
        self.assertNotIn(b"dmarc=pass", queued)
        self.assertIn(b"Subject: hi\r\nAuthentication-Results: other.test; spf=fail\r\n\r\n"
                      b"Authentication-Results: auth.test; body text stays\r\n", queued)

    def test_without_results_nothing_is_held_back(self) -> None:
        d = self.start((Recording("a", []),))
        self.transaction(d)
        self.assertIsNone(d.server.transaction._spool)
        self.assertTrue(self.queued().startswith(b"Received: "))


class MessageCheckTests(ChainTestCase):
    def test_message_checks_see_the_content_and_can_add_results(self) -> None:
        check = MessageCheck("m", [], {"data": Verdict.accept(["X-Checked: yes"], [SPF_PASS])})
        d = self.start((check,))
        self.assertRegex(self.transaction(d), QUEUED)
        self.assertTrue(check.seen.startswith(b"Received: from client.example"))
        self.assertTrue(check.seen.endswith(b"\r\n\r\nhello\r\n"))
        self.assertEqual(self.queued().split(b"\r\n")[:2],
                         [b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@b.example", b"X-Checked: yes"])

    def test_a_rejected_message_is_not_queued_and_the_session_goes_on(self) -> None:
        refusal = Verdict.reject(reply.Reply(550, "5.7.1", "Message refused"), "looks like spam")
        d = self.start((MessageCheck("m", [], {"data": refusal}),))
        self.assertEqual(self.transaction(d), b"550 5.7.1 Message refused\r\n")
        self.assertEqual(self.queue.messages, {})
        self.assertEqual(self.queue.aborted, 1)
        d.listener.phases.messagePolicies[0].answers.clear()  # type: ignore[attr-defined]
        self.assertRegex(self.transaction(d), QUEUED)

    def test_a_failing_message_check_gives_451(self) -> None:
        d = self.start((MessageCheck("m", [], {"data": ValueError("broken")}),))
        self.assertEqual(self.transaction(d), b"451 4.3.0 Temporary local problem, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.queue.messages, {})

    def test_pipelined_commands_wait_for_a_slow_message_check(self) -> None:
        slow: defer.Deferred[None] = defer.Deferred()
        d = self.start((MessageCheck("m", [], {"data": lambda: slow}),))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        self.assertEqual(d.send(b"\r\nhi\r\n.\r\nNOOP\r\n"), b"")
        slow.callback(None)
        replies = d.read().split(b"\r\n")
        self.assertRegex(replies[0] + b"\r\n", QUEUED)
        self.assertEqual(replies[1], b"250 2.0.0 OK")

    def test_client_gone_during_the_check_queues_nothing(self) -> None:
        slow: defer.Deferred[None] = defer.Deferred()
        d = self.start((MessageCheck("m", [], {"data": lambda: slow}),))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n\r\nhi\r\n.\r\n")
        d.server.connectionLost(None)
        slow.callback(None)
        self.assertEqual(self.queue.messages, {})

    def test_a_large_message_goes_through_the_spool_file(self) -> None:
        check = MessageCheck("m", [])
        d = self.start((check,), maxMessageSize=3_000_000)
        body = b"".join(b"line %06d of a long message\r\n" % i for i in range(60000))
        self.assertEqual(self.transaction(d, b"Subject: big\r\n\r\n" + body), b"")  # copied in turns
        d.clock.advance(0)
        self.assertRegex(d.read(), QUEUED)
        self.assertTrue(self.queued().endswith(body))
        self.assertEqual(check.seen, self.queued())


class ModifierTests(ChainTestCase):
    def test_modifiers_add_fields_on_top_and_see_the_results(self) -> None:
        first, second = Stamp("X-First: 1"), Stamp("X-Second: 2")
        d = self.start((Recording("a", [], {"mail": Verdict.accept(results=[SPF_PASS])}),), (first, second))
        self.assertRegex(self.transaction(d), QUEUED)
        lines = self.queued().split(b"\r\n")
        self.assertEqual(lines[:3], [b"X-Second: 2", b"X-First: 1",
                                     b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@b.example"])
        self.assertTrue(first.shown.startswith(b"Authentication-Results: mx.test;"))
        self.assertTrue(second.shown.startswith(b"X-First: 1\r\nAuthentication-Results"))

    def test_modifiers_do_not_see_forged_results(self) -> None:
        stamp = Stamp("X-Signed: 1")
        d = self.start((), (stamp,))
        self.transaction(d, b"Authentication-Results: mx.test; dkim=pass\r\n\r\nhi\r\n")
        self.assertNotIn(b"dkim=pass", stamp.shown)
        self.assertNotIn(b"dkim=pass", self.queued())


class ForgeryTests(SynchronousTestCase):
    def test_forms_of_our_authserv_id(self) -> None:
        from jsmail.policy.authresults import claimsAuthservId

        for field in (b"Authentication-Results: mx.test; dkim=pass",
                      b'Authentication-Results: "mx.test"; dkim=pass',
                      b"Authentication-Results: (a (b) c) MX.test 1; dkim=pass",
                      b"Authentication-Results : mx.test; dkim=pass",
                      b"authentication-results:\r\n mx.test;\r\n dkim=pass"):
            self.assertTrue(claimsAuthservId(field, "mx.test"), field)
        for field in (b"Authentication-Results: mx.test.evil; dkim=pass", b"X-Authentication-Results: mx.test; a=b",
                      b"Authentication-Results: other.test; x=(mx.test)"):
            self.assertFalse(claimsAuthservId(field, "mx.test"), field)

    def test_a_header_folded_many_times_is_kept_whole(self) -> None:
        from jsmail.headers import fields

        folded = b"X-Long: a" + b"\r\n b" * 50000
        self.assertEqual(fields(folded + b"\r\nSubject: s\r\n"), [folded, b"Subject: s"])


@implementer(IMessagePolicy)
class _MessageOnly:
    """A check of the whole message and nothing else."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def checkMessage(self, session: object, content: object) -> None:
        self.log.append("message")


class PhaseRunnerTests(SynchronousTestCase):
    """The runner on its own: which checks a phase runs, when it decides, what it keeps."""

    def setUp(self) -> None:
        self.session = Session("192.0.2.1")
        self.added = Additions()

    def phase(self, runner: PhaseRunner, phase: str, *args: Any) -> Any:
        return runner.run(phase, self.session, self.added, lambda: "accepted", *args)

    def test_checks_are_picked_by_interface(self) -> None:
        log: list[str] = []
        runner = PhaseRunner([Recording("a", log), _MessageOnly(log), object()])
        self.assertEqual(self.phase(runner, "checkSender", "a@b.example", {}), "accepted")
        self.assertEqual(self.phase(runner, "checkMessage", b"content"), "accepted")
        self.assertEqual(log, ["a:mail", "message"])

    def test_an_answer_at_once_decides_at_once(self) -> None:
        log: list[str] = []
        refusal = Verdict.reject(reply.RELAY_DENIED, "listed")
        runner = PhaseRunner([Recording("a", log, {"rcpt": refusal}), Recording("b", log)])
        error = self.assertRaises(SMTPReplyError, self.phase, runner, "checkRecipient", "x@mx.test", {})
        self.assertEqual(error.reply, reply.RELAY_DENIED)
        self.assertEqual(log, ["a:rcpt"])

    def test_a_deferred_makes_the_reply_wait(self) -> None:
        log: list[str] = []
        pending: defer.Deferred[Verdict] = defer.Deferred()
        runner = PhaseRunner([Recording("a", log, {"mail": lambda: pending}), Recording("b", log)])
        result = self.phase(runner, "checkSender", "a@b.example", {})
        self.assertIsInstance(result, defer.Deferred)
        self.assertEqual(log, ["a:mail"], "later checks wait for the slow one")
        self.assertNoResult(result)
        pending.callback(Verdict.accept(["X-Slow: 1"]))
        self.assertEqual(self.successResultOf(result), "accepted")
        self.assertEqual(log, ["a:mail", "b:mail"])
        self.assertEqual([v.headers for v in self.added.inOrder()], [("X-Slow: 1",)])

    def test_a_refused_phase_keeps_nothing(self) -> None:
        runner = PhaseRunner([Recording("a", [], {"rcpt": Verdict.accept(["X-A: 1"])}),
                              Recording("b", [], {"rcpt": Verdict.reject(reply.RELAY_DENIED)})])
        self.assertRaises(SMTPReplyError, self.phase, runner, "checkRecipient", "x@mx.test", {})
        self.assertEqual(self.added.inOrder(), [])


class CheckLineTests(SynchronousTestCase):
    """Which answers get a ``check`` line in the operator log: by default what says
    something (a refusal; an accept with a reason or with something to add), with
    ``logAccepts`` every one; every answer is counted in the metrics either way."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.counted: list[tuple[str, str]] = []
        previous = metrics.install(_Counting(self.counted))
        self.addCleanup(metrics.install, previous)
        self.session = Session("192.0.2.1", sessionId="s1")

    def lines(self) -> list[tuple[str, str, str, str]]:
        return [(e["phase"], e["check"], e["verdict"], e["reason"]) for e in self.events
                if e.get("log_namespace") == "jsmail.maillog" and e.get("event") == "check"]

    def runAll(self, runner: PhaseRunner) -> None:
        for phase, args in (("checkConnect", ()), ("checkHelo", ("client.example",)),
                            ("checkSender", ("a@b.example", {})), ("checkRecipient", ("x@mx.test", {}))):
            try:
                runner.run(phase, self.session, Additions(), lambda: None, *args)
            except SMTPReplyError:
                pass

    def checks(self) -> list[object]:
        return [Recording("a", [], {"helo": Verdict(reason="trusted network"), "mail": Verdict.accept(["X-A: 1"]),
                                    "rcpt": Verdict.reject(reply.RELAY_DENIED, "not ours")}),
                Recording("b", [], {"connect": SMTPReplyError(reply.RELAY_DENIED, "raised")})]

    def test_a_bare_accept_has_no_line(self) -> None:
        """Two checks that let a whole session by say nothing in the log: the lines
        that were most of it, per message, and a sixth of smtpd's CPU."""
        self.runAll(PhaseRunner([Recording("a", []), Recording("b", [])]))
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.counted, [("Recording", "accept")] * 8)

    def test_refusals_and_accepts_that_say_something_have_lines(self) -> None:
        self.runAll(PhaseRunner(self.checks()))
        self.assertEqual(self.lines(), [("connect", "Recording", "reject", "raised"),
                                        ("helo", "Recording", "accept", "trusted network"),
                                        ("mail", "Recording", "accept", ""),
                                        ("rcpt", "Recording", "reject", "not ours")])
        self.assertEqual(self.counted, [("Recording", "accept"), ("Recording", "reject"),
                                        ("Recording", "accept"), ("Recording", "accept"), ("Recording", "accept"),
                                        ("Recording", "accept"), ("Recording", "reject")])

    def test_every_answer_has_a_line_when_asked(self) -> None:
        """``[log] checks = "all"``: the accepts too, for following a policy by eye."""
        self.runAll(PhaseRunner(self.checks(), logAccepts=True))
        self.assertEqual([line[:3] for line in self.lines()], [
            ("connect", "Recording", "accept"), ("connect", "Recording", "reject"),
            ("helo", "Recording", "accept"), ("helo", "Recording", "accept"),
            ("mail", "Recording", "accept"), ("mail", "Recording", "accept"),
            ("rcpt", "Recording", "reject")])

    def test_the_setting(self) -> None:
        self.assertFalse(loadConfig().smtp.logAccepts)
        self.assertTrue(loadConfig(overrides={"log.checks": "all"}).smtp.logAccepts)
        error = self.assertRaises(ConfigError, loadConfig, overrides={"log.checks": "accepts"})
        self.assertEqual(str(error), "command line: log.checks: must be one of refusals, all; got 'accepts'")


class _Counting:
    """A metrics recorder that keeps the verdicts it is told of."""

    def __init__(self, counted: list[tuple[str, str]]) -> None:
        self.counted = counted

    def reply(self, command: str, code: int, enhanced: str) -> None:
        pass

    def verdict(self, check: str, verdict: str) -> None:
        self.counted.append((check, verdict))

    def commit(self, seconds: float) -> None:
        pass

    def dns(self, seconds: float) -> None:
        pass


class AdditionsTests(SynchronousTestCase):
    def test_phase_order_helo_replaced_transaction_forgotten(self) -> None:
        added = Additions()
        mail, rcpt1, rcpt2 = Verdict.accept(["X-Mail: 1"]), Verdict.accept(["X-R: 1"]), Verdict.accept(["X-R: 2"])
        conn, helo1, helo2 = Verdict.accept(["X-C: 1"]), Verdict.accept(["X-H: 1"]), Verdict.accept(["X-H: 2"])
        added.keep("checkRecipient", [rcpt1])
        added.keep("checkSender", [mail])
        added.keep("checkRecipient", [rcpt2])
        added.keep("checkHelo", [helo1])
        added.keep("checkConnect", [conn])
        added.keep("checkHelo", [helo2])
        self.assertEqual(added.inOrder(), [conn, helo2, mail, rcpt1, rcpt2])
        added.forgetTransaction()
        self.assertEqual(added.inOrder(), [conn, helo2])

"""Program hooks (jsmail.policy.programs): real /bin/sh programs as recipient checks and content
filters, their exit codes, inputs, environment, time-out and added header fields."""

from __future__ import annotations

import os
import signal
import stat
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from jsmail.address import Address, parsePath
from jsmail.auth import MailUser
from jsmail.envelope import Recipient
from jsmail.policy import programs as hooks
from jsmail.policy.plugin import PolicyContext
from jsmail.policy.verdict import Verdict
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.assembly import Spool
from jsmail.smtp.server import ServerSettings, Session
from jsmail.testing import Dialog

QUEUED = rb"^250 2\.0\.0 Queued as [0-9A-F]{21}\r\n$"
TEMPORARY = b"451 4.3.0 Temporary local problem, try again later\r\n"


def inThread(f: Any, *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(f, *args)


def wire(verdict: Any) -> bytes:
    """The reply a client would see for a refusing verdict."""
    return b"".join(verdict.refusal.lines())


class HookTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def script(self, body: str, name: str = "hook") -> str:
        """An executable /bin/sh script; its path is the command."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, stat.S_IRWXU)
        return path

    def written(self, name: str) -> bytes:
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.read()

    def session(self, **kw: Any) -> Session:
        kw.setdefault("clientAddress", "192.0.2.1")
        kw.setdefault("helo", "client.example")
        kw.setdefault("sender", Address("a", "b.example"))
        return Session(**kw)

    def context(self) -> PolicyContext:
        return PolicyContext(reactor, None, inThread, "mx.test", "mx.test", self.dir)


def rcpt(path: str) -> Address:
    return parsePath(path, allowNull=False, utf8=False, postmasterDomain="mx.test")[0]


class RecipientCheckTests(HookTestCase):
    def check(self, command: str, session: Session | None = None, address: str = "<x@mx.test>",
              timeout: float = 10.0) -> defer.Deferred[Any]:
        policy = hooks.RecipientCheck(hooks.Program(reactor, command, timeout))
        return policy.checkRecipient(session or self.session(), rcpt(address), {})

    @defer.inlineCallbacks
    def test_descriptor_3_has_helo_sender_and_recipient(self) -> None:
        verdict = yield self.check(self.script(f'cat <&3 > "{self.dir}/input"\n'))
        self.assertIsNone(verdict)
        self.assertEqual(self.written("input"), b"client.example\0a@b.example\0x@mx.test\0\0")

    @defer.inlineCallbacks
    def test_null_sender_and_no_helo_are_empty_fields(self) -> None:
        session = self.session(helo=None, sender=Address("", ""))
        yield self.check(self.script(f'cat <&3 > "{self.dir}/input"\n'), session, "<Postmaster>")
        self.assertEqual(self.written("input"), b"\0\0postmaster@mx.test\0\0")

    def childScript(self, body: str) -> str:
        """A script that starts a child, which the test ends afterwards (the hook only
        kills the program it ran)."""
        child = os.path.join(self.dir, "child")

        def endChild() -> None:
            try:
                with open(child) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass  # the program was killed before it started its child, or the child is gone

        self.addCleanup(endChild)
        return self.script(body.format(child=child))

    @defer.inlineCallbacks
    def test_exit_0_accepts(self) -> None:
        self.assertIsNone((yield self.check("exit 0")))

    @defer.inlineCallbacks
    def test_exit_100_rejects_with_the_first_line_of_standard_error(self) -> None:
        verdict = yield self.check(self.script('echo "No such user: $SMTPHELO" >&2\necho second line >&2\nexit 100\n'))
        self.assertEqual(wire(verdict), b"550 5.7.1 No such user: client.example\r\n")
        self.assertIn("exited 100", verdict.reason)

    @defer.inlineCallbacks
    def test_exit_100_without_text(self) -> None:
        verdict = yield self.check("exit 100")
        self.assertEqual(wire(verdict), b"550 5.7.1 Refused by local policy\r\n")

    @defer.inlineCallbacks
    def test_exit_111_tempfails(self) -> None:
        verdict = yield self.check("echo 'Mailbox locked, try later' >&2; exit 111")
        self.assertEqual(wire(verdict), b"451 4.3.0 Mailbox locked, try later\r\n")
        verdict = yield self.check("exit 111")
        self.assertEqual(wire(verdict), TEMPORARY)

    @defer.inlineCallbacks
    def test_any_other_exit_tempfails_and_its_text_goes_to_the_log_only(self) -> None:
        verdict = yield self.check("echo 'Traceback (most recent call last):' >&2; exit 1")
        self.assertEqual(wire(verdict), TEMPORARY)
        self.assertEqual(verdict.reason, "echo 'Traceback (most recent call last):' >&2; exit 1 exited 1: "
                                         "Traceback (most recent call last):")

    @defer.inlineCallbacks
    def test_reply_text_is_printable_ascii_and_fits_a_reply_line(self) -> None:
        verdict = yield self.check("printf '\\033[1mNo\\tway \\303\\251 %0600d\\n' 0 >&2; exit 100")
        self.assertEqual(wire(verdict), b"550 5.7.1 ?[1mNo?way ? " + b"0" * 387 + b"\r\n")

    @defer.inlineCallbacks
    def test_a_program_killed_by_a_signal_tempfails(self) -> None:
        verdict = yield self.check("kill -TERM $$")
        self.assertEqual(wire(verdict), TEMPORARY)

    @defer.inlineCallbacks
    def test_a_slow_program_is_killed_after_its_timeout(self) -> None:
        verdict = yield self.check("exec sleep 60", timeout=0.5)
        self.assertEqual(wire(verdict), TEMPORARY)
        self.assertIn("killed after its time-out", verdict.reason)

    test_a_slow_program_is_killed_after_its_timeout.timeout = 20  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_a_slow_child_of_the_program_does_not_hold_up_the_answer(self) -> None:
        # The shell forks sleep, which keeps the output pipes open after the shell dies.
        command = self.childScript('echo working >&2\nsleep 60 &\necho $! > "{child}"\nwait\nexit 0\n')
        verdict = yield self.check(command, timeout=0.5)
        self.assertEqual(wire(verdict), TEMPORARY)
        self.assertIn("killed after its time-out", verdict.reason)

    test_a_slow_child_of_the_program_does_not_hold_up_the_answer.timeout = 20  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_a_program_that_exits_but_leaves_a_child_behind_is_stopped_at_its_timeout(self) -> None:
        verdict = yield self.check(self.childScript('sleep 60 &\necho $! > "{child}"\nexit 0\n'), timeout=0.5)
        self.assertEqual(wire(verdict), TEMPORARY)

    test_a_program_that_exits_but_leaves_a_child_behind_is_stopped_at_its_timeout.timeout = 20  # type: ignore

    @defer.inlineCallbacks
    def test_a_lot_of_standard_error_does_not_stall_the_program(self) -> None:
        verdict = yield self.check("yes 'Go away' | head -n 100000 >&2; exit 100")
        self.assertEqual(wire(verdict), b"550 5.7.1 Go away\r\n")

    @defer.inlineCallbacks
    def test_environment(self) -> None:
        session = self.session(recipients=[Recipient("one@mx.test"), Recipient("two@mx.test")],
                               user=MailUser("alice"))
        command = self.script(f'for v in TCPREMOTEIP SMTPHELO SMTPSENDER SMTPRECIPIENTS SMTPAUTHUSER; do\n'
                              f'  eval "printf \'%s=[%s]\\n\' $v \\"\\$$v\\""\ndone > "{self.dir}/env"\n')
        yield self.check(command, session)
        self.assertEqual(self.written("env").decode(), "TCPREMOTEIP=[192.0.2.1]\nSMTPHELO=[client.example]\n"
                         "SMTPSENDER=[a@b.example]\nSMTPRECIPIENTS=[one@mx.test\ntwo@mx.test]\nSMTPAUTHUSER=[alice]\n")

    @defer.inlineCallbacks
    def test_environment_of_an_anonymous_session_with_the_null_sender(self) -> None:
        session = self.session(sender=Address("", ""))
        command = self.script(f'printf "%s|%s|%s" "$SMTPSENDER" "$SMTPRECIPIENTS" "${{SMTPAUTHUSER-unset}}" '
                              f'> "{self.dir}/env"\n')
        yield self.check(command, session)
        self.assertEqual(self.written("env"), b"||")

    @defer.inlineCallbacks
    def test_a_command_that_is_not_there_tempfails(self) -> None:
        missing = os.path.join(self.dir, "missing")
        verdict = yield self.check(missing)
        self.assertEqual(wire(verdict), TEMPORARY)  # the shell's message, naming local paths, is not shown
        self.assertIn("exited 127", verdict.reason)
        self.assertIn("not found", verdict.reason)


class ContentFilterTests(HookTestCase):
    @defer.inlineCallbacks
    def filter(self, command: str, message: bytes, session: Session | None = None) -> Any:
        spool = Spool(inThread, memoryLimit=64 * 1024)
        self.addCleanup(spool.close)
        spool.write(message)
        policy = hooks.ContentFilter(hooks.Program(reactor, command, 20.0))
        verdict = yield policy.checkMessage(session or self.session(), spool)
        return verdict

    @defer.inlineCallbacks
    def test_the_filter_reads_the_message_on_standard_input(self) -> None:
        message = b"Received: from x\r\nSubject: hi\r\n\r\nhello\r\n\x00\xff binary stays\r\n"
        verdict = yield self.filter(f'cat > "{self.dir}/seen"', message)
        self.assertIsNone(verdict)
        self.assertEqual(self.written("seen"), message)

    @defer.inlineCallbacks
    def test_a_message_larger_than_a_pipe_buffer(self) -> None:
        message = b"Subject: big\r\n\r\n" + b"".join(b"line %07d of a large message\r\n" % i for i in range(35000))
        self.assertGreater(len(message), 1024 * 1024)
        verdict = yield self.filter(f'cat > "{self.dir}/seen"', message)
        self.assertIsNone(verdict)
        self.assertEqual(self.written("seen"), message)

    @defer.inlineCallbacks
    def test_a_filter_that_does_not_read_its_input_is_still_heard(self) -> None:
        message = b"Subject: big\r\n\r\n" + b"x" * 2_000_000 + b"\r\n"
        verdict = yield self.filter("echo 'X-Filter: skipped'; exit 0", message)
        self.assertEqual(verdict, Verdict.accept(["X-Filter: skipped"]))

    @defer.inlineCallbacks
    def test_standard_output_is_header_fields_to_add(self) -> None:
        command = self.script("cat > /dev/null\n"
                              "printf 'X-Spam-Score: 5.1\\n'\n"
                              "printf 'X-Spam-Report: first line\\n\\tsecond line\\n  third line\\n'\n"
                              "printf 'not a field\\n'\n"
                              "printf 'X-Last: 1\\r\\n'\n")
        verdict = yield self.filter(command, b"Subject: s\r\n\r\nbody\r\n")
        self.assertEqual(verdict, Verdict.accept(["X-Spam-Score: 5.1",
                                                  "X-Spam-Report: first line\r\n\tsecond line\r\n  third line",
                                                  "X-Last: 1"]))

    @defer.inlineCallbacks
    def test_exit_100_rejects_the_message(self) -> None:
        verdict = yield self.filter("cat >/dev/null; echo 'X-Ignored: 1'; echo 'Virus found: Eicar' >&2; exit 100",
                                    b"Subject: s\r\n\r\nX5O!P%@AP\r\n")
        self.assertEqual(wire(verdict), b"550 5.7.1 Virus found: Eicar\r\n")
        self.assertEqual(verdict.headers, ())

    @defer.inlineCallbacks
    def test_exit_111_tempfails_the_message(self) -> None:
        verdict = yield self.filter("cat >/dev/null; exit 111", b"Subject: s\r\n\r\nbody\r\n")
        self.assertEqual(wire(verdict), TEMPORARY)

    @defer.inlineCallbacks
    def test_environment_names_every_recipient(self) -> None:
        session = self.session(recipients=[Recipient("one@mx.test"), Recipient("two@mx.test")])
        yield self.filter(f'cat >/dev/null; printf "%s" "$SMTPRECIPIENTS" > "{self.dir}/env"', b"\r\nbody\r\n",
                          session)
        self.assertEqual(self.written("env"), b"one@mx.test\ntwo@mx.test")


class DialogTests(HookTestCase):
    """What a client sees through smtpd.  Dialog runs smtpd on a fake clock while the
    programs run in the real reactor, so each reply is waited for (boundedly)."""

    def start(self, policy: Any) -> Dialog:
        self.queue = MemoryQueue()
        d = Dialog(ServerSettings(hostname="mx.test", maxMessageSize=5_000_000), self.queue, policies=[policy])
        d.read()
        d.send(b"EHLO client.example\r\n")
        return d

    @defer.inlineCallbacks
    def reply(self, d: Dialog, data: bytes) -> Any:
        d.server.dataReceived(data)
        for _ in range(2000):  # at most 20 s
            d.clock.advance(0)  # smtpd's turns copying a large message into the queue
            out = d.read()
            if out:
                return out
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"no reply to {data[:40]!r}")

    def queued(self) -> bytes:
        [(_, data)] = self.queue.messages.values()
        return data

    @defer.inlineCallbacks
    def test_recipient_check_in_a_session(self) -> None:
        command = self.script('case "$(tr "\\0" " " <&3)" in\n'
                              '  *" nobody@mx.test  ") echo "Unknown user" >&2; exit 100;;\n'
                              '  *" busy@mx.test  ") exit 111;;\n'
                              'esac\nexit 0\n')
        d = self.start(hooks.buildRecipientCheck({"command": command, "timeout": 10}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual((yield self.reply(d, b"RCPT TO:<nobody@mx.test>\r\n")), b"550 5.7.1 Unknown user\r\n")
        self.assertEqual((yield self.reply(d, b"RCPT TO:<busy@mx.test>\r\n")), TEMPORARY)
        self.assertEqual((yield self.reply(d, b"RCPT TO:<joe@mx.test>\r\n")), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["joe@mx.test"])

    @defer.inlineCallbacks
    def test_pipelined_recipients_are_answered_in_order(self) -> None:
        command = self.script('tr "\\0" "\\n" <&3 | grep -q "^ok" && exit 0\nexit 100\n')
        d = self.start(hooks.buildRecipientCheck({"command": command}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        d.server.dataReceived(b"RCPT TO:<no1@mx.test>\r\nRCPT TO:<ok1@mx.test>\r\nRCPT TO:<no2@mx.test>\r\n")
        replies = b""
        for _ in range(3):
            replies += yield self.reply(d, b"")
            if replies.count(b"\r\n") == 3:
                break
        self.assertEqual(replies, b"550 5.7.1 Refused by local policy\r\n250 2.1.5 Recipient OK\r\n"
                                  b"550 5.7.1 Refused by local policy\r\n")

    @defer.inlineCallbacks
    def test_content_filter_fields_go_above_the_queued_message(self) -> None:
        command = self.script(f'cat > "{self.dir}/seen"\n'
                              'printf "X-Filtered: yes\\nX-Report: score 1.0\\n\\tno rules matched\\n"\n')
        d = self.start(hooks.buildContentFilter({"command": command}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        message = b"Subject: hi\r\n\r\nhello\r\n"
        self.assertRegex((yield self.reply(d, message + b".\r\n")), QUEUED)
        added = b"X-Filtered: yes\r\nX-Report: score 1.0\r\n\tno rules matched\r\n"
        queued = self.queued()
        self.assertTrue(queued.startswith(added + b"Received: from client.example"), queued[:200])
        self.assertTrue(queued.endswith(b"\r\n" + message))
        self.assertEqual(self.written("seen"), queued[len(added):])  # what the filter saw: all but its own fields

    @defer.inlineCallbacks
    def test_content_filter_sees_a_large_message_whole(self) -> None:
        command = self.script(f'cat > "{self.dir}/seen"\necho "X-Size: $(wc -c < "{self.dir}/seen")"\n')
        d = self.start(hooks.buildContentFilter({"command": command}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        body = b"".join(b"line %07d of a large message\r\n" % i for i in range(40000))
        self.assertRegex((yield self.reply(d, b"Subject: big\r\n\r\n" + body + b".\r\n")), QUEUED)
        queued = self.queued()
        seen = self.written("seen")
        self.assertEqual(queued, b"X-Size: %d\r\n" % len(seen) + seen)
        self.assertTrue(seen.endswith(b"\r\n\r\n" + body))

    @defer.inlineCallbacks
    def test_content_filter_rejection_queues_nothing(self) -> None:
        command = "cat > /dev/null; echo 'Message looks like spam' >&2; exit 100"
        d = self.start(hooks.buildContentFilter({"command": command}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        self.assertEqual((yield self.reply(d, b"Subject: buy\r\n\r\nnow\r\n.\r\n")),
                         b"550 5.7.1 Message looks like spam\r\n")
        self.assertEqual(self.queue.messages, {})
        self.assertEqual(d.send(b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    @defer.inlineCallbacks
    def test_content_filter_timeout_tempfails_the_message(self) -> None:
        d = self.start(hooks.buildContentFilter({"command": "exec sleep 60", "timeout": 0.5}, self.context()))
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
        self.assertEqual((yield self.reply(d, b"Subject: s\r\n\r\nbody\r\n.\r\n")), TEMPORARY)
        self.assertEqual(self.queue.messages, {})


class BuildTests(unittest.SynchronousTestCase):
    context = PolicyContext(reactor, None, inThread, "mx.test", "mx.test", ".")

    def test_options(self) -> None:
        check = hooks.buildRecipientCheck({"command": "/usr/local/bin/rcptcheck", "timeout": 5}, self.context)
        self.assertEqual((check.program.command, check.program.timeout), ("/usr/local/bin/rcptcheck", 5))
        content = hooks.buildContentFilter({"command": "spamc -c"}, self.context)
        self.assertEqual((content.program.command, content.program.timeout), ("spamc -c", 30.0))

    def test_bad_options_are_named(self) -> None:
        for build in (hooks.buildRecipientCheck, hooks.buildContentFilter):
            for options, named in [({}, "command"), ({"command": ""}, "command"), ({"command": ["a"]}, "command"),
                                   ({"command": "x", "timeout": "9"}, "timeout"),
                                   ({"command": "x", "program": "y"}, "'program'")]:
                e = self.assertRaises(ValueError, build, options, self.context)
                self.assertIn(named, str(e), options)

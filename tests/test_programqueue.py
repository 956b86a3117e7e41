"""The qmail-queue back end: a real program behind smtpd, each exit code a reply."""

from __future__ import annotations

import os
import sys
import textwrap

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail import reply
from jsmail.qmail.queuesink import ProgramQueue, replyFor
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog


class ReplyTableTests(SynchronousTestCase):
    def test_codes(self) -> None:
        self.assertIsNone(replyFor(0))
        self.assertEqual(str(replyFor(11)), "554 5.1.3 envelope address too long for qq")
        self.assertEqual(str(replyFor(31)), "554 5.3.0 mail server permanently rejected message")
        self.assertEqual(str(replyFor(20)), "554 5.3.0 qq permanent problem")
        self.assertEqual(str(replyFor(53)), "451 4.3.0 qq write error or disk full")
        self.assertEqual(str(replyFor(77)), "451 4.3.0 qq temporary problem")
        self.assertEqual(str(replyFor(82, b"Dspam detected\n")), "554 5.3.0 spam detected")
        self.assertEqual(str(replyFor(82, b"Zscanner busy")), "451 4.3.0 scanner busy")
        self.assertEqual(str(replyFor(82, b"")), "451 4.3.0 qq temporary problem")

    def test_every_exit_code_has_a_reply_from_the_table(self) -> None:
        """So the test that basic and enhanced codes agree covers them all."""
        for code in range(1, 256):
            self.assertIn(replyFor(code), reply.ALL, code)


class ProgramQueueTests(TestCase):
    timeout = 30

    def program(self, body: str) -> str:
        """A qmail-queue-compatible program: it saves what it got, then runs ``body``."""
        self.saved = self.mktemp()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"#!{sys.executable}\nimport os, sys\n"
                    f"message = sys.stdin.buffer.read()\nenvelope = os.read(1, 65536)\n"
                    f"open({self.saved!r}, 'wb').write(message + b'|' + envelope)\n" + textwrap.dedent(body))
        os.chmod(path, 0o755)
        return path

    @defer.inlineCallbacks
    def dialog(self, body: str):  # type: ignore[no-untyped-def]
        d = Dialog(ServerSettings(hostname="mx.test"), ProgramQueue(self.program(body), reactor))
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n")
        d.send(b"Subject: s\r\n\r\nhi\r\n.\r\n")
        for _ in range(200):
            out = d.read()
            if out:
                return out
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("no reply from the queue program")

    @defer.inlineCallbacks
    def test_queued(self):  # type: ignore[no-untyped-def]
        out = yield self.dialog("sys.exit(0)")
        self.assertRegex(out, rb"^250 2\.0\.0 Queued as \w+\r\n$")
        with open(self.saved, "rb") as f:
            message, envelope = f.read().split(b"|")
        self.assertTrue(message.startswith(b"Received: from c ") and message.endswith(b"Subject: s\r\n\r\nhi\r\n"))
        self.assertEqual(envelope, b"Fa@b.example\x00Tx@localhost\x00\x00")

    @defer.inlineCallbacks
    def test_permanent_refusal(self):  # type: ignore[no-untyped-def]
        self.assertEqual((yield self.dialog("sys.exit(31)")), b"554 5.3.0 mail server permanently rejected message\r\n")

    @defer.inlineCallbacks
    def test_temporary_failure(self):  # type: ignore[no-untyped-def]
        self.assertEqual((yield self.dialog("sys.exit(71)")), b"451 4.3.0 mail server temporarily rejected message\r\n")

    @defer.inlineCallbacks
    def test_custom_error(self):  # type: ignore[no-untyped-def]
        out = yield self.dialog("os.write(6, b'Dvirus found: EICAR\\n')\nsys.exit(82)")
        self.assertEqual(out, b"554 5.3.0 virus found: EICAR\r\n")

"""jsmail-sendmail: the sendmail command line into jsmail's queue."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from jsmail.queue.admin import listQueue, openEntry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SendmailTests(TestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    def sendmail(self, *arguments: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jsmail.qmail.sendmail", "--data", self.data, *arguments],
                              input=stdin, capture_output=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "USER": "alice"})

    def queued(self) -> list:
        entries = listQueue(os.path.join(self.data, "queue"))
        return [(e, openEntry(os.path.join(self.data, "queue"), e.queueId).read()) for e in entries]

    def test_t_takes_recipients_from_headers_and_drops_bcc(self) -> None:
        result = self.sendmail("-t", "-f", "me@example.org", stdin=(
            b"To: Bob <bob@example.org>, carol@example.net\nCc: dave@localhost\nBcc: eve@localhost\n"
            b"Subject: hi\n\nbody\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        [(entry, data)] = self.queued()
        self.assertEqual(entry.envelope.sender, "me@example.org")
        self.assertEqual([r.address for r in entry.envelope.recipients],
                         ["bob@example.org", "carol@example.net", "dave@localhost", "eve@localhost"])
        self.assertNotIn(b"eve@localhost", data)
        self.assertRegex(data, rb"\r\nDate: .+\r\nMessage-ID: <\d{14}\." + entry.queueId.encode()
                         + rb"\.jsmail@.+>\r\nFrom: me@example.org\r\n\r\nbody\r\n$")

    def test_arguments_and_full_name_and_dot(self) -> None:
        result = self.sendmail("-F", "Alice Example", "x@localhost", stdin=b"Subject: s\n\nline\n.\nnot sent\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        [(entry, data)] = self.queued()
        self.assertEqual([r.address for r in entry.envelope.recipients], ["x@localhost"])
        self.assertTrue(entry.envelope.sender.startswith("alice@"))
        self.assertIn(b"From: Alice Example <alice@", data)
        self.assertTrue(data.endswith(b"\r\n\r\nline\r\n"), data)

    def test_oi_keeps_a_dot_line(self) -> None:
        result = self.sendmail("-oi", "x@localhost", stdin=b"Subject: s\n\n.\nafter\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        [(_, data)] = self.queued()
        self.assertTrue(data.endswith(b"\r\n\r\n.\r\nafter\r\n"), data)

    def test_no_recipients_is_a_usage_error(self) -> None:
        result = self.sendmail(stdin=b"Subject: s\n\nx\n")
        self.assertEqual(result.returncode, 64)
        self.assertIn(b"no recipients", result.stderr)

    def test_bs_speaks_smtp_on_stdio(self) -> None:
        result = self.sendmail("-bs", stdin=(
            b"EHLO local\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        codes = [line[:3] for line in result.stdout.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(codes, [b"220", b"250", b"250", b"250", b"354", b"250", b"221"])
        [(entry, data)] = self.queued()
        self.assertEqual([r.address for r in entry.envelope.recipients], ["b@example.org"])

    def test_bp_lists_the_queue(self) -> None:
        self.sendmail("x@localhost", stdin=b"Subject: s\n\nx\n")
        result = self.sendmail("-bp", stdin=b"")
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"<x@localhost>", result.stdout)
        self.assertIn(b"-- 1 message(s) in the queue", result.stdout)

    def test_bs_is_a_local_submission(self) -> None:
        """Its mail gets the Date and Message-ID it lacks (no From: the session names
        no author), below smtpd's own Received field."""
        result = self.sendmail("-bs", stdin=(
            b"EHLO local\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            b"Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        [(entry, data)] = self.queued()
        self.assertRegex(data, rb"^Received: from local [^\r]*(?:\r\n\t[^\r]*)*\r\nSubject: bs\r\nDate: .+\r\n"
                               rb"Message-ID: <\d{14}\." + entry.queueId.encode() + rb"\.jsmail@.+>\r\n\r\nhi\r\n$")

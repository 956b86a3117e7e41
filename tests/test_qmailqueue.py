"""jsmail-queue speaks the qmail-queue interface: envelope on fd 1, qmail's exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from jsmail.queue.admin import listQueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class QmailQueueTests(TestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    def run_(self, message: bytes, envelope: bytes) -> int:
        """Run jsmail-queue with ``message`` on fd 0 and ``envelope`` on fd 1."""
        envelopeRead, envelopeWrite = os.pipe()
        os.write(envelopeWrite, envelope)
        os.close(envelopeWrite)
        try:
            result = subprocess.run([sys.executable, "-m", "jsmail.qmail.queueprogram", "--data", self.data],
                                    input=message, stdout=envelopeRead, stderr=subprocess.PIPE, timeout=30,
                                    env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
        finally:
            os.close(envelopeRead)
        self.assertEqual(result.stderr, b"", "qmail-queue prints no diagnostics")
        return result.returncode

    def queued(self) -> list:
        directory = os.path.join(self.data, "queue")
        return listQueue(directory) if os.path.isdir(directory) else []

    def test_queues_with_received_line_and_crlf(self) -> None:
        code = self.run_(b"Subject: hi\n\nline\r\nlast\n", b"Fa@example.org\x00Tx@localhost\x00Ty@example.net\x00\x00")
        self.assertEqual(code, 0)
        [entry] = self.queued()
        self.assertEqual((entry.envelope.sender, [r.address for r in entry.envelope.recipients]),
                         ("a@example.org", ["x@localhost", "y@example.net"]))
        with open(os.path.join(self.data, "queue", "active", entry.queueId), "rb") as f:
            f.readline()
            stored = f.read()
        self.assertRegex(stored, rb"^Received: \(jsmail-queue \d+ invoked by uid \d+\);\r\n\t.+\r\n"
                                 rb"Subject: hi\r\n\r\nline\r\nlast\r\n$")

    def test_null_sender(self) -> None:
        self.assertEqual(self.run_(b"x\n", b"F\x00Tx@localhost\x00\x00"), 0)
        self.assertEqual(self.queued()[0].envelope.sender, "")

    def test_envelope_without_final_nul(self) -> None:
        self.assertEqual(self.run_(b"x\n", b"Fa@example.org\x00Tx@localhost\x00"), 54)
        self.assertEqual(self.queued(), [])

    def test_envelope_format_error(self) -> None:
        self.assertEqual(self.run_(b"x\n", b"Xa@example.org\x00Tx@localhost\x00\x00"), 91)
        self.assertEqual(self.run_(b"x\n", b"Fa@example.org\x00Zx@localhost\x00\x00"), 91)
        self.assertEqual(self.queued(), [])

    def test_address_too_long(self) -> None:
        self.assertEqual(self.run_(b"x\n", b"Fa@example.org\x00T" + b"x" * 1003 + b"\x00\x00"), 11)
        self.assertEqual(self.queued(), [])

"""The funnel into the queue: it announces what it commits, and adds what each source
owes a message (a Received field for mail not from SMTP; Date, Message-ID and From
where a local submission lacks them) in one place."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from jsmail.envelope import Envelope, Recipient
from jsmail.queue.funnel import Funnel, Owed
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog

ARRIVAL = 1_780_000_000.0  # Sat, 28 May 2026 20:26:40 +0000
DATE = b"Date: Thu, 28 May 2026 20:26:40 +0000\r\n"
SUBMISSION = Owed(complete=True, hostname="mx.test")


class FunnelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.queue = MemoryQueue()
        self.announced: list[tuple[str, Envelope]] = []
        self.funnel = Funnel(self.queue, lambda queueId, envelope: self.announced.append((queueId, envelope)))
        self.envelope = Envelope("a@example.org", (Recipient("b@example.net"),), arrival=ARRIVAL)

    def queued(self, owed: Owed, *pieces: bytes) -> tuple[str, bytes]:
        """Send ``pieces`` through the funnel with ``owed``: the queue id and what was queued."""
        message = self.funnel.newMessage(self.envelope, owed)
        for piece in pieces:
            message.write(piece)
        queueId = self.successResultOf(message.commit())
        self.assertEqual(self.announced[-1], (queueId, self.envelope))
        data = self.queue.messages[queueId][1]
        self.assertEqual(message.size, len(data))
        return queueId, data

    def receivedField(self) -> bytes:
        return (f"Received: (jsmail-queue {os.getpid()} invoked by uid {os.getuid()});\r\n"
                "\tThu, 28 May 2026 20:26:40 +0000\r\n").encode()

    def test_nothing_owed_passes_everything_as_it_comes(self) -> None:
        data = b"Subject: s\r\n\r\nbody\r\n"
        self.assertEqual(self.queued(Owed(), data)[1], data)

    def test_received_for_mail_not_from_smtp(self) -> None:
        """qmail-queue's line (qmail-interfaces reference, section 3.3), on top."""
        _, data = self.queued(Owed(received=True), b"Subject: s\r\n\r\nbody\r\n")
        self.assertEqual(data, self.receivedField() + b"Subject: s\r\n\r\nbody\r\n")

    def test_date_and_message_id_added_at_the_end_of_the_header_section(self) -> None:
        queueId, data = self.queued(SUBMISSION, b"Subject: s\r\nTo: b@example.net\r\n\r\nDate: in the body\r\n")
        self.assertEqual(data, b"Subject: s\r\nTo: b@example.net\r\n" + DATE
                         + b"Message-ID: <20260528202640." + queueId.encode() + b".jsmail@mx.test>\r\n"
                         + b"\r\nDate: in the body\r\n")

    def test_fields_present_are_not_added_again(self) -> None:
        header = b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <x@y>\r\nFrom: me@example.org\r\n"
        owed = Owed(complete=True, hostname="mx.test", author="Someone <someone@example.org>")
        self.assertEqual(self.queued(owed, header + b"\r\nbody\r\n")[1], header + b"\r\nbody\r\n")

    def test_from_only_with_an_author(self) -> None:
        owed = Owed(received=True, complete=True, hostname="mx.test", author='"Alice Example" <alice@mx.test>')
        _, data = self.queued(owed, b"Subject: s\r\n\r\nbody\r\n")
        self.assertTrue(data.startswith(self.receivedField() + b"Subject: s\r\n" + DATE + b"Message-ID: <"), data)
        self.assertTrue(data.endswith(b'.jsmail@mx.test>\r\nFrom: "Alice Example" <alice@mx.test>\r\n\r\nbody\r\n'))

    def test_the_author_cannot_add_lines(self) -> None:
        _, data = self.queued(Owed(author="a@mx.test\r\nBcc: x@y"), b"Subject: s\r\n\r\nbody\r\n")
        self.assertEqual(data, b"Subject: s\r\nFrom: a@mx.test  Bcc: x@y\r\n\r\nbody\r\n")

    def test_any_piecing_gives_the_same_message(self) -> None:
        data = b"Subject: s\r\n folded\r\n\r\nbody\r\n"
        _, whole = self.queued(SUBMISSION, data)
        _, octets = self.queued(SUBMISSION, *[data[i:i + 1] for i in range(len(data))])
        self.assertEqual(re.sub(rb"\.[0-9A-F]{21}\.", b".", octets), re.sub(rb"\.[0-9A-F]{21}\.", b".", whole))
        self.assertIn(b"Subject: s\r\n folded\r\n" + DATE, octets)

    def test_a_message_that_is_all_header(self) -> None:
        _, data = self.queued(SUBMISSION, b"Subject: no body, no line end")
        self.assertTrue(data.startswith(b"Subject: no body, no line end\r\n" + DATE + b"Message-ID: <"), data)
        self.assertTrue(data.endswith(b"@mx.test>\r\n"), data)

    def test_a_message_without_header_fields(self) -> None:
        _, data = self.queued(SUBMISSION, b"\r\nbody\r\n")
        self.assertTrue(data.startswith(DATE + b"Message-ID: <") and data.endswith(b"@mx.test>\r\n\r\nbody\r\n"), data)

    def test_a_header_section_over_the_limit_is_left_as_it_is(self) -> None:
        """Fields past the limit are not seen, so none is added: a second Date or
        Message-ID would be worse than none."""
        data = b"X-Big: " + b"x" * 300_000 + b"\r\nSubject: s\r\n\r\nbody\r\n"
        self.assertEqual(self.queued(SUBMISSION, data[:100_000], data[100_000:])[1], data)

    def test_abort(self) -> None:
        message = self.funnel.newMessage(self.envelope, SUBMISSION)
        message.write(b"Subject: s\r\n")
        self.assertEqual(message.size, 12)  # held back, and counted
        message.abort()
        self.assertEqual((self.queue.messages, self.announced), ({}, []))

    def test_a_submission_listener_owes_date_and_message_id(self) -> None:
        """The gateway gives a submission listener ``funnel.owing(...)``: smtpd's own
        Received field stays on top, the owed fields go at the end of the header."""
        dialog = Dialog(ServerSettings(hostname="mx.test"), self.funnel.owing(SUBMISSION))
        dialog.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertTrue(dialog.send(b"Subject: s\r\n\r\nbody\r\n.\r\n").startswith(b"250 "))
        [(queueId, envelope)] = self.announced
        data = self.queue.messages[queueId][1]
        self.assertTrue(data.startswith(b"Received: from c.test "), data)
        self.assertRegex(data, rb"\r\nSubject: s\r\nDate: .+\r\nMessage-ID: <\d{14}\." + queueId.encode()
                         + rb"\.jsmail@mx\.test>\r\n\r\nbody\r\n$")

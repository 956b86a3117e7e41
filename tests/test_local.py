"""Local delivery into Maildirs on a real disk."""

from __future__ import annotations

import io
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery
from jsmail.local.maildir import copyAsLF


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(f, *args, **kwargs)


class CopyAsLFTests(TestCase):
    def test_crlf_split_across_chunks(self) -> None:
        """A CR LF straddling the copy's chunk boundary still becomes one LF."""
        data = b"x" * 65535 + b"\r\n" + b"tail\r\nbare\rcr\r\n"
        out = io.BytesIO()
        copyAsLF(io.BytesIO(data), out)
        self.assertEqual(out.getvalue(), b"x" * 65535 + b"\ntail\nbare\rcr\n")


class MaildirDeliveryTests(TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.agent = LocalDelivery(self.root, runNow, "mx.test")

    def deliver(self, *recipients: str, data: bytes = b"Subject: x\r\n\r\nbody\r\n"):  # type: ignore[no-untyped-def]
        envelope = Envelope("a@b.example", tuple(Recipient(r) for r in recipients))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(data))
        return self.successResultOf(self.agent.deliver(message, envelope.recipients))

    def test_delivers_with_return_path_and_delivered_to(self) -> None:
        [result] = self.deliver("Someone@localhost")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        maildir = os.path.join(self.root, "localhost", "someone")
        self.assertEqual(sorted(os.listdir(maildir)), ["cur", "new", "tmp"])
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])
        [name] = os.listdir(os.path.join(maildir, "new"))
        self.assertRegex(name, r"^\d+\.M\d+P\d+Q\d+\.mx\.test$")
        with open(os.path.join(maildir, "new", name), "rb") as f:
            self.assertEqual(f.read(), b"Return-Path: <a@b.example>\nDelivered-To: Someone@localhost\nSubject: x\n\nbody\n")

    def test_unique_names(self) -> None:
        self.deliver("x@localhost", "x@localhost")
        self.assertEqual(len(os.listdir(os.path.join(self.root, "localhost", "x", "new"))), 2)

    def test_path_trick_fails_permanently(self) -> None:
        [result] = self.deliver(".evil@localhost")
        self.assertEqual(result.status, DeliveryStatus.PERMANENT)
        self.assertFalse(os.path.exists(self.root))

    def test_disk_error_fails_temporarily(self) -> None:
        os.makedirs(self.root)
        with open(os.path.join(self.root, "localhost"), "w"):
            pass  # a file where the domain directory should be
        [result] = self.deliver("x@localhost")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertEqual(str(result.reply), "451 4.3.0 Temporary local delivery error")
        self.assertIn("Not a directory", result.detail)

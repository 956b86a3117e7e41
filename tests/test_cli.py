"""The jsmail command: passwd, queue list/show (text and JSON), queue flush."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace
from unittest import mock

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jsmail.cli import main
from jsmail.envelope import Envelope, Recipient
from jsmail.queue.store import MaildirQueue


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(f, *args, **kwargs)


class CommandTests(TestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.queue = MaildirQueue(os.path.join(self.data, "queue"), runNow)

    def run_(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """Run ``jsmail --data DATA ARGV...``: exit status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch("sys.stdin", io.StringIO(stdin)):
            code = main(["--data", self.data, *argv])
        return code, out.getvalue(), err.getvalue()

    def enqueue(self, envelope: Envelope, data: bytes) -> str:
        incoming = self.queue.newMessage(envelope)
        incoming.write(data)
        return self.successResultOf(incoming.commit())

    def test_passwd(self) -> None:
        code, out, _ = self.run_("passwd", "u", stdin="secret\n")
        self.assertEqual(code, 0)
        with open(os.path.join(self.data, "passwd")) as f:
            self.assertTrue(f.read().startswith("u:$2b$"))

    def test_queue_list_and_show(self) -> None:
        envelope = Envelope("a@example.org", (Recipient("x@localhost"), Recipient("y@example.net")), arrival=1.0)
        first = self.enqueue(envelope, b"Subject: one\r\n\r\nbody\r\n")
        deferred = replace(envelope, recipients=(
            replace(envelope.recipients[0], state=envelope.recipients[0].state.DELIVERED, lastReply="ok"),
            replace(envelope.recipients[1], lastReply="451 4.4.1 Cannot connect"),
        ), attempts=1)
        self.successResultOf(self.queue.update(first, deferred))
        second = self.enqueue(Envelope("", (Recipient("z@localhost"),), arrival=2.0), b"Subject: two\r\n\r\nx\r\n")

        code, out, _ = self.run_("queue", "list")
        self.assertEqual(code, 0)
        self.assertIn(f"{first}", out)
        self.assertIn("    delivered <x@localhost>  ok\n", out)
        self.assertIn("    pending   <y@example.net>  451 4.4.1 Cannot connect\n", out)
        self.assertTrue(out.endswith("-- 2 message(s) in the queue\n"))

        code, out, _ = self.run_("queue", "list", "--json")
        listed = json.loads(out)
        self.assertEqual([e["id"] for e in listed], [first, second])
        self.assertEqual(listed[0]["size"], len(b"Subject: one\r\n\r\nbody\r\n"))
        self.assertEqual(listed[0]["recipients"][1], {"address": "y@example.net", "state": "pending",
                                                       "lastReply": "451 4.4.1 Cannot connect"})
        self.assertEqual((listed[1]["sender"], listed[1]["attempts"]), ("", 0))

        code, out, _ = self.run_("queue", "show", second, "--json")
        self.assertEqual(json.loads(out)["headers"], "Subject: two\r\n")
        code, _, err = self.run_("queue", "show", "NOSUCHID")
        self.assertEqual(code, 1)
        self.assertIn("no message NOSUCHID", err)

    def test_flush_wakes_the_delivery_process(self) -> None:
        """Through the trigger FIFO the delivery process reads (no signal, no pid)."""
        trigger = os.path.join(self.data, "queue", "trigger")
        os.mkfifo(trigger, 0o600)
        reader = os.open(trigger, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        code, out, _ = self.run_("queue", "flush")
        self.assertEqual((code, os.read(reader, 10)), (0, b"!"))
        self.assertIn("asked the delivery process to retry", out)

    def test_flush_without_a_running_gateway(self) -> None:
        code, _, err = self.run_("queue", "flush")
        self.assertEqual(code, 1)
        self.assertIn("no running delivery process", err)


class MoveTests(CommandTests):
    def test_hold_release_delete(self) -> None:
        queueId = self.enqueue(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0), b"S: x\r\n\r\nb\r\n")
        self.assertEqual(self.run_("queue", "hold", queueId)[:2], (0, f"jsmail queue: {queueId} held\n"))
        self.assertEqual(os.listdir(os.path.join(self.data, "queue", "active")), [])
        code, out, _ = self.run_("queue", "list")
        self.assertIn("(held)", out)
        self.assertEqual(json.loads(self.run_("queue", "show", queueId, "--json")[1])["held"], True)
        self.assertEqual(self.run_("queue", "release", queueId)[0], 0)
        self.assertEqual(os.listdir(os.path.join(self.data, "queue", "active")), [queueId])
        self.assertEqual(self.run_("queue", "delete", queueId)[:2], (0, f"jsmail queue: {queueId} deleted\n"))
        self.assertEqual(self.run_("queue", "list", "--json")[1].strip(), "[]")
        code, _, err = self.run_("queue", "delete", queueId)
        self.assertEqual(code, 1)
        self.assertIn("no message", err)

    def test_ids_cannot_name_other_files(self) -> None:
        self.assertEqual(self.run_("queue", "delete", "../../passwd")[0], 1)
        self.assertEqual(self.run_("queue", "show", "x.env")[0], 1)


class RequeueTests(CommandTests):
    def test_requeue_resets_the_schedule(self) -> None:
        envelope = Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0, attempts=4, nextAttempt=9e9)
        queueId = self.enqueue(envelope, b"S: x\r\n\r\nb\r\n")
        self.assertEqual(self.run_("queue", "requeue")[:2], (0, "jsmail queue: 1 message(s) requeued\n"))
        [listed] = json.loads(self.run_("queue", "list", "--json")[1])
        self.assertEqual((listed["id"], listed["attempts"], listed["nextAttempt"]), (queueId, 0, None))
        self.assertEqual(self.run_("queue", "requeue", "NOSUCHID")[0], 1)


class DataDirectoryTests(TestCase):
    """One rule for every command: --data, else $JSMAIL_DATA, else ./jsmail-data."""

    def test_order(self) -> None:
        from jsmail.datadir import dataDirectory

        with mock.patch.dict(os.environ, {"JSMAIL_DATA": "/from/env"}):
            self.assertEqual(dataDirectory("/given"), "/given")
            self.assertEqual(dataDirectory(None), "/from/env")
        with mock.patch.dict(os.environ, {"JSMAIL_DATA": ""}):
            self.assertEqual(dataDirectory(None), "jsmail-data")
            self.assertEqual(dataDirectory(None, default=""), "")

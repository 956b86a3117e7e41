"""``jsmail trace`` on logs a real gateway wrote: text and JSON, both processes' events."""

from __future__ import annotations

import io
import os
import smtplib
import time
from contextlib import redirect_stdout
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher, jsonFileLogObserver, textFileLogObserver
from twisted.trial import unittest

from jsmail import cli
from jsmail.ops.trace import parseText
from tests.test_integration import CLIENT_TIMEOUT, DELIVERY_TIMEOUT, POLL_INTERVAL, GatewayTestCase

MESSAGE = b"Message-ID: <trace-1@example.org>\r\nSubject: traced\r\n\r\nhello\r\n"


def sendOne(port: int) -> str:
    """One session: a refused recipient, an accepted one, the message; its queue id."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as client:
        client.ehlo()
        client.mail("a@example.org")
        assert client.rcpt("x@example.net")[0] == 550
        assert client.rcpt("someone@localhost")[0] == 250
        code, text = client.data(MESSAGE)
        assert code == 250, (code, text)
        return text.decode().rpartition(" ")[2]


def jsmail(*arguments: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = cli.main(list(arguments))
    return status, out.getvalue().splitlines()


class TraceTests(GatewayTestCase):
    """A gateway delivering in its own process logs to a text and a JSON file; the
    trace from either says the same.  By default only the refusal has a check line."""

    settings: dict[str, Any] = {}
    #: The session's check lines before ``queued``, without their time stamps.
    REFUSAL = ("550 5.7.1 Relaying to <x@example.net> denied: example.net is not a local domain "
               "(relay attempt from untrusted 127.0.0.1 to x@example.net)")
    checks = [f"  check RelayControl at RCPT x@example.net: reject: {REFUSAL}", f"  refused RCPT: {REFUSAL}"]

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.logs = os.path.abspath(self.mktemp())
        os.makedirs(self.logs)
        self.text, self.json = os.path.join(self.logs, "twistd.log"), os.path.join(self.logs, "json.log")
        files = [open(self.text, "w", encoding="utf-8"), open(self.json, "w", encoding="utf-8")]
        observers = [textFileLogObserver(files[0]), jsonFileLogObserver(files[1], recordSeparator="")]
        for observer in observers:
            globalLogPublisher.addObserver(observer)

        def stop() -> None:
            for observer in observers:
                globalLogPublisher.removeObserver(observer)
            for f in files:
                f.close()

        self.addCleanup(stop)
        yield self.startGateway(**self.settings)
        self.queueId = yield deferToThread(sendOne, self.port)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while f"removed id={self.queueId}" not in open(self.text, encoding="utf-8").read():
            self.assertLess(time.monotonic(), deadline, "the message was not removed from the queue")
            yield task.deferLater(reactor, POLL_INTERVAL, lambda: None)
        for f in files:
            f.flush()

    def assertTrace(self, lines: list[str]) -> None:
        """The whole story, in order: the session with its check lines and the
        refusal, the message queued, the delivery process's attempt and result."""
        self.assertEqual(lines[0], f"== message {self.queueId}")
        self.assertRegex(lines[1], r"^\S+  session [0-9a-f]{12}: \[127\.0\.0\.1\]:\d+ connected to the smtp listener$")
        body = [line.partition("  ")[2] for line in lines[2:-1]]  # without the time stamps
        checks, body = body[:len(self.checks)], body[len(self.checks):]
        self.assertEqual(checks, self.checks)
        self.assertRegex(body[0], rf"^queued as {self.queueId}: from <a@example\.org>, 1 recipient\(s\), \d+ octets, "
                                  r"Message-ID <trace-1@example\.org>$")
        self.assertRegex(body[1], r"^attempt by the local agent \(\d+\.\d{3} s\): 1 delivered, "
                                  r"0 temporary failure\(s\), 0 permanent failure\(s\)$")
        self.assertTrue(body[2].startswith("  delivered <someone@localhost>: 250 2.0.0 Delivered (maildir "), body[2])
        self.assertEqual(body[3:], ["removed from the queue"])
        self.assertEqual(lines[-1], "outcome: left the queue; <someone@localhost> delivered")

    def test_by_queue_id_from_the_text_log(self) -> None:
        status, lines = jsmail("trace", self.queueId, "--log", self.text)
        self.assertEqual(status, 0, lines)
        self.assertTrace(lines)

    def test_by_message_id_from_the_json_log(self) -> None:
        status, lines = jsmail("trace", "--message-id", "trace-1@example.org", "--log", self.json)
        self.assertEqual(status, 0, lines)
        self.assertTrace(lines)

    def test_same_from_both_formats(self) -> None:
        """Time stamps aside, text and JSON give the same trace; by recipient too."""
        _, text = jsmail("trace", "--recipient", "someone@localhost", "--log", self.text)
        _, json = jsmail("trace", "--recipient", "someone@localhost", "--log", self.json)
        self.assertEqual([line[25:] for line in text], [line[25:] for line in json])

    def test_a_refused_recipient_names_its_session(self) -> None:
        """Asked about a recipient that was refused, the trace shows the session that
        tried it (here the same one that queued the message)."""
        status, lines = jsmail("trace", "--recipient", "x@example.net", "--log", self.text)
        self.assertEqual(status, 0)
        self.assertIn("check RelayControl at RCPT x@example.net: reject", "\n".join(lines))

    def test_nothing_found(self) -> None:
        status, lines = jsmail("trace", "0000nosuchid", "--log", self.text)
        self.assertEqual(status, 1)
        self.assertEqual(lines, [f"jsmail trace: nothing about 0000nosuchid in {self.text}"])


class EveryVerdictTraceTests(TraceTests):
    """With ``[log] checks = "all"`` each check's accept has its line too, and the
    trace shows it in its place."""

    settings = {"log__checks": "all"}
    checks = [
        "  check RelayControl at CONNECT: accept",
        "  check RelayControl at HELO client.test: accept",
        "  check RelayControl at MAIL a@example.org: accept",
        *TraceTests.checks,
        "  check RelayControl at RCPT someone@localhost: accept",
    ]


class RotationTests(unittest.TestCase):
    def test_rotated_files_are_read_oldest_first(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        lines = {"twistd.log.2": "queued id=Q1 from=<a@b> nrcpt=1 size=5 client=[::1]:1",
                 "twistd.log.1": "delivered id=Q1 to=<c@d> detail='250 2.0.0 ok'",
                 "twistd.log": "removed id=Q1"}
        for name, line in lines.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(f"2025-01-01T00:00:00+0000 [jsmail.maillog#info] {line}\n")
        status, out = jsmail("trace", "Q1", "--log", os.path.join(directory, "twistd.log"))
        self.assertEqual(status, 0)
        self.assertEqual(out, [
            "== message Q1",
            "2025-01-01T00:00:00+0000  queued as Q1: from <a@b>, 1 recipient(s), 5 octets",
            "2025-01-01T00:00:00+0000    delivered <c@d>: 250 2.0.0 ok",
            "2025-01-01T00:00:00+0000  removed from the queue",
            "outcome: left the queue; <c@d> delivered",
        ])

    def test_text_fields(self) -> None:
        """Quoted values are read back as Python wrote them; tls keeps its bare words."""
        event = parseText("2025-01-01T00:00:00+0000 [jsmail.maillog#info] tls client=[::1]:5 TLSv1.3 with "
                          "cipher TLS_AES_128_GCM_SHA256 session=abc")
        assert event is not None
        self.assertEqual(event.fields, {"client": "[::1]:5", "info": "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256",
                                        "session": "abc"})
        event = parseText("2025-01-01T00:00:00+0000 [jsmail.maillog#info] reject id=- client=[::1]:5 "
                          "command='RCPT' reply=\"550 5.7.1 it's <x> denied\" reason='a \\'b\\''")
        assert event is not None
        self.assertEqual((event.fields["reply"], event.fields["reason"]), ("550 5.7.1 it's <x> denied", "a 'b'"))

    def test_an_accept_with_a_reason_shows_it(self) -> None:
        """An accept is logged by default only when it says why (a check on the
        client's trust, say); the trace shows the why."""
        directory = self.mktemp()
        os.makedirs(directory)
        stamp = "2025-01-01T00:00:00+0000 [jsmail.maillog#info] "
        with open(os.path.join(directory, "twistd.log"), "w") as f:
            f.write(stamp + "connect client=[::1]:1 listener=smtp session=s1\n")
            f.write(stamp + "check id=- session=s1 phase=rcpt check=Access verdict=accept argument='c@d' reply='' "
                            "reason='allowed by allow_senders'\n")
            f.write(stamp + "queued id=Q1 from=<a@b> nrcpt=1 size=5 client=[::1]:1 session=s1 listener=smtp\n")
        status, out = jsmail("trace", "Q1", "--log", os.path.join(directory, "twistd.log"))
        self.assertEqual(status, 0)
        self.assertEqual([line[26:] for line in out[1:3]], [
            "session s1: [::1]:1 connected to the smtp listener",
            "  check Access at RCPT c@d: accept (allowed by allow_senders)",
        ])


class SessionDeliveryTraceTests(GatewayTestCase):
    """A message delivered during the SMTP session: the trace says so."""

    @defer.inlineCallbacks
    def test_deliveredDuringTheSessionIsSaidSo(self) -> Any:
        text = os.path.abspath(self.mktemp()) + ".log"
        f = open(text, "w", encoding="utf-8")
        observer = textFileLogObserver(f)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(f.close)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.startGateway()
        for sub in ("tmp", "new", "cur"):  # an existing mailbox
            os.makedirs(os.path.join(self.dataDir, "mail", "localhost", "someone", sub))
        yield deferToThread(sendOne, self.port)  # queued, while the plan is looked at
        yield self.queueDrained()
        queueId = yield deferToThread(sendOne, self.port)
        f.flush()
        status, lines = jsmail("trace", queueId, "--log", text)
        self.assertEqual(status, 0, lines)
        body = [line.partition("  ")[2] for line in lines]
        self.assertIn("delivered during the SMTP session, before its 250", "\n".join(body))
        self.assertRegex(body[-4], r"^delivered during the SMTP session, before its 250 \(\d+\.\d{3} s from the "
                                   r"final dot\): never waited in the queue$")
        self.assertEqual(lines[-1], "outcome: left the queue; <someone@localhost> delivered")

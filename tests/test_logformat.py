"""``twistd jsmail --log-format json``: a real twistd, its log read line by line."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

TIMEOUT = 30.0


def twistd(*arguments: str) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments]


def runAndSend(dataDir: str) -> list[dict[str, Any]]:
    """Start twistd with the JSON log on stdout, send one message once it listens,
    stop it once the message is delivered; every line it logged, parsed (blocking)."""
    process = subprocess.Popen(
        twistd("-n", "--pidfile=", "jsmail", "--log-format", "json", "--data", dataDir, "--hostname", "mx.test",
               "--smtp", "tcp:0:interface=127.0.0.1", "--submission", "none", "--smtps", "none"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=dataDir)
    events: list[dict[str, Any]] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            event = json.loads(line)
            events.append(event)
            if event.get("kind") == "smtp" and "where" in event:
                port = int(event["where"].rpartition(":")[2])
                with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
                    client.sendmail("a@example.org", ["someone@localhost"],
                                    b"Message-ID: <m1@example.org>\r\nSubject: j\r\n\r\nhi\r\n")
            if event.get("event") == "removed":
                process.send_signal(signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
    return events


class JSONLogTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_one_object_per_line_with_the_operator_log_fields(self) -> Any:
        """Every line is a JSON object; the operator log's events carry their fields,
        the delivery process's among them; no silent measurement events show."""
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        events = yield deferToThread(runAndSend, dataDir)
        maillog = {e["event"]: e for e in events if e.get("log_namespace") == "jsmail.maillog"}
        self.assertEqual(set(maillog) >= {"connect", "queued", "attempt", "delivered", "removed"}, True, maillog)
        connect, queued, delivered = maillog["connect"], maillog["queued"], maillog["delivered"]
        self.assertEqual((connect["listener"], queued["session"]), ("smtp", connect["session"]))
        self.assertEqual((queued["sender"], queued["recipients"], queued["messageId"]),
                         ("a@example.org", 1, "<m1@example.org>"))
        self.assertEqual((delivered["queueId"], delivered["recipient"], delivered["code"], delivered["enhanced"]),
                         (queued["queueId"], "someone@localhost", 250, "2.0.0"))
        self.assertEqual(maillog["attempt"]["agent"], "local")
        self.assertTrue(all("log_time" in e and "log_level" in e for e in events))
        self.assertFalse([e for e in events if e.get("log_namespace") == "jsmail.metrics"])

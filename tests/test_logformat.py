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

from tests.test_plugin import twistdEnvironment

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


def runAndRelay(dataDir: str, dnsServer: str, relayPort: int) -> list[str]:
    """Start twistd with its text log on stdout, relay one message to a remote domain
    (an MX lookup, then SMTP to the relay on ``relayPort``), stop once it has left the
    queue; every line logged (blocking)."""
    config = os.path.join(dataDir, "relay.toml")
    with open(config, "w") as f:
        f.write(f'[remote]\nport = {relayPort}\ntls = "none"\nmta_sts = false\nallow_internal = ["127.0.0.0/8"]\n')
    process = subprocess.Popen(
        twistd("-n", "--pidfile=", "jsmail", "--config", config, "--data", dataDir, "--hostname", "mx.test",
               "--dns-server", dnsServer, "--trusted-network", "127.0.0.0/8",
               "--smtp", "tcp:0:interface=127.0.0.1", "--submission", "none", "--smtps", "none"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=dataDir, text=True, env=twistdEnvironment())
    lines: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "[jsmail.listen#info] Listening for smtp on " in line:
                port = int(line.split(" on 127.0.0.1:")[1].split()[0])
                with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
                    client.sendmail("a@example.org", ["someone@remote.test"], b"Subject: r\r\n\r\nhi\r\n")
            if "[jsmail.maillog#info] removed id=" in line:
                process.send_signal(signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
    return lines


class TextLogTests(unittest.TestCase):
    """Newcomer review 13: a log an operator can read."""

    timeout = 60

    @defer.inlineCallbacks
    def test_no_twisted_chatter_one_line_per_listener_and_the_relay_named(self) -> Any:
        from twisted.internet import reactor
        from twisted.names import dns

        from jsmail.queue import MemoryQueue
        from jsmail.smtp.server import ESMTPServerFactory, Listener, ServerSettings
        from jsmail.testing import DNSServer

        server = DNSServer({"remote.test": [("remote.test", dns.Record_MX(10, b"mx.remote.test")),
                                            ("mx.remote.test", dns.Record_A("127.0.0.1"))]})
        dnsServer = server.start()
        self.addCleanup(server.stop)
        relay = MemoryQueue()
        port = reactor.listenTCP(0, ESMTPServerFactory(Listener(ServerSettings(hostname="mx.remote.test"), relay,
                                                                reactor)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        lines = yield deferToThread(runAndRelay, dataDir, dnsServer, port.getHost().port)
        text = "\n".join(lines)
        self.assertEqual(len(relay.messages), 1, text)
        for chatter in ("DNSDatagramProtocol", "UDP Port", "starting on", "Starting factory", "Stopping factory",
                        "changed, reparsing", "Resolver added"):
            self.assertNotIn(chatter, text)
        self.assertEqual(len([line for line in lines if "Listening for smtp" in line]), 1, text)
        [delivered] = [line for line in lines if "[jsmail.maillog#info] delivered id=" in line]
        self.assertIn(" to=<someone@remote.test> relay=mx.remote.test detail='250 2.0.0 ", delivered)


class DetailTests(unittest.TestCase):
    def test_a_local_deliverys_report_is_one_line(self) -> None:
        """qmail-local style reports have a line per step; the log showed them as a
        literal backslash-n."""
        from twisted.logger import formatEvent, globalLogPublisher

        from jsmail import maillog
        from jsmail.interfaces import DeliveryResult, DeliveryStatus
        from jsmail.reply import Reply

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        maillog.delivered("Q1", DeliveryResult("joe@localhost", DeliveryStatus.DELIVERED,
                                               Reply(250, "2.0.0", "Delivered"), "did 0+1+0\nqp Q2"))
        [event] = [e for e in events if e.get("event") == "delivered"]
        self.assertEqual(formatEvent(event),
                         "delivered id=Q1 to=<joe@localhost> detail='250 2.0.0 Delivered (did 0+1+0; qp Q2)'")

"""``twistd jsmail --log-format``: a real twistd, its log read line by line."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEventAsClassicLogText, formatTime, globalLogPublisher
from twisted.trial import unittest

from jsmail import maillog, reply
from jsmail.interfaces import DeliveryResult, DeliveryStatus
from jsmail.ops.logformat import HELD_MOST, HeldLines, _SecondsCache, classicLine
from tests.test_plugin import twistdEnvironment

TIMEOUT = 30.0


def twistd(*arguments: str) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *arguments]


def runAndSend(dataDir: str, logFormat: str = "json") -> list[dict[str, Any]]:
    """Start twistd with its log on stdout, send one message once it listens, stop it
    once the message is delivered; every line it logged, parsed (blocking).  A text
    line is parsed into its ``time``, ``system`` and ``text``."""
    process = subprocess.Popen(
        twistd("-n", "--pidfile=", "jsmail", "--log-format", logFormat, "--data", dataDir, "--hostname", "mx.test",
               "--smtp", "tcp:0:interface=127.0.0.1", "--submission", "none", "--smtps", "none"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=dataDir)
    events: list[dict[str, Any]] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            event = json.loads(line) if logFormat == "json" else _textLine(line.decode())
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


_TEXT_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}) \[([^\]]+)\] (.*)\n")


def _textLine(line: str) -> dict[str, Any]:
    """A twistd text line (a traceback's continuation lines start with a tab)."""
    match = _TEXT_LINE.fullmatch(line)
    if match is None:
        return {"continued": line} if line.startswith("\t") else {"unparsed": line}
    event: dict[str, Any] = {"time": match.group(1), "system": match.group(2), "text": match.group(3)}
    listening = re.match(r"Listening for (\w+) on (\S+) ", event["text"])
    if listening:
        event["kind"], event["where"] = listening.groups()
    if event["system"] == "jsmail.maillog#info":
        event["event"] = event["text"].split(" ", 1)[0]
    return event


class TextLogTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_twistd_lines_with_both_processes_events(self) -> Any:
        """The default log is twistd's own line format, the delivery process's events
        among the gateway's."""
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        events = yield deferToThread(runAndSend, dataDir, "text")
        self.assertEqual([e for e in events if "unparsed" in e], [])
        maillog = {e["event"]: e["text"] for e in events if "event" in e}
        self.assertEqual(set(maillog) >= {"connect", "queued", "attempt", "delivered", "removed"}, True, maillog)
        self.assertRegex(maillog["delivered"],
                         r"^delivered id=\w+ to=<someone@localhost> detail='250 2.0.0 Delivered \(maildir ")

    def test_operator_log_lines_as_twisted_writes_them(self) -> None:
        """Every operator-log event, odd values included, makes the line Twisted's
        formatter makes; so do other events."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            odd = "it's \"odd\"\nsecond line \u00e9 {braces}"
            result = DeliveryResult("to@example.test", DeliveryStatus.TEMPORARY, reply.DELIVERY_ERROR, odd)
            maillog.connect("[127.0.0.1]:1", "smtp", "s1")
            maillog.tls("[127.0.0.1]:1", "TLSv1.3", "s1")
            maillog.tlsFailed("[127.0.0.1]:1", odd, "s1")
            maillog.auth("[127.0.0.1]:1", odd, "failed", "s1")
            maillog.check("s1", "rcpt", "KnownRecipients", "reject", odd, reply.DELIVERY_ERROR, odd)
            maillog.reject("[127.0.0.1]:1", "RCPT", reply.DELIVERY_ERROR, odd)
            maillog.queued("Q1", odd, 1, 10, "[127.0.0.1]:1", messageId=odd)
            maillog.remote("Q1", "mx.test", "192.0.2.1", 25, "dane", odd, "tls")
            maillog.attempt("Q1", "local", 0.1234, [result])
            maillog.delivered("Q1", result)
            maillog.deferred("Q1", result, 300.4)
            maillog.failed("Q1", result)
            maillog.bounced("Q1", odd, "Q2")
            maillog.removed("Q1")
            Logger(namespace="other").info("not the operator log: {x!r}", x=odd)
            try:
                raise OSError("broken")
            except OSError:
                Logger(namespace="jsmail.maillog").failure("with a traceback")
            Logger(namespace="jsmail.maillog").info("a field missing: {nothere}")
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.flushLoggedErrors(OSError)
        self.assertEqual(len(events), 17)
        for event in events:
            self.assertEqual(classicLine(event, _SecondsCache()), formatEventAsClassicLogText(event))

    def test_timestamp_of_each_second_as_twisted_formats_it(self) -> None:
        cached = _SecondsCache()
        for when in (1796364774.0, 1796364774.2, 1796364774.999, 1796364775.0, 1796364773.5, None):
            self.assertEqual(cached(when), formatTime(when))


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


class ReadableLogTests(unittest.TestCase):
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


class _Reactor:
    """What HeldLines uses of a reactor, recording what it is asked."""

    def __init__(self) -> None:
        self.running = True
        self.later: list[Any] = []
        self.fromThread: list[Any] = []
        self.triggers: list[Any] = []

    def callLater(self, delay: float, f: Any) -> None:
        self.later.append(f)

    def callFromThread(self, f: Any) -> None:
        self.fromThread.append(f)

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        self.triggers.append((phase, event, f))


class _File:
    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        self.flushes += 1


class HeldLinesTests(unittest.TestCase):
    """A pass of the reactor's lines go to the file in one write and one flush."""

    def setUp(self) -> None:
        self.reactor, self.file = _Reactor(), _File()
        self.lines = HeldLines(self.file, self.reactor)

    def test_linesOfOnePassAreWrittenTogether(self) -> None:
        for n in range(5):
            self.lines.write(f"line {n}\n")
            self.lines.flush()  # as Twisted's observer does after every event
        self.assertEqual((self.file.writes, len(self.reactor.later)), ([], 1))
        self.reactor.later.pop()()
        self.assertEqual(self.file.writes, ["line 0\nline 1\nline 2\nline 3\nline 4\n"])
        self.assertEqual(self.file.flushes, 1)
        self.lines.write("next\n")
        self.assertEqual(len(self.reactor.later), 1)  # the next pass writes it

    def test_notRunningWritesAtOnce(self) -> None:
        self.reactor.running = False
        self.lines.write("starting\n")
        self.assertEqual((self.file.writes, self.file.flushes), (["starting\n"], 1))

    def test_manyLinesAreNotHeldLong(self) -> None:
        big = "x" * (HELD_MOST // 2) + "\n"
        self.lines.write(big)
        self.lines.write(big)
        self.assertEqual(self.file.writes, [big + big])

    def test_lineFromAnotherThreadIsWrittenByTheReactorThread(self) -> None:
        thread = threading.Thread(target=self.lines.write, args=("from a thread\n",))
        thread.start()
        thread.join()
        self.assertEqual((self.file.writes, len(self.reactor.fromThread)), ([], 1))
        self.reactor.fromThread.pop()()
        self.assertEqual(self.file.writes, ["from a thread\n"])

    def test_heldLinesAreWrittenAtShutdown(self) -> None:
        self.lines.write("last words\n")
        [(phase, event, trigger)] = self.reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        trigger()
        self.assertEqual(self.file.writes, ["last words\n"])

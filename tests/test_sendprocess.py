"""Delivery in its own process: notices, restarts, shutdown, and the one-sender lock."""

from __future__ import annotations

import glob
import json
import os
import signal
import smtplib
import subprocess
import sys

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail._process import LogLines, eventFromLine, eventLine
from jsmail.config import loadConfig
from jsmail.send.service import SendLock
from jsmail.service import MailGateway


class SendProcessTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.data = os.path.abspath(self.mktemp())
        none: list[str] = []
        config = loadConfig(settings={"server": {"hostname": "mx.test", "data": self.data},
                                      "smtp": {"listen": "tcp:0:interface=127.0.0.1", "submission": none,
                                               "smtps": none},
                                      "queue": {"delivery_process": True}})
        self.gateway = MailGateway(config)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        port = yield self.gateway.listeners[0].whenListening()
        self.port = port.getHost().port

    def send(self, recipient: str) -> defer.Deferred[dict]:
        def sendmail() -> dict:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                return client.sendmail("a@example.org", [recipient], b"Subject: x\r\n\r\nhi\r\n")

        return deferToThread(sendmail)

    @defer.inlineCallbacks
    def waitFor(self, predicate, what: str):  # type: ignore[no-untyped-def]
        for _ in range(300):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def delivered(self, local: str) -> int:
        return len(glob.glob(os.path.join(self.data, "mail", "localhost", local, "new", "*")))

    def childPid(self) -> int:
        return self.gateway.delivery.child.transport.pid  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_delivers_and_logs_through_the_parent(self):  # type: ignore[no-untyped-def]
        yield self.send("x@localhost")
        yield self.waitFor(lambda: self.delivered("x") == 1, "the delivery")
        yield self.waitFor(
            lambda: any(e.get("log_namespace") == "jsmail.maillog" and e.get("log_format", "").startswith("delivered")
                        for e in self.events),
            "the child's delivered event in the parent's log",
        )

    @defer.inlineCallbacks
    def test_restarted_after_a_crash_and_catches_up(self):  # type: ignore[no-untyped-def]
        """Mail queued while the delivery process is down is found when it is back."""
        yield self.waitFor(lambda: self.gateway.delivery.child is not None, "the child")
        first = self.childPid()
        os.kill(first, signal.SIGKILL)
        yield self.waitFor(lambda: self.gateway.delivery.child is None, "the crash to be noticed")
        yield self.send("y@localhost")
        yield self.waitFor(lambda: self.delivered("y") == 1, "the delivery after the restart")
        self.assertNotEqual(self.childPid(), first)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_child_answers_flush(self):  # type: ignore[no-untyped-def]
        """``jsmail queue flush`` signals the pid the delivery process wrote."""
        pidPath = os.path.join(self.data, "queue", "send.pid")
        yield self.waitFor(lambda: os.path.exists(pidPath) and self.gateway.delivery.child is not None, "send.pid")
        with open(pidPath) as f:
            self.assertEqual(int(f.read()), self.childPid())
        os.kill(self.childPid(), signal.SIGALRM)  # handled (a flush), not fatal
        yield self.waitFor(lambda: any(e.get("log_format", "").startswith("Flush:") for e in self.events), "the flush")
        self.assertIsNotNone(self.gateway.delivery.child)

    @defer.inlineCallbacks
    def test_mail_queued_by_jsmail_queue_is_delivered(self):  # type: ignore[no-untyped-def]
        """A message another program queues (qmail-queue style) is taken up at once."""
        pidPath = os.path.join(self.data, "queue", "send.pid")
        yield self.waitFor(lambda: os.path.exists(pidPath), "send.pid")
        envelopeRead, envelopeWrite = os.pipe()
        os.write(envelopeWrite, b"Fa@example.org\x00Tqq@localhost\x00\x00")
        os.close(envelopeWrite)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = yield deferToThread(
            subprocess.run, [sys.executable, "-m", "jsmail.qmail.queueprogram", "--data", self.data],
            input=b"Subject: via qmail-queue\n\nhi\n", stdout=envelopeRead, timeout=30,
            env={**os.environ, "PYTHONPATH": os.path.join(root, "src")})
        os.close(envelopeRead)
        self.assertEqual(result.returncode, 0)
        yield self.waitFor(lambda: self.delivered("qq") == 1, "the delivery")

    @defer.inlineCallbacks
    def test_stopping_the_gateway_stops_the_child(self):  # type: ignore[no-untyped-def]
        yield self.waitFor(lambda: self.gateway.delivery.child is not None, "the child")
        pid = self.childPid()
        yield self.gateway.stopService()
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)


class SendLockTests(SynchronousTestCase):
    def test_second_waits_for_first(self) -> None:
        path = self.mktemp()
        clock = task.Clock()
        first, second = SendLock(path, clock), SendLock(path, clock)
        self.successResultOf(first.acquire())
        waiting = second.acquire()
        clock.advance(1)
        self.assertNoResult(waiting)
        first.release()
        clock.advance(0.2)
        self.successResultOf(waiting)
        second.release()

    def test_cancel_stops_waiting(self) -> None:
        path = self.mktemp()
        clock = task.Clock()
        first, second = SendLock(path, clock), SendLock(path, clock)
        self.successResultOf(first.acquire())
        second.acquire()
        second.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])
        first.release()
        second.release()


class EventLineTests(SynchronousTestCase):
    """The child's log events as the parent's log shows them."""

    def roundTrip(self, emit) -> dict:  # type: ignore[no-untyped-def]
        events: list[dict] = []
        emit(Logger(namespace="jsmail.maillog", observer=events.append))
        [event] = events
        return eventFromLine(eventLine(event))

    def test_operator_log_event_reads_the_same_in_the_parent(self) -> None:
        event = self.roundTrip(lambda log: log.info("delivered id={queueId} to=<{recipient}> detail={detail!r}",
                                                    queueId="Q1", recipient="to@example.test", detail="maildir x",
                                                    code=250, peer=False, remoteMTA=None, event="delivered"))
        self.assertEqual(formatEvent(event), "delivered id=Q1 to=<to@example.test> detail='maildir x'")
        self.assertIs(event["log_level"], LogLevel.info)
        self.assertEqual((event["log_namespace"], event["code"], event["peer"]), ("jsmail.maillog", 250, False))

    def test_failure_in_the_child_keeps_its_traceback(self) -> None:
        def emit(log: Logger) -> None:
            try:
                raise OSError("disk on fire")
            except OSError:
                log.failure("Delivery attempt for {queueId} failed", queueId="Q2")

        event = self.roundTrip(emit)
        self.assertIs(event["log_level"], LogLevel.critical)
        self.assertIn("disk on fire", event["log_failure"].getTraceback())
        self.assertIn("Delivery attempt for Q2 failed", formatEvent(event))

    def test_event_with_a_level_that_is_no_level_still_goes_as_a_line(self) -> None:
        """The observer must not raise (an unhashable level, from code that built its
        own event): Twisted's encoding takes it."""
        line = eventLine({"log_level": ["loud"], "log_namespace": "x", "log_format": "odd {n}", "log_time": 1.0,
                          "n": 1})
        self.assertEqual(json.loads(line)["log_format"], "odd {n}")

    def test_garbage_from_the_child_is_not_an_event(self) -> None:
        for line in ("[1, 2]", '{"log_level": "loud"}', "not json"):
            self.assertRaises(ValueError, eventFromLine, line)

    def test_not_a_number_from_the_child_is_not_an_event(self) -> None:
        """NaN would make a metric's sum NaN for good (a commit of NaN seconds)."""
        for number in ("NaN", "Infinity", "-Infinity"):
            line = ('{"log_level":"info","log_namespace":"jsmail.metrics","log_format":"","log_time":1.0,'
                    f'"metric":"commit","seconds":{number}}}')
            self.assertRaises(ValueError, eventFromLine, line)


class LogLinesTests(SynchronousTestCase):
    """A child's log lines, however they are cut into reads, as the parent publishes
    them."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def line(self, **fields: object) -> bytes:
        event = {"log_level": LogLevel.info, "log_namespace": "jsmail.maillog", "log_format": "deferred {detail!r}",
                 "log_time": 1.0, **fields}
        return eventLine(event).encode() + b"\n"

    def feed(self, lines: LogLines, data: bytes, piece: int = 8192) -> None:
        for start in range(0, len(data), piece):  # as Twisted reads a child's pipe
            lines.received(data[start:start + piece])

    def published(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace") == "jsmail.maillog"]

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    def test_a_remote_servers_long_reply_does_not_lose_the_delivery_event(self) -> None:
        """A remote server's reply may be 64 KiB, and a delivery event carries it in
        four fields: the parent kept only a line's last 64 KiB, so the event was lost
        (from the log, the metrics and what ``submit`` reports)."""
        reply = "4" * 60_000
        data = self.line(detail=reply, text=reply, reason=reply) + self.line(detail="next")
        self.feed(LogLines("delivery process"), data)
        self.assertEqual([e["detail"] for e in self.published()], [reply, "next"])
        self.assertEqual(self.warnings(), [])

    def test_a_line_past_the_limit_is_dropped_whole_and_the_next_one_kept(self) -> None:
        lines = LogLines("delivery process", limit=1000)
        self.feed(lines, self.line(detail="x" * 3000) + self.line(detail="next"), piece=700)  # over several reads
        lines.received(self.line(detail="z" * 2000))  # whole in one read
        self.feed(lines, self.line(detail="y" * 1500)[:-1], piece=700)
        lines.received(b"\n" + self.line(detail="last"))  # its end, and the next line, in one read
        self.assertEqual([e["detail"] for e in self.published()], ["next", "last"])
        sizes = [len(self.line(detail=c * n)) - 1 for c, n in (("x", 3000), ("z", 2000), ("y", 1500))]
        self.assertEqual(self.warnings(), [f"delivery process wrote a log line of {size} octets, past the 1000 "
                                           "taken: dropped" for size in sizes])

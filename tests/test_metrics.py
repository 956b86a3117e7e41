"""Metrics and the status page, read over real HTTP from a real gateway on loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from jsmail import metrics
from jsmail.metrics import Metrics
from jsmail.ops.observer import MaillogObserver
from tests.test_integration import GatewayTestCase, queuedId


@defer.inlineCallbacks
def httpGet(port: int, path: str) -> Any:
    """(status code, content type, body) of a GET on 127.0.0.1:``port``."""
    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    body = yield readBody(response)
    contentType = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
    return response.code, contentType, body.decode("utf-8")


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format (labels in any order)."""
    for line in exposition.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels} in:\n{exposition}")


class EndpointTests(GatewayTestCase):
    """A gateway with ``[metrics] listen`` serves /metrics and / on that endpoint."""

    @defer.inlineCallbacks
    def startWithMetrics(self, **settings: Any) -> Any:
        gateway = yield self.startGateway(metrics__listen="tcp:0:interface=127.0.0.1", **settings)
        port = yield gateway.operations.listener.whenListening()
        self.metricsPort = port.getHost().port
        return gateway

    @defer.inlineCallbacks
    def test_a_delivered_message_is_counted_from_both_processes(self) -> Any:
        """One message in and delivered by the delivery process: the session, the
        reply to each command, the queued message, the delivery attempt (counted from
        the child's republished events) and the group commits of both processes."""
        yield self.startWithMetrics()
        [replies] = yield self.send(("a@example.org", ["someone@localhost"], b"Subject: m\r\n\r\nhi\r\n", []))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        yield self.queueDrained()
        code, contentType, text = yield httpGet(self.metricsPort, "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(contentType.startswith("text/plain"), contentType)
        self.assertEqual(sample(text, "jsmail_smtpd_connections_total", listener="smtp"), 1)
        self.assertEqual(sample(text, "jsmail_smtpd_messages_total", listener="smtp", outcome="queued"), 1)
        self.assertEqual(sample(text, "jsmail_smtpd_replies_total", command="CONNECT", code="220", enhanced=""), 1)
        self.assertEqual(sample(text, "jsmail_smtpd_replies_total", command="RCPT", code="250", enhanced="2.1.5"), 1)
        self.assertEqual(sample(text, "jsmail_smtpd_replies_total", command="DATA", code="250", enhanced="2.0.0"), 1)
        self.assertEqual(sample(text, "jsmail_delivery_attempts_total", agent="local", result="delivered"), 1)
        self.assertEqual(sample(text, "jsmail_delivery_seconds_count", agent="local"), 1)
        # The receiving side's commit of the message, and at least the child's of the Maildir.
        self.assertGreaterEqual(sample(text, "jsmail_commit_seconds_count"), 2)
        self.assertEqual(sample(text, "jsmail_queue_messages", state="new"), 0)
        self.assertEqual(sample(text, "jsmail_queue_oldest_seconds"), 0)

    @defer.inlineCallbacks
    def test_refusals_and_check_verdicts(self) -> Any:
        """Relaying refused to an unknown client: RelayControl's verdicts are counted,
        the reply too, and the status page lists the refusal with its public reply."""
        yield self.startWithMetrics()
        [replies] = yield self.send(("a@example.org", ["x@example.net"], b"Subject: r\r\n\r\nhi\r\n", []))
        self.assertEqual(replies[1], (550, b"5.7.1 Relaying to <x@example.net> denied: example.net is not a local domain"))
        code, _, text = yield httpGet(self.metricsPort, "/metrics")
        self.assertEqual(sample(text, "jsmail_policy_verdicts_total", check="RelayControl", verdict="reject"), 1)
        # connect, EHLO and MAIL: counted, though a bare accept has no log line
        self.assertEqual(sample(text, "jsmail_policy_verdicts_total", check="RelayControl", verdict="accept"), 3)
        self.assertEqual(sample(text, "jsmail_smtpd_replies_total", command="RCPT", code="550", enhanced="5.7.1"), 1)
        code, contentType, page = yield httpGet(self.metricsPort, "/")
        self.assertEqual((code, contentType), (200, "text/html; charset=utf-8"))
        refusals = page[page.index('<table id="refusals">'):]
        self.assertIn("550 5.7.1 Relaying to &lt;x@example.net&gt; denied", refusals[: refusals.index("</table>")])

    @defer.inlineCallbacks
    def test_status_page(self) -> Any:
        """The page shows the queue by state (a held message waits in the queue), the
        two charts, the recent delivery and the listeners with their ports."""
        # In this process, with a DNS server named (so no resolv.conf watcher is left behind).
        gateway = yield self.startWithMetrics(queue__delivery_process=False, remote__dns_server="127.0.0.1:53")
        [replies] = yield self.send(("a@example.org", ["someone@localhost"], b"Subject: s\r\n\r\nhi\r\n", []))
        queueId = queuedId(replies[-1])
        yield self.queueDrained()
        code, _, page = yield httpGet(self.metricsPort, "/")
        self.assertEqual(code, 200)
        self.assertIn('<table id="queue">', page)
        self.assertRegex(page, r"<tr><td>new</td><td class=n>0</td>")
        self.assertEqual(page.count('<svg class="chart"'), 2)
        deliveries = page[page.index('<table id="deliveries">'):]
        self.assertIn(f"<td>{queueId}</td><td>delivered</td><td>someone@localhost</td><td>250</td>", deliveries)
        self.assertIn(f"127.0.0.1:{self.port}", page)
        self.assertIn(f"127.0.0.1:{self.metricsPort}", page)
        self.assertIn(f"<tr><td>local</td><td>unix:{gateway.config.submit.socket}</td>"
                      f"<td>{gateway.config.submit.socket}</td></tr>", page)  # jsmail-sendmail's socket
        self.assertIn('id="certificate"', page)
        self.assertIn(gateway.tls.certificatePath, page)


    @defer.inlineCallbacks
    def test_status_page_in_a_browser(self) -> Any:
        """Headless Chromium renders the page to a PNG (look at it:
        ``_trial_temp/.../status.png``); the HTML it got has the queue table and both charts."""
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise unittest.SkipTest("chromium is not installed (.ci/run installs Debian's when run as root)")
        yield self.startWithMetrics(queue__delivery_process=False, remote__dns_server="127.0.0.1:53")
        yield self.send(("a@example.org", ["someone@localhost"], b"Subject: s\r\n\r\nhi\r\n", []),
                        ("a@example.org", ["x@example.net"], b"Subject: s\r\n\r\nhi\r\n", []))
        yield self.queueDrained()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        screenshot = os.path.join(directory, "status.png")
        url = f"http://127.0.0.1:{self.metricsPort}/"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--no-first-run", f"--user-data-dir={directory}/profile",
                   "--window-size=1100,1500", f"--screenshot={screenshot}", url]
        result = yield deferToThread(subprocess.run, command, capture_output=True, timeout=90)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(screenshot), 10_000)
        dumped = yield deferToThread(subprocess.run, command[:-2] + ["--dump-dom", url], capture_output=True,
                                     timeout=90, text=True)
        self.assertIn('<table id="queue">', dumped.stdout)
        self.assertEqual(dumped.stdout.count('<svg class="chart"'), 2)
        self.assertIn("someone@localhost", dumped.stdout)


class OffByDefaultTests(GatewayTestCase):
    @defer.inlineCallbacks
    def test_no_endpoint_and_no_hooks(self) -> Any:
        """Without ``[metrics] listen`` nothing listens for HTTP and the hooks go nowhere."""
        gateway = yield self.startGateway()
        self.assertFalse(hasattr(gateway, "operations"))
        self.assertIsNone(metrics.install(None))


class SeriesTests(unittest.TestCase):
    def test_unknown_commands_share_one_label(self) -> None:
        """A client's made-up verbs all count as "other", so they cannot grow the series."""
        m = Metrics()
        for verb in ("XYZZY", "PLUGH", "XYZZY"):
            m.reply(verb, 500, "5.5.1")
        m.reply("NOOP", 250, "2.0.0")
        self.assertEqual(m.registry.get_sample_value("jsmail_smtpd_replies_total",
                                                     {"command": "other", "code": "500", "enhanced": "5.5.1"}), 3)
        self.assertEqual(m.registry.get_sample_value("jsmail_smtpd_replies_total",
                                                     {"command": "NOOP", "code": "250", "enhanced": "2.0.0"}), 1)
        self.assertEqual(len(list(m.registry.collect())[1].samples), 4)  # two _total and two _created

    def test_forwarded_measurements(self) -> None:
        """The delivery process's silent events become the parent's samples."""
        m = Metrics()
        observer = MaillogObserver(m)
        observer({"log_namespace": metrics.NAMESPACE, "metric": "commit", "seconds": 0.004})
        observer({"log_namespace": metrics.NAMESPACE, "metric": "dns", "seconds": 0.02})
        self.assertEqual(m.registry.get_sample_value("jsmail_commit_seconds_count"), 1)
        self.assertEqual(m.registry.get_sample_value("jsmail_dns_seconds_sum"), 0.02)

    def test_counts_from_a_hostile_child_cannot_grow_the_registry(self) -> None:
        """A compromised receiving process sends counts with labels of its choosing:
        well-formed ones are counted, the rest dropped, and new series stop at the cap."""
        m = Metrics()
        observer = MaillogObserver(m)
        hostile = [["reply", "MAIL", str(code), "2.1.0", 1] for code in range(1000, 1100)]  # not reply codes
        hostile += [["reply", "MAIL", "250", "x" * 10_000, 1], ["verdict", "c" * 65, "accept", 1], ["reply", 5]]
        hostile += [["verdict", f"check{i}", "accept", 1] for i in range(metrics.MOST_FORWARDED_SERIES + 50)]
        observer({"log_namespace": metrics.NAMESPACE, "metric": "counts",
                  "counts": [["reply", "MAIL", "250", "2.1.0", 3], *hostile]})
        self.assertEqual(m.registry.get_sample_value(
            "jsmail_smtpd_replies_total", {"command": "MAIL", "code": "250", "enhanced": "2.1.0"}), 3)
        self.assertIsNone(m.registry.get_sample_value(
            "jsmail_smtpd_replies_total", {"command": "MAIL", "code": "1000", "enhanced": "2.1.0"}))
        verdicts = [s for metric in m.registry.collect() if metric.name == "jsmail_policy_verdicts"
                    for s in metric.samples if s.name == "jsmail_policy_verdicts_total"]
        self.assertLess(len(verdicts), metrics.MOST_FORWARDED_SERIES)

    def test_tls_versions(self) -> None:
        m = Metrics()
        observer = MaillogObserver(m)
        observer({"log_namespace": "jsmail.maillog", "event": "tls", "info": "TLSv1.3 with cipher X"})
        observer({"log_namespace": "jsmail.maillog", "event": "tls-failed", "error": "x"})
        self.assertEqual(m.registry.get_sample_value("jsmail_smtpd_tls_total", {"version": "TLSv1.3"}), 1)
        self.assertEqual(m.registry.get_sample_value("jsmail_smtpd_tls_total", {"version": "failed"}), 1)

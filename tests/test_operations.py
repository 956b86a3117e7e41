"""docs/operations.rst, the Grafana dashboard and the alert rules keep up with the code:
every operator-log event and every metric is documented, and the examples in ``etc/``
use only series a running gateway exports."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from typing import Any

import yaml
from twisted.internet import defer
from twisted.trial import unittest

from jsmail.metrics import Metrics
from jsmail.ops.queuestate import QueueWatcher
from tests.test_integration import GatewayTestCase
from tests.test_metrics import httpGet

TOP = os.path.join(os.path.dirname(__file__), os.pardir)
SRC = os.path.join(TOP, "src", "jsmail")
DOC = os.path.join(TOP, "docs", "operations.rst")
DASHBOARD = os.path.join(TOP, "etc", "grafana-dashboard.json")
ALERTS = os.path.join(TOP, "etc", "prometheus-alerts.yml")

#: A metric name in a PromQL expression (histograms add these suffixes to their name).
_NAME = re.compile(r"\bjsmail_[a-z_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def loggedEvents() -> set[str]:
    """Every ``event=`` keyword the code passes to a logger, found in the source."""
    events = set()
    for directory, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(read(os.path.join(directory, name)))):
                    if isinstance(node, ast.keyword) and node.arg == "event" and isinstance(node.value, ast.Constant):
                        events.add(node.value.value)
    return events


def registryNames() -> set[str]:
    """The series of a gateway's registry (its counters, histograms and queue gauges)."""
    m = Metrics()
    m.registry.register(QueueWatcher(os.path.join(os.getcwd(), "no-queue")))
    return {f.name + "_total" if f.type == "counter" else f.name for f in m.registry.collect()}


def queriedNames(text: str) -> set[str]:
    """The series a dashboard or rule file asks for, histogram suffixes taken off."""
    names = set()
    for name in _NAME.findall(text):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.add(name)
    return names


def exportedNames(exposition: str) -> set[str]:
    """The families in Prometheus's text format (``# TYPE name kind``), as PromQL names them."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


class DocumentationTests(unittest.TestCase):
    def test_every_logged_event_is_documented(self) -> None:
        """Event names are an interface: each one the code logs has its entry."""
        events = loggedEvents()
        self.assertIn("queued", events)  # the scan finds them
        doc = read(DOC)
        self.assertEqual({e for e in events if f"``{e}``" not in doc}, set())

    def test_builds_without_warnings(self) -> None:
        from docutils.core import publish_doctree

        publish_doctree(read(DOC), source_path=DOC, settings_overrides={"report_level": 2, "halt_level": 2})

    def test_every_metric_is_documented(self) -> None:
        names = registryNames()
        self.assertIn("jsmail_queue_oldest_seconds", names)
        doc = read(DOC)
        self.assertEqual({n for n in names if f"``{n}" not in doc}, set())


class ExampleTests(unittest.TestCase):
    def test_dashboard_and_rules_use_real_series(self) -> None:
        names = registryNames()
        dashboard = json.loads(read(DASHBOARD))
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        self.assertEqual(queriedNames("\n".join(exprs)) - names, set())
        rules = yaml.safe_load(read(ALERTS))
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        self.assertGreater(len(exprs), 3)
        self.assertEqual(queriedNames("\n".join(exprs)) - names, set())

    def test_promtool_accepts_the_rules(self) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            raise unittest.SkipTest("promtool (Debian package prometheus) is not installed")
        result = subprocess.run([promtool, "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class LiveRegistryTests(GatewayTestCase):
    """What a running gateway's ``/metrics`` exports is what the dashboard and the
    rules may use, and all that a registry made in a test has (so the checks above,
    which use one, check against the real thing)."""

    @defer.inlineCallbacks
    def test_examples_use_exported_series(self) -> Any:
        gateway = yield self.startGateway(metrics__listen="tcp:0:interface=127.0.0.1")
        port = (yield gateway.operations.listener.whenListening()).getHost().port
        [replies] = yield self.send(("a@example.org", ["someone@localhost"], b"Subject: m\r\n\r\nhi\r\n", []))
        self.assertEqual([code for code, _ in replies], [250, 250, 250])
        yield self.queueDrained()
        code, _, text = yield httpGet(port, "/metrics")
        self.assertEqual(code, 200)
        exported = exportedNames(text)
        used = queriedNames(read(DASHBOARD)) | queriedNames(read(ALERTS))
        self.assertEqual(used - exported, set())
        self.assertEqual(registryNames() - exported, set())

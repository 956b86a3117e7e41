"""Lookups from a worker thread through the reactor's resolver, against a loopback DNS
server."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial import unittest

from jsmail._dns import makeResolver
from jsmail.policy.spfdns import DNSLookupError, ThreadResolver, wireName
from jsmail.testing import DNSServer

ZONE = [
    ("host.example.test", dns.Record_A("192.0.2.1")),
    ("host.example.test", dns.Record_A("192.0.2.2")),
    ("alias.example.test", dns.Record_CNAME(b"host.example.test")),
    ("text.example.test", dns.Record_TXT(b"one", b"two")),
    ("slow.example.test", dns.Record_A("192.0.2.3")),
]


class WireNameTests(unittest.TestCase):
    def test_names(self) -> None:
        self.assertEqual(wireName("Example.TEST."), b"Example.TEST")
        self.assertEqual(wireName("b\u00fccher.test"), b"xn--bcher-kva.test")
        self.assertEqual(wireName("_spf.% x.test"), b"_spf.% x.test")  # any octets may be in a label

    def test_namesNoQueryCanCarry(self) -> None:
        for name in ("", ".", "a..test", "a" * 64 + ".test", ".".join(["a" * 63] * 4), "\udcff.test"):
            self.assertIsNone(wireName(name), name)


class LookupTests(unittest.TestCase):
    def setUp(self) -> None:
        server = DNSServer({"example.test": ZONE}, reactor, silent=["slow.example.test"])
        self.resolver = makeResolver(server.start(), reactor)
        self.addCleanup(server.stop)

    def inThread(self, budget: float, *questions: tuple[str, int]) -> defer.Deferred[Any]:
        """Ask the questions in turn from a worker thread; each answer is a list of
        (name, type, text) or the DNSLookupError's text."""
        lookups = ThreadResolver(reactor, self.resolver, budget)

        def ask() -> list[Any]:
            answers: list[Any] = []
            for name, qtype in questions:
                try:
                    answers.append(sorted((str(r.name), r.type, _text(r.payload)) for r in lookups.lookup(name, qtype)))
                except DNSLookupError as e:
                    answers.append(str(e))
            return answers

        return deferToThread(ask)

    @defer.inlineCallbacks
    def test_answers(self) -> Any:
        answers = yield self.inThread(5.0, ("host.example.test", dns.A), ("alias.example.test", dns.A),
                                      ("text.example.test", dns.TXT), ("text.example.test", dns.MX),
                                      ("missing.example.test", dns.A), ("a" * 64 + ".example.test", dns.A))
        self.assertEqual(answers, [
            [("host.example.test", dns.A, "192.0.2.1"), ("host.example.test", dns.A, "192.0.2.2")],
            [("alias.example.test", dns.CNAME, "host.example.test"), ("host.example.test", dns.A, "192.0.2.1"),
             ("host.example.test", dns.A, "192.0.2.2")],
            [("text.example.test", dns.TXT, "one|two")],
            [],  # no such records
            [],  # no such name
            [],  # a name no query can carry
        ])

    @defer.inlineCallbacks
    def test_timeoutSpendsTheBudget(self) -> Any:
        """A server that does not answer costs the rest of the budget, once: the next
        question fails at once, whatever it is."""
        answers = yield self.inThread(0.5, ("slow.example.test", dns.TXT), ("host.example.test", dns.A))
        self.assertEqual(answers, ["TXT slow.example.test: no answer in 0.5s",
                                   "A host.example.test: time budget of 0.5s spent"])

    @defer.inlineCallbacks
    def test_silentNameStillAnswersItsTypes(self) -> Any:
        answers = yield self.inThread(5.0, ("slow.example.test", dns.A))
        self.assertEqual(answers, [[("slow.example.test", dns.A, "192.0.2.3")]])

    def test_reactorNotAnswering(self) -> None:
        """While the reactor thread is blocked (as when it joins its thread pool at
        shutdown) a worker's question fails after the budget and a grace period instead
        of waiting for ever, and its later questions fail at once."""
        lookups = ThreadResolver(reactor, self.resolver, 0.1)
        outcome: list[str] = []

        def ask() -> None:
            for _ in range(2):
                try:
                    lookups.lookup("host.example.test", dns.A)
                except DNSLookupError as e:
                    outcome.append(str(e))

        worker = threading.Thread(target=ask)
        worker.start()
        worker.join(30)  # blocks this, the reactor, thread
        self.assertFalse(worker.is_alive())
        self.assertEqual(outcome, ["the reactor is not answering (shutting down?)"] * 2)


def _text(payload: Any) -> str:
    if isinstance(payload, dns.Record_A):
        return payload.dottedQuad()
    if isinstance(payload, dns.Record_TXT):
        return "|".join(s.decode() for s in payload.data)
    return str(payload.name)

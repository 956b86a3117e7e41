"""The reactor-stall test of issue 12: while a hostile message is being checked, the
gateway keeps answering other sessions.

A real gateway (SPF, DKIM, ARC and DMARC on port 25) and a real DNS server on loopback
serving the review's 16384-bit keys (TXT records of 255-octet strings).  The DNS server
holds its answer for the hostile key until a second session's NOOP has been answered,
so the order of events says whether the reactor was free while the check waited; the
key is then refused unparsed (RFC 8301), which the stored Authentication-Results says.
"""

from __future__ import annotations

import email
import os
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import TestCase

from jsmail.config import loadConfig
from jsmail.service import MailGateway
from jsmail.testing import DNSServer, delivered
from tests.test_authresults import folded
from tests.test_dkim import MESSAGE, keyData
from tests.test_dkimcheck import HUGE_RSA_REFUSED, hugeKey, refusePurePythonRSA, signedWith
from tests.test_emailauth import txt

SIGNATURES = 5
#: The review's H-4 field: 80,000 nested "(" and as many ")", 160 KB.
NESTED_COMMENTS = b"Authentication-Results: " + folded(b"(" * 80_000 + b")" * 80_000) + b"\r\n"


class SMTPClient(LineOnlyReceiver):
    """A plain SMTP client: :meth:`command` sends one line and fires with the reply's
    last line, events recorded in ``events`` as they arrive."""

    delimiter = b"\r\n"
    MAX_LENGTH = 4096

    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events
        self.waiting: list[defer.Deferred[bytes]] = []
        self.greeted: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append(self.greeted)

    def lineReceived(self, line: bytes) -> None:
        if line[3:4] == b"-":
            return
        self.events.append(f"{self.name}: {line.decode('ascii', 'replace')}")
        self.waiting.pop(0).callback(line)

    def command(self, line: bytes) -> defer.Deferred[bytes]:
        waiting: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append(waiting)
        self.transport.write(line + b"\r\n")
        return waiting

    def send(self, data: bytes) -> defer.Deferred[bytes]:
        """The message after DATA's 354, dot-stuffed, and the final dot."""
        return self.command(data.replace(b"\r\n.", b"\r\n..").rstrip(b"\r\n") + b"\r\n.")


class ReactorStallTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.events: list[str] = []
        self.key = keyData("rsa")
        self.dns = DNSServer({"big.test": [(f"s{i}._domainkey.big.test", txt(hugeKey())) for i in range(SIGNATURES)]})
        self.release: defer.Deferred[None] = defer.Deferred()
        self.holdKeyAnswers()
        dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        config = loadConfig(settings={
            "server": {"hostname": "mx.test", "data": self.data, "domains": ["localhost"]},
            "smtp": {"listen": ["tcp:0:interface=127.0.0.1"], "submission": [], "smtps": []},
            "remote": {"dns_server": dnsAddress}, "queue": {"delivery_process": False},
            "policy": {"authserv_id": "mx.test", "smtp": ["spf", "dkim", "arc", "dmarc"]},
        })
        self.gateway = MailGateway(config)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        [listener] = self.gateway.listeners
        port = yield listener.whenListening()
        self.port = port.getHost().port

    def holdKeyAnswers(self) -> None:
        """Questions about the hostile keys wait for :attr:`release`; the first is an event."""
        factory = self.dns.factory
        answer = factory.handleQuery

        def held(message: Any, proto: Any, address: Any) -> Any:
            if b"_domainkey.big.test" not in message.queries[0].name.name:
                return answer(message, proto, address)
            if "key asked" not in self.events:
                self.events.append("key asked")
            waiting: defer.Deferred[None] = defer.Deferred()
            waiting.addCallback(lambda _: answer(message, proto, address))
            self.release.addCallback(lambda _: waiting.callback(None))
            return waiting

        self.patch(factory, "handleQuery", held)

    @defer.inlineCallbacks
    def connect(self, name: str) -> Any:
        client = yield protocol.ClientCreator(reactor, SMTPClient, name, self.events).connectTCP("127.0.0.1", self.port)
        self.addCleanup(client.transport.loseConnection)
        yield client.greeted
        yield client.command(b"EHLO client.test")
        return client

    @defer.inlineCallbacks
    def delivered(self) -> Any:
        [message] = yield delivered(os.path.join(self.data, "mail", "localhost", "x"))
        return message

    @defer.inlineCallbacks
    def test_hugeKeysAndNestedCommentsDoNotStallOtherSessions(self) -> Any:
        """H-3 and H-4 in one message: five signatures naming 16384-bit keys and a
        160 KB Authentication-Results field of nested comments.  A second session's
        NOOP, sent while the first waits for its end-of-data reply, is answered first;
        the keys are refused without any RSA arithmetic, and the message is taken with
        dkim=permerror saying why."""
        called = refusePurePythonRSA(self)
        hostile = MESSAGE
        for i in range(SIGNATURES):
            hostile = signedWith(self.key, f"s{i}".encode(), b"big.test", b"rsa-sha256", hostile)
        hostile = NESTED_COMMENTS + hostile
        first = yield self.connect("first")
        second = yield self.connect("second")
        yield first.command(b"MAIL FROM:<a@big.test>")
        yield first.command(b"RCPT TO:<x@localhost>")
        yield first.command(b"DATA")
        del self.events[:]
        endOfData = first.send(hostile)
        while "key asked" not in self.events:
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield second.command(b"NOOP")
        self.release.callback(None)
        reply = yield endOfData
        self.assertEqual(self.events, ["key asked", "second: 250 2.0.0 OK", f"first: {reply.decode()}"])
        self.assertTrue(reply.startswith(b"250 2.0.0 "), reply)
        stored = yield self.delivered()
        self.assertNotIn(b"((((", stored)
        [results] = email.message_from_bytes(stored).get_all("Authentication-Results") or []
        results = " ".join(results.split())
        self.assertEqual(results.count("dkim=permerror"), SIGNATURES, results)
        self.assertIn(HUGE_RSA_REFUSED, results)
        self.assertEqual(called, [])

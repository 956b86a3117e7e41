"""Delivery status notifications across hops, over real sockets: a jsmail gateway
relaying to another (which offers DSN, so NOTIFY, ORCPT, ENVID and RET travel with the
message and the last hop reports), and to aiosmtpd (which does not, so the relaying
gateway says "relayed")."""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from tests.test_dsn import groups, report
from tests.test_remote import RemoteTestCase, freePort

BODY = b"Subject: tell me\r\n\r\nDid it arrive?\r\n"


def transaction(port: int, sender: str, mailOptions: list[str], recipients: list[tuple[str, list[str]]]) -> Any:
    """One SMTP transaction with per-recipient options (blocking)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail(sender, mailOptions)[0] == 250
        for address, options in recipients:
            assert client.rcpt(address, options)[0] == 250
        return client.data(BODY)


class HopTests(RemoteTestCase):
    @defer.inlineCallbacks
    def test_dsnParametersTravelToTheLastHop(self) -> Any:
        """A relays to B, which offered DSN: A owes no notice, B reports both
        recipients in one notice carrying the client's ENVID and ORCPT (in xtext), and
        returns the whole message as RET=FULL asked, since one of them failed."""
        portA, portB = freePort(), freePort()
        aliases = os.path.abspath(self.mktemp())
        with open(aliases, "w") as f:
            f.write("gone: |exit 100\n")
        receiver = yield self.gateway(server__hostname="b.test", server__domains=["example.test"],
                                      smtp__listen=f"tcp:{portB}:interface=127.0.0.1", local__aliases=aliases,
                                      remote__routes=[{"domain": "a.test", "host": "127.0.0.1", "port": portA}])
        sender = yield self.gateway(server__hostname="a.test", server__domains=["a.test"],
                                    smtp__listen=f"tcp:{portA}:interface=127.0.0.1",
                                    remote__routes=[{"domain": "example.test", "host": "127.0.0.1", "port": portB}])
        yield deferToThread(transaction, portA, "alice@a.test", ["RET=FULL", "ENVID=QQ+2B1"], [
            ("bob@example.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@example.test"]),
            ("gone@example.test", [])])
        yield self.waitFor(lambda: self.mailbox(sender, "alice", "a.test"), "the notice from b.test")
        self.assertEqual(len(self.mailbox(receiver, "bob", "example.test")), 1)
        yield task.deferLater(reactor, 0.3, lambda: None)
        [notice] = self.mailbox(sender, "alice", "a.test")
        message, blocks, returned = report(notice)
        self.assertEqual((blocks[0]["Reporting-MTA"], blocks[0]["Original-Envelope-Id"]), ("dns; b.test", "QQ+2B1"))
        self.assertEqual(groups(notice), [("rfc822; bob@example.test", "delivered", "2.0.0"),
                                          ("rfc822; gone@example.test", "failed", "5.3.0")])
        self.assertEqual(blocks[1]["Original-Recipient"], "rfc822; Bob+2Bx@example.test")
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn(b"Did it arrive?", notice)

    @defer.inlineCallbacks
    def test_relayToAPeerWithoutDSNGetsARelayedNotice(self) -> Any:
        """RFC 3461 section 5.2.2: aiosmtpd offers no DSN, so NOTIFY=SUCCESS is answered
        by the relaying gateway, with the action "relayed"."""
        gateway = yield self.gateway()
        yield deferToThread(transaction, gateway.smtpPort, "a@localhost", [],
                            [("bob@example.test", ["NOTIFY=SUCCESS"]), ("carol@example.test", [])])
        yield self.waitFor(lambda: self.mailbox(gateway, "a"), "the relayed notice")
        self.assertEqual([r for _, r, _ in self.sink.received], [["bob@example.test", "carol@example.test"]])
        [notice] = self.mailbox(gateway, "a")
        [group] = report(notice)[1][1:]
        self.assertEqual((group["Final-Recipient"], group["Action"], group["Remote-MTA"]),
                         ("rfc822; bob@example.test", "relayed", "dns; mx1.example.test"))

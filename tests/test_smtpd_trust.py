"""What smtpd refuses so that nobody can use jsmail against a third party: spoofed
senders, backscatter, mail to addresses that do not exist.  Each test is an attack from
the security review (issue "qmail's trust model"), as a dialog in memory."""

from __future__ import annotations

import base64

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.trial.unittest import SynchronousTestCase

from jsmail.auth import AnyOfCheckers, MailRealm
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog

QUEUED = rb"250 2\.0\.0 Queued as \w+\r\n"


def submission(senderRule: str = "own") -> Dialog:
    """A submission session, TLS from the start, logged in as alice@example.test."""
    users = InMemoryUsernamePasswordDatabaseDontUse(**{"alice@example.test": b"pw"})
    d = Dialog(ServerSettings(hostname="mx.example.test"), MemoryQueue(), implicitTLS=True,
               portal=Portal(MailRealm(["example.test"], senderRule), [AnyOfCheckers([users])]),
               policies=(RelayControl(lambda domain: domain == "example.test"),))
    d.read()
    d.send(b"EHLO client.test\r\n")
    plain = base64.b64encode(b"\0alice@example.test\0pw")
    assert d.send(b"AUTH PLAIN " + plain + b"\r\n").startswith(b"235 ")
    return d


def port25() -> Dialog:
    d = Dialog(ServerSettings(hostname="mx.example.test"), MemoryQueue(),
               policies=(RelayControl(lambda domain: domain == "example.test"),))
    d.read()
    d.send(b"EHLO client.test\r\n")
    return d


def transaction(d: Dialog, sender: str, recipient: str, header: str) -> bytes:
    """One message; the reply to its final dot."""
    assert d.send(f"MAIL FROM:<{sender}>\r\n".encode()).startswith(b"250 ")
    assert d.send(f"RCPT TO:<{recipient}>\r\n".encode()).startswith(b"250 ")
    assert d.send(b"DATA\r\n").startswith(b"354 ")
    return d.send(header.replace("\n", "\r\n").encode() + b"\r\nHello.\r\n.\r\n")


class SenderSpoofingTests(SynchronousTestCase):
    """M-11: an authenticated user could send as anyone."""

    def test_senderRuleIsOwnByDefault(self) -> None:
        from jsmail.config import loadConfig

        self.assertEqual(loadConfig(None).auth.senderRule, "own")
        d = submission()
        self.assertEqual(d.send(b"MAIL FROM:<ceo@example.test>\r\n"),
                         b"553 5.7.1 Sender <ceo@example.test> not allowed for user alice@example.test\r\n")

    def test_headerFromSpoofingRefused(self) -> None:
        """The review's reproduction: envelope alice, header From the CEO."""
        d = submission()
        out = transaction(d, "alice@example.test", "bob@elsewhere.test",
                          'From: "The CEO" <ceo@example.test>\nSubject: pay this\n')
        self.assertEqual(out, b"550 5.7.1 From header address not allowed for this user\r\n")
        self.assertEqual(d.sink.messages, {})

    def test_headerSenderSpoofingRefused(self) -> None:
        d = submission()
        out = transaction(d, "alice@example.test", "bob@elsewhere.test",
                          "From: Alice <alice@example.test>\nSender: ceo@example.test\n")
        self.assertEqual(out, b"550 5.7.1 Sender header address not allowed for this user\r\n")

    def test_secondAuthorOrFoldedFromRefused(self) -> None:
        d = submission()
        out = transaction(d, "alice@example.test", "bob@elsewhere.test",
                          "From: Alice <alice@example.test>,\n (folded) CEO <ceo@example.test>\n")
        self.assertEqual(out, b"550 5.7.1 From header address not allowed for this user\r\n")

    def test_ownFromAccepted(self) -> None:
        d = submission()
        out = transaction(d, "alice@example.test", "bob@elsewhere.test",
                          'From: "Alice (work)" <ALICE@Example.Test>\nSubject: hi\n')
        self.assertRegex(out, QUEUED)

    def test_anyRuleAllowsOtherAuthors(self) -> None:
        d = submission("any")
        self.assertRegex(transaction(d, "ceo@example.test", "bob@elsewhere.test", "From: ceo@example.test\n"),
                         QUEUED)

    def test_unauthenticatedMailIsNotHeldToTheRule(self) -> None:
        """The rule is about users; port 25 mail from strangers is DMARC's business."""
        d = port25()
        self.assertRegex(transaction(d, "x@else.test", "bob@example.test", "From: ceo@example.test\n"), QUEUED)


class BackscatterTests(SynchronousTestCase):
    """M-1: a Delivered-To line for the recipient made local delivery fail the message
    after 250, and the bounce carried the attacker's content to the forged sender."""

    def test_backscatterViaDeliveredTo(self) -> None:
        d = port25()
        out = transaction(d, "victim@victim.test", "anything@example.test",
                          "Delivered-To: anything@example.test\nFrom: Your Bank <security@bank.example>\n"
                          "Subject: Urgent\n")
        self.assertEqual(out, b"554 5.4.6 Mail loop: the message already has a Delivered-To line for "
                              b"<anything@example.test>\r\n")
        self.assertEqual(d.sink.messages, {})

    def test_deliveredToComparedWithoutCaseAndAcrossPieces(self) -> None:
        d = port25()
        d.send(b"MAIL FROM:<victim@victim.test>\r\nRCPT TO:<other@example.test>\r\nRCPT TO:<Any@Example.test>\r\n")
        d.send(b"DATA\r\n")
        message = b"X: y\r\nDELIVERED-TO:   any@example.TEST  \r\n\r\nbody\r\n.\r\n"
        out = b"".join(d.send(message[i : i + 3]) for i in range(0, len(message), 3))
        self.assertTrue(out.startswith(b"554 5.4.6 "), out)

    def test_deliveredToAnotherAddressIsNoLoop(self) -> None:
        d = port25()
        self.assertRegex(transaction(d, "list@lists.test", "bob@example.test",
                                     "Delivered-To: list@lists.test\nSubject: digest\n"), QUEUED)

    def test_deliveredToInTheBodyIsNoLoop(self) -> None:
        d = port25()
        self.assertRegex(transaction(d, "a@else.test", "bob@example.test",
                                     "Subject: hi\n\nDelivered-To: bob@example.test\n"), QUEUED)

"""What smtpd refuses so that nobody can use jsmail against a third party: spoofed
senders, backscatter, mail to addresses that do not exist.  Each test is an attack from
the security review (issue "qmail's trust model"), as a dialog in memory."""

from __future__ import annotations

import base64
from typing import Any

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


class UnknownRecipientTests(SynchronousTestCase):
    """M-8 and M-1: every local part was accepted (and got four directories), so a
    stranger could fill the disk's inodes, and any bounce had a valid recipient."""

    def setUp(self) -> None:
        import os

        from jsmail.auth import setPassword

        self.root = self.mktemp()
        self.mail = os.path.join(self.root, "mail")
        self.users = os.path.join(self.root, "users")
        os.makedirs(os.path.join(self.mail, "example.test", "maildirowner", "new"))
        os.makedirs(os.path.join(self.users, "example.test", "virtual"))
        with open(os.path.join(self.users, "example.test", "virtual", ".qmail-list"), "w") as f:
            f.write("./Maildir/\n")
        self.aliases = os.path.join(self.root, "aliases")
        with open(self.aliases, "w") as f:
            f.write("staff: virtual@example.test\n")
        self.passwd = os.path.join(self.root, "passwd")
        setPassword(self.passwd, "carol", "pw")

    def dialog(self, clock: Any = None) -> Dialog:
        from jsmail._threads import runNow
        from jsmail.auth import HashedPasswordFile
        from jsmail.local.directory import RecipientDirectory
        from jsmail.local.settings import LocalSettings
        from jsmail.policy.recipients import KnownRecipients

        settings = LocalSettings(usersDir=self.users, aliases=self.aliases, localDomains=("example.test",),
                                 virtualDomains=("virt.test:virtual",))
        directory = RecipientDirectory(self.mail, settings, "mx.example.test",
                                       HashedPasswordFile(self.passwd).userNames)
        d = Dialog(ServerSettings(hostname="mx.example.test", postmasterDomain="example.test"), MemoryQueue(),
                   policies=(RelayControl(lambda domain: domain in ("example.test", "virt.test")),
                             KnownRecipients(directory, runNow, clock)))
        d.read()
        d.send(b"EHLO client.test\r\nMAIL FROM:<someone@else.test>\r\n")
        return d

    def rcpt(self, d: Dialog, address: str) -> bytes:
        return d.send(f"RCPT TO:<{address}>\r\n".encode())

    def test_unknownRecipientRefusedAtRcpt(self) -> None:
        self.assertEqual(self.rcpt(self.dialog(), "nobody@example.test"),
                         b"550 5.1.1 No such user here: <nobody@example.test>\r\n")

    def test_randomLocalPartsMakeNoMaildirs(self) -> None:
        """The review's reproduction, in small: 100 new local parts, no new directory."""
        import os

        before = sum(len(dirs) for _, dirs, _ in os.walk(self.root))
        for session in range(10):  # (more than 20 refusals in one session end it with 421)
            d = self.dialog()
            for i in range(10):
                self.assertTrue(self.rcpt(d, f"r{session}{i}x@example.test").startswith(b"550 5.1.1 "))
        self.assertEqual(sum(len(dirs) for _, dirs, _ in os.walk(self.root)), before)

    def test_knownRecipientsAccepted(self) -> None:
        d = self.dialog()
        for address in ("maildirowner@example.test", "MailDirOwner@Example.Test", "virtual@example.test",
                        "virtual-list@example.test", "staff@example.test", "staff+x@example.test",
                        "carol@example.test", "list@virt.test"):
            self.assertEqual(self.rcpt(d, address), b"250 2.1.5 Recipient OK\r\n", address)

    def test_removedMailboxRefusedOnceTheMemoryExpires(self) -> None:
        """A recipient found is taken without a lookup for a few seconds, then looked
        up again: a Maildir removed meanwhile is refused from then on."""
        import os
        import shutil

        from twisted.internet.task import Clock

        from jsmail.policy.recipients import KNOWN_FOR

        clock = Clock()
        d = self.dialog(clock)
        self.assertEqual(self.rcpt(d, "maildirowner@example.test"), b"250 2.1.5 Recipient OK\r\n")
        shutil.rmtree(os.path.join(self.mail, "example.test", "maildirowner"))
        self.assertEqual(self.rcpt(d, "maildirowner@example.test"), b"250 2.1.5 Recipient OK\r\n")
        clock.advance(KNOWN_FOR)
        self.assertTrue(self.rcpt(d, "maildirowner@example.test").startswith(b"550 5.1.1 "))

    def test_extensionWithoutInstructionsRefused(self) -> None:
        d = self.dialog()
        self.assertTrue(self.rcpt(d, "virtual-nonexistent@example.test").startswith(b"550 5.1.1 "))
        self.assertTrue(self.rcpt(d, "other@virt.test").startswith(b"550 5.1.1 "))

    def test_postmasterAlwaysAccepted(self) -> None:
        """I-3: <postmaster> was postmaster@<hostname>, refused when the host name is no
        local domain; RFC 5321 section 4.5.1 says it must be taken."""
        d = self.dialog()
        self.assertEqual(self.rcpt(d, "postmaster"), b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(self.rcpt(d, "PostMaster@example.test"), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)
        [(envelope, _)] = d.sink.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["postmaster@example.test"])

    def test_percentHackStaysLocal(self) -> None:
        """Local parts with %, ! or a quoted @ name a local mailbox, never another host."""
        from jsmail.route import Router
        from jsmail.testing import RecordingAgent

        d = self.dialog()
        for address in ("victim%elsewhere.test@example.test", "elsewhere.test!victim@example.test",
                        '"victim@elsewhere.test"@example.test'):
            self.assertTrue(self.rcpt(d, address).startswith(b"550 5.1.1 "), address)
        local, remote = RecordingAgent(), RecordingAgent()
        router = Router(["example.test"], local, remote)
        for address in ("victim%elsewhere.test@example.test", '"victim@elsewhere.test"@example.test'):
            self.assertIs(router.agentFor(address), local)

    def test_duplicateRecipientsDeliveredOnce(self) -> None:
        d = self.dialog()
        for address in ("carol@example.test", "CAROL@example.test", "staff@example.test", "carol@example.test"):
            self.assertEqual(self.rcpt(d, address), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)
        [(envelope, _)] = d.sink.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["carol@example.test", "staff@example.test"])


class CatchAllTests(SynchronousTestCase):
    def test_catchAllOnlyInTheTryItDefault(self) -> None:
        from jsmail.config import loadConfig

        self.assertTrue(loadConfig().local.catchAll, "the README's someone@localhost path")
        self.assertFalse(loadConfig(overrides={"server.domains": ["example.test"]}).local.catchAll)
        self.assertFalse(loadConfig(overrides={"server.domains": ["localhost", "example.test"]}).local.catchAll)
        self.assertTrue(loadConfig(overrides={"server.domains": ["example.test"], "local.catch_all": True}
                                   ).local.catchAll)

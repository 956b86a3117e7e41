"""Local delivery instructions: .qmail files, aliases, mbox, programs and forwards,
on real files in a temporary directory, with real processes."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jsmail.config import loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery, LocalSettings
from jsmail.local.aliases import AliasesError, parseAliases
from jsmail.local.dotqmail import (
    Forward,
    Maildir,
    Mbox,
    Program,
    extParts,
    fileCandidates,
    hostParts,
    localCandidates,
    parseInstructions,
)
from jsmail.local.mbox import fromLine
from jsmail.testing import MemoryQueue
from tests.test_integration import GatewayTestCase

MESSAGE = b"Subject: hi\r\n\r\nFrom the start\r\n>From quoted\r\nbody\r\n"


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(f, *args, **kwargs)


class ParseTests(TestCase):
    def test_each_kind(self) -> None:
        text = "# comment\n|exec cat > out  \n./Maildir/\n/var/mail/joe\n&joe@example.net\nbob@example.com\n+other\n"
        parsed = parseInstructions(text)
        self.assertEqual(parsed.lines, (Program("exec cat > out"), Maildir("./Maildir/"), Mbox("/var/mail/joe"),
                                        Forward("joe@example.net"), Forward("bob@example.com")))
        self.assertFalse(parsed.forwardOnly)

    def test_blank_first_line_is_temporary(self) -> None:
        e = self.assertRaises(DeliveryError, parseInstructions, "\n./Maildir/\n")
        self.assertFalse(e.permanent)
        self.assertEqual((e.reply.enhanced, e.detail), ("4.2.1", "first line of .qmail file is blank"))

    def test_later_blank_lines_ignored(self) -> None:
        self.assertEqual(parseInstructions("./Maildir/\n\n \n./mbox").lines, (Maildir("./Maildir/"), Mbox("./mbox")))

    def test_plus_list_is_forward_only(self) -> None:
        self.assertTrue(parseInstructions("+list\n&a@b.example\n").forwardOnly)

    def test_forward_must_be_bare(self) -> None:
        e = self.assertRaises(DeliveryError, parseInstructions, "&Joe <joe@example.net>\n")
        self.assertTrue(e.permanent)
        self.assertEqual(str(e.reply), "550 5.1.3 Unable to forward: not a bare address")


class LookupOrderTests(TestCase):
    def test_reference_examples(self) -> None:
        """Section 9.2's examples, with DEFAULT for each default file."""
        self.assertEqual(fileCandidates("-", "foo-bar"), [
            (".qmail-foo-bar", None), (".qmail-foo-default", "bar"), (".qmail-default", "foo-bar")])
        self.assertEqual([name for name, _ in fileCandidates("-", "a-b-")],
                         [".qmail-a-b-", ".qmail-a-b-default", ".qmail-a-default", ".qmail-default"])
        self.assertEqual([name for name, _ in fileCandidates("-", "a-b-c")],
                         [".qmail-a-b-c", ".qmail-a-b-default", ".qmail-a-default", ".qmail-default"])

    def test_case_and_dots(self) -> None:
        self.assertEqual(fileCandidates("-", "Foo.Bar")[:2], [(".qmail-foo:bar", None), (".qmail-default", "Foo.Bar")])

    def test_user_candidates(self) -> None:
        self.assertEqual(localCandidates("joe-list-x", "-+"),
                         [("joe-list-x", "", ""), ("joe-list", "-", "x"), ("joe", "-", "list-x")])
        self.assertEqual(localCandidates("joe+tag", "-+"), [("joe+tag", "", ""), ("joe", "-", "tag")])

    def test_env_parts(self) -> None:
        self.assertEqual(hostParts("mx.mail.example.org"), ("mx.mail.example", "mx.mail", "mx"))
        self.assertEqual(hostParts("localhost"), ("localhost", "localhost", "localhost"))
        self.assertEqual(extParts("a-b-c-d", "-"), ("b-c-d", "c-d", "d"))
        self.assertEqual(extParts("a", "-"), ("", "", ""))


class AliasesParseTests(TestCase):
    def test_syntax(self) -> None:
        text = ("# staff\nPostmaster: root\nstaff: alice@example.org, bob,\n"
                '   "|/bin/archive --list, staff"\n\nlog: /var/log/mail.mbox, /srv/Maildir/\n')
        aliases = parseAliases(text, "aliases", "mx.test")
        self.assertEqual(aliases, {
            "postmaster": (Forward("root@mx.test"),),
            "staff": (Forward("alice@example.org"), Forward("bob@mx.test"), Program("/bin/archive --list, staff")),
            "log": (Mbox("/var/log/mail.mbox"), Maildir("/srv/Maildir/")),
        })

    def test_include(self) -> None:
        files = {"/team": "a@x.example\n# c\nb@x.example, c@x.example\n"}
        aliases = parseAliases("team: :include:/team\n", "aliases", "mx.test", files.__getitem__)
        self.assertEqual(aliases["team"], tuple(Forward(f"{c}@x.example") for c in "abc"))

    def test_errors_name_file_and_line(self) -> None:
        e = self.assertRaises(AliasesError, parseAliases, "a: b\nno colon here\n", "/etc/aliases", "h")
        self.assertEqual(str(e), "/etc/aliases:2: expected 'name: target, ...', got 'no colon here'")
        e = self.assertRaises(AliasesError, parseAliases, "  b\n", "/etc/aliases", "h")
        self.assertIn("/etc/aliases:1: a continuation line", str(e))
        e = self.assertRaises(AliasesError, parseAliases, "a: :include:/x\n", "/etc/aliases", "h")
        self.assertIn(":include: is not allowed", str(e))


class FromLineTests(TestCase):
    def test_format(self) -> None:
        self.assertEqual(fromLine("a b@example.org", 1731000000 + 480), b"From a-b@example.org Thu Nov 07 17:28:00 2024\n")
        self.assertEqual(fromLine("", 0), b"From MAILER-DAEMON Thu Jan 01 00:00:00 1970\n")


class DeliveryTestCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.users = os.path.join(self.base, "users")
        self.home = os.path.join(self.users, "example.org", "joe")
        os.makedirs(self.home)
        self.queue = MemoryQueue()
        self.aliases = ""

    def agent(self, **settings: Any) -> LocalDelivery:
        return LocalDelivery(os.path.join(self.base, "mail"), runNow, "mx.test", reactor=reactor,
                             settings=LocalSettings(usersDir=self.users, aliases=self.aliases, **settings),
                             newMessage=self.queue.newMessage)

    def dotqmail(self, name: str, text: str, mode: int = 0o600) -> None:
        path = os.path.join(self.home, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def deliver(self, recipient: str, data: bytes = MESSAGE, sender: str = "a@b.example",
                **settings: Any) -> defer.Deferred[Any]:
        envelope = Envelope(sender, (Recipient(recipient),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(data))
        return self.agent(**settings).deliver(message, envelope.recipients).addCallback(lambda results: results[0])

    def read(self, *path: str) -> bytes:
        with open(os.path.join(self.home, *path), "rb") as f:
            return f.read()

    def maildirMessages(self, maildir: str) -> list[bytes]:
        new = os.path.join(maildir, "new")
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out


class InstructionTests(DeliveryTestCase):
    @defer.inlineCallbacks
    def test_maildir(self) -> Any:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.home, "Maildir", sub))
        self.dotqmail(".qmail", "# mine\n./Maildir/\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual((result.status, result.detail), (DeliveryStatus.DELIVERED, "did 1+0+0"))
        self.assertEqual(self.maildirMessages(os.path.join(self.home, "Maildir")), [
            b"Return-Path: <a@b.example>\nDelivered-To: joe@example.org\n" + MESSAGE.replace(b"\r\n", b"\n")])

    @defer.inlineCallbacks
    def test_missing_maildir_is_temporary(self) -> Any:
        self.dotqmail(".qmail", "./Maildir/\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertEqual(result.reply.enhanced, "4.2.1")
        self.assertIn("unable to chdir to maildir", result.detail)

    @defer.inlineCallbacks
    def test_mbox_with_from_quoting(self) -> Any:
        self.dotqmail(".qmail", "./mbox\n")
        yield self.deliver("joe@example.org")
        yield self.deliver("joe@example.org", data=b"Subject: 2\r\n\r\nno final newline")
        mbox = self.read("mbox")
        first, second = mbox.split(b"\n\nFrom a@b.example ")
        self.assertRegex(first, rb"^From a@b\.example \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\n")
        self.assertEqual(first.split(b"\n", 1)[1] + b"\n", b"Return-Path: <a@b.example>\nDelivered-To: joe@example.org\n"
                         b"Subject: hi\n\n>From the start\n>>From quoted\nbody\n")
        self.assertTrue(second.endswith(b"Delivered-To: joe@example.org\nSubject: 2\n\nno final newline\n\n"))

    @defer.inlineCallbacks
    def test_program_environment_and_input(self) -> Any:
        self.dotqmail(".qmail-list-default", "|env > env.out; cat > stdin.out\n")
        result = yield self.deliver("joe-list-Foo.Bar@example.org")
        self.assertEqual((result.status, result.detail), (DeliveryStatus.DELIVERED, "did 0+0+1"))
        env = dict(line.split("=", 1) for line in self.read("env.out").decode().splitlines() if "=" in line)
        expected = {"SENDER": "a@b.example", "NEWSENDER": "a@b.example", "RECIPIENT": "joe-list-Foo.Bar@example.org",
                    "USER": "joe", "HOME": self.home, "HOST": "example.org", "HOST2": "example", "HOST3": "example",
                    "LOCAL": "joe-list-Foo.Bar", "EXT": "list-Foo.Bar", "EXT2": "Foo.Bar", "EXT3": "", "EXT4": "",
                    "DEFAULT": "Foo.Bar", "RPLINE": "Return-Path: <a@b.example>",
                    "DTLINE": "Delivered-To: joe-list-Foo.Bar@example.org"}
        self.assertEqual({k: env.get(k) for k in expected}, expected)
        self.assertRegex(env["UFLINE"], r"^From a@b\.example \w{3} \w{3} \d\d ")
        # the message, LF-ended, without Return-Path and Delivered-To (preline adds them)
        self.assertEqual(self.read("stdin.out"), MESSAGE.replace(b"\r\n", b"\n"))

    @defer.inlineCallbacks
    def test_exit_100_bounces(self) -> Any:
        self.dotqmail(".qmail", "|echo no such list; exit 100\n./never\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual((result.status, str(result.reply)), (DeliveryStatus.PERMANENT, "554 5.3.0 no such list"))
        self.assertFalse(os.path.exists(os.path.join(self.home, "never")))

    @defer.inlineCallbacks
    def test_exit_111_retries(self) -> Any:
        self.dotqmail(".qmail", "|echo disk full >&2; exit 111\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual((result.status, str(result.reply)), (DeliveryStatus.TEMPORARY, "451 4.3.0 disk full"))

    @defer.inlineCallbacks
    def test_exit_99_stops_but_forwards(self) -> Any:
        self.dotqmail(".qmail", "&fwd@example.net\n|exit 99\n./never\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertTrue(result.detail.startswith("did 0+1+1\nqp "), result.detail)
        self.assertFalse(os.path.exists(os.path.join(self.home, "never")))
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["fwd@example.net"])

    @defer.inlineCallbacks
    def test_killed_after_timeout_is_temporary(self) -> Any:
        self.dotqmail(".qmail", "|sleep 60 & sleep 60\n")
        result = yield self.deliver("joe@example.org", programTimeout=0.5)
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn("killed", result.reply.text)

    @defer.inlineCallbacks
    def test_forward_envelope_and_delivered_to(self) -> Any:
        self.dotqmail(".qmail", "&one@example.net\ntwo@example.com\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        [(envelope, data)] = self.queue.messages.values()
        self.assertEqual(envelope.sender, "a@b.example")
        self.assertEqual([r.address for r in envelope.recipients], ["one@example.net", "two@example.com"])
        self.assertEqual(data, b"Delivered-To: joe@example.org\r\n" + MESSAGE)

    @defer.inlineCallbacks
    def test_forward_from_owner(self) -> Any:
        """With .qmail-list-owner, forwards of joe-list come from joe-list-owner (9.4);
        a bounce's null sender stays null."""
        self.dotqmail(".qmail-list", "&member@example.net\n")
        self.dotqmail(".qmail-list-owner", "&joe@example.org\n")
        yield self.deliver("joe-list@example.org")
        yield self.deliver("joe-list@example.org", sender="")
        senders = sorted(envelope.sender for envelope, _ in self.queue.messages.values())
        self.assertEqual(senders, ["", "joe-list-owner@example.org"])

    @defer.inlineCallbacks
    def test_failure_stops_forwards(self) -> Any:
        self.dotqmail(".qmail", "&one@example.net\n|exit 111\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertEqual(self.queue.messages, {})

    @defer.inlineCallbacks
    def test_loop_detected(self) -> Any:
        self.dotqmail(".qmail", "./mbox\n")
        data = b"Received: x\r\nDelivered-To: joe@example.org\r\nSubject: x\r\n\r\nbody\r\n"
        result = yield self.deliver("joe@example.org", data=data)
        self.assertEqual((result.status, str(result.reply)), (
            DeliveryStatus.PERMANENT, "550 5.4.6 This message is looping: it already has my Delivered-To line"))
        other = yield self.deliver("joe@example.org", data=b"Subject: x\r\n\r\nDelivered-To: joe@example.org\r\n")
        self.assertEqual(other.status, DeliveryStatus.DELIVERED, "only the header counts")

    @defer.inlineCallbacks
    def test_executable_file_is_forward_only(self) -> Any:
        self.dotqmail(".qmail", "|true\n", mode=0o700)
        result = yield self.deliver("joe@example.org")
        path = os.path.join(self.home, ".qmail")
        self.assertEqual((result.status, str(result.reply), result.detail), (
            DeliveryStatus.TEMPORARY, "451 4.7.0 The mailbox's delivery instructions are not safe to follow",
            f"{path} has prog delivery but has x bit set"))


class LookupTests(DeliveryTestCase):
    """Which file decides, on real files (section 9.2)."""

    def marker(self, name: str) -> None:
        self.dotqmail(name, f"./{name}.mbox\n")

    @defer.inlineCallbacks
    def assertChosen(self, recipient: str, name: str) -> Any:
        result = yield self.deliver(recipient)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        self.assertTrue(os.path.exists(os.path.join(self.home, f"{name}.mbox")), f"{recipient} -> {name}")
        os.unlink(os.path.join(self.home, f"{name}.mbox"))

    @defer.inlineCallbacks
    def test_default_chain(self) -> Any:
        for name in (".qmail-a-b-c", ".qmail-a-b-default", ".qmail-a-default", ".qmail-default", ".qmail"):
            self.marker(name)
        yield self.assertChosen("joe-a-b-c@example.org", ".qmail-a-b-c")
        yield self.assertChosen("joe-a-b-d@example.org", ".qmail-a-b-default")
        yield self.assertChosen("joe-a-x@example.org", ".qmail-a-default")
        yield self.assertChosen("joe-zzz@example.org", ".qmail-default")
        yield self.assertChosen("Joe@example.org", ".qmail")
        yield self.assertChosen("joe+a-b-c@example.org", ".qmail-a-b-c")

    @defer.inlineCallbacks
    def test_other_separator(self) -> Any:
        self.marker(".qmail-tag")
        result = yield self.deliver("joe_tag@example.org", separator="_")
        self.assertEqual(result.detail, "did 1+0+0")
        self.assertTrue(os.path.exists(os.path.join(self.home, ".qmail-tag.mbox")))
        other = yield self.deliver("joe_tag@example.org")
        self.assertEqual(other.detail, f"maildir {self.base}/mail/example.org/joe_tag")

    @defer.inlineCallbacks
    def test_no_file_for_extension_bounces(self) -> Any:
        self.marker(".qmail")
        result = yield self.deliver("joe-nothing@example.org")
        self.assertEqual((result.status, str(result.reply)),
                         (DeliveryStatus.PERMANENT, "550 5.1.1 Sorry, no mailbox here by that name"))
        plus = yield self.deliver("joe+x@example.org", plusExtensions=False)
        self.assertEqual(plus.status, DeliveryStatus.DELIVERED, "joe+x is not joe's extension without plus")

    @defer.inlineCallbacks
    def test_empty_file_and_no_file_use_default_maildir(self) -> Any:
        self.dotqmail(".qmail", "")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.detail, f"maildir {self.base}/mail/example.org/joe")
        other = yield self.deliver("nobody@example.org")
        self.assertEqual(other.detail, f"maildir {self.base}/mail/example.org/nobody")

    @defer.inlineCallbacks
    def test_domain_directory_catches_other_names(self) -> Any:
        domain = os.path.join(self.users, "example.org")
        with open(os.path.join(domain, ".qmail-sales"), "w") as f:
            f.write("./sales.mbox\n")
        result = yield self.deliver("Sales@example.org")
        self.assertEqual(result.detail, "did 1+0+0")
        self.assertTrue(os.path.exists(os.path.join(domain, "sales.mbox")))

    @defer.inlineCallbacks
    def test_world_writable_file_is_temporary(self) -> Any:
        self.dotqmail(".qmail", "./mbox\n", mode=0o666)
        result = yield self.deliver("joe@example.org")
        path = os.path.join(self.home, ".qmail")
        self.assertEqual((result.status, str(result.reply), result.detail), (
            DeliveryStatus.TEMPORARY, "451 4.7.0 The mailbox's delivery instructions are not safe to follow",
            f".qmail file {path} is writable"))


class AliasDeliveryTests(DeliveryTestCase):
    @defer.inlineCallbacks
    def test_alias_targets(self) -> Any:
        self.aliases = os.path.join(self.base, "aliases")
        with open(self.aliases, "w") as f:
            f.write(f"staff: {self.base}/staff.mbox, boss@example.net,\n  \"|cat > {self.base}/prog.out\"\n")
        result = yield self.deliver("Staff+x@example.org")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        self.assertTrue(result.detail.startswith("did 1+1+1"), result.detail)
        with open(os.path.join(self.base, "prog.out"), "rb") as f:
            self.assertEqual(f.read(), MESSAGE.replace(b"\r\n", b"\n"))
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["boss@example.net"])

    @defer.inlineCallbacks
    def test_bad_file_is_temporary(self) -> Any:
        self.aliases = os.path.join(self.base, "aliases")
        with open(self.aliases, "w") as f:
            f.write("broken\n")
        result = yield self.deliver("joe@example.org")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn(f"{self.aliases}:1: expected", result.detail)


WRITER = """
import io, sys
from jsmail.local.mbox import appendMbox
path, tag = sys.argv[1], sys.argv[2]
body = b"".join(b"%s line %d\\n" % (tag.encode(), i) for i in range(2000))
for n in range(20):
    appendMbox(path, b"From " + tag.encode() + b" Thu Jan 01 00:00:00 1970\\n", b"", io.BytesIO(body))
"""


class MboxLockTests(TestCase):
    timeout = 60

    def writer(self, path: str, tag: str) -> defer.Deferred[Any]:
        from twisted.internet.utils import getProcessOutputAndValue

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        return getProcessOutputAndValue(sys.executable, ["-c", WRITER, path, tag], env=env)

    @defer.inlineCallbacks
    def test_two_writers_never_interleave(self) -> Any:
        """Two processes append 20 messages of 2000 lines each at once; every message
        comes out whole."""
        path = os.path.abspath(self.mktemp())
        results = yield defer.gatherResults([self.writer(path, "A"), self.writer(path, "B")])
        self.assertEqual([code for _, _, code in results], [0, 0], results)
        with open(path, "rb") as f:
            messages = f.read().split(b"\n\n")
        self.assertEqual(messages[-1], b"")
        self.assertEqual(len(messages[:-1]), 40)
        for message in messages[:-1]:
            lines = message.split(b"\n")
            tag = lines[0][5:6]
            self.assertEqual(lines[1:], [b"%s line %d" % (tag, i) for i in range(2000)])

    @defer.inlineCallbacks
    def test_held_lock_times_out_temporarily(self) -> Any:
        import fcntl

        from jsmail.local.mbox import appendMbox

        path = os.path.abspath(self.mktemp())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with self.assertRaises(DeliveryError) as caught:
            yield deferToThread(appendMbox, path, b"From x\n", b"", io.BytesIO(b"x\n"), 0.3)
        e = caught.exception
        self.assertEqual((str(e.reply), e.permanent, e.detail), (
            "451 4.2.1 The mailbox file cannot be used now", False, f"{path} has been locked for 0.3 seconds straight"))
        self.assertEqual(os.path.getsize(path), 0)


class ConfigTests(TestCase):
    def test_bad_separator(self) -> None:
        from jsmail.config import ConfigError

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[local]\nextension_separator = "@"\n')
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn("local.extension_separator: expected one character", str(e))
        self.assertEqual(loadConfig(settings={"server": {"data": "/d"}}).local.usersDir, "/d/users")


class GatewayTests(GatewayTestCase):
    """Through the running gateway: SMTP in, the delivery process reads a .qmail."""

    @defer.inlineCallbacks
    def test_dotqmail_end_to_end(self) -> Any:
        users = os.path.join(self.dataDir, "users")
        home = os.path.join(users, "localhost", "joe")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail-list"), "w") as f:
            f.write("# a list\n./list.mbox\n&member@localhost\n")
        yield self.startGateway(local__users_dir=users)
        message = b"Subject: to the list\r\n\r\nFrom me\r\n"
        yield self.send(("a@example.net", ["joe-list@localhost"], message, []))
        yield self.queueDrained()
        with open(os.path.join(home, "list.mbox"), "rb") as f:
            mbox = f.read()
        self.assertRegex(mbox, rb"^From a@example\.net \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\n"
                               rb"Return-Path: <a@example\.net>\nDelivered-To: joe-list@localhost\nReceived: ")
        self.assertTrue(mbox.endswith(b"\nSubject: to the list\n\n>From me\n\n"), mbox)
        [forwarded] = self.mailbox("member@localhost")
        self.assertTrue(forwarded.startswith(b"Return-Path: <a@example.net>\nDelivered-To: member@localhost\n"),
                        forwarded)
        self.assertIn(b"\nDelivered-To: joe-list@localhost\n", forwarded)

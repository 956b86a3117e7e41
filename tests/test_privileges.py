"""Privilege separation, attack by attack: who a delivery runs as, what the spawner
will and will not do, whose files are followed with jsmail's rights, and what is
refused at start.  (The data tree and a whole gateway giving up root:
``test_runasuser``.)

Where privileges matter these run real processes as root, with throwaway system users
made by ``useradd --system`` and removed afterwards; they skip, saying why, when not
run as root.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pwd
import socket
import stat
import struct
import subprocess
import tempfile
import uuid
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jsmail.config import ConfigError, loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery
from jsmail.local.settings import LocalSettings
from jsmail.local.spawn import Request, SpawnClient, answerOutput
from jsmail.local.spawner import Spawner, SpawnerSettings
from jsmail.service import MailGateway
from jsmail.testing import MemoryQueue
from tests.privileged import openDirectory, ownerOf, pythonEnvironment, requireRoot, systemUser, userPython, writeAs

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def message(recipient: str, sender: str = "a@example.org") -> QueuedMessage:
    return QueuedMessage("Q1", Envelope(sender, (Recipient(recipient),)), lambda: io.BytesIO(MESSAGE))


class SpawnerTestCase(unittest.TestCase):
    """A real spawner, as root, and a local delivery agent talking to it."""

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        self.base = openDirectory(self)
        self.users = os.path.join(self.base, "users")
        os.makedirs(os.path.join(self.users, "localhost"))
        self.spawner = Spawner(SpawnerSettings(self.users, 100, 30.0, 4), reactor)
        self.spawner.privilegedStartService()
        self.addCleanup(self.spawner.stopService)

    def agent(self, **settings: Any) -> LocalDelivery:
        queue = MemoryQueue()
        agent = LocalDelivery(os.path.join(self.base, "mail"), deferToThread, "mx.test", reactor=reactor,
                              settings=LocalSettings(usersDir=self.users, minimumUid=100, **settings),
                              newMessage=queue.newMessage)
        connection = self.spawner.connection()
        assert connection is not None
        agent.spawn = SpawnClient.adopt(reactor, connection)
        self.addCleanup(agent.spawn.close)
        self.forwarded = queue
        return agent

    def user(self) -> pwd.struct_passwd:
        return systemUser(self, os.path.join(self.base, "home-" + uuid.uuid4().hex[:6]))

    @defer.inlineCallbacks
    def deliver(self, agent: LocalDelivery, recipient: str) -> Any:
        [result] = yield agent.deliver(message(recipient), [Recipient(recipient)])
        return result


class HomeDotqmailTests(SpawnerTestCase):
    """H-1: a system user's ~/.qmail is followed as that user, never as jsmail."""

    @defer.inlineCallbacks
    def test_homeDotqmailProgramRunsAsOwner(self) -> None:
        entry = self.user()
        writeAs(entry, os.path.join(entry.pw_dir, ".qmail"), "|id -u > ran-as; id -G >> ran-as\n")
        result = yield self.deliver(self.agent(homeDotQmail=True), f"{entry.pw_name}@localhost")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        path = os.path.join(entry.pw_dir, "ran-as")
        with open(path) as f:
            uid, groups = f.read().split("\n")[:2]
        self.assertEqual(int(uid), entry.pw_uid)
        self.assertEqual(groups.split(), [str(entry.pw_gid)])  # its own groups, none of root's
        self.assertEqual(ownerOf(path), entry.pw_uid)
        self.assertIn(f"as {entry.pw_name}", result.detail)

    @defer.inlineCallbacks
    def test_homeDotqmailMboxPathOpenedAsOwner(self) -> None:
        """An mbox line naming a file only root may write fails; the user's own is
        made by and for the user, 0600."""
        entry = self.user()
        closed = os.path.join(self.base, "root-only")
        os.mkdir(closed, 0o755)
        writeAs(entry, os.path.join(entry.pw_dir, ".qmail"), f"./mbox\n{closed}/cron-line\n")
        result = yield self.deliver(self.agent(homeDotQmail=True), f"{entry.pw_name}@localhost")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn("Permission denied", result.detail)
        self.assertFalse(os.path.exists(os.path.join(closed, "cron-line")))
        mbox = os.path.join(entry.pw_dir, "mbox")
        self.assertEqual((ownerOf(mbox), stat.S_IMODE(os.stat(mbox).st_mode)), (entry.pw_uid, 0o600))

    @defer.inlineCallbacks
    def test_homeDotqmailReadAsOwner(self) -> None:
        """A ~/.qmail that is a link to a file only root can read is not read: the
        process reading it is the user's."""
        entry = self.user()
        secret = os.path.join(self.base, "root-secret")
        with open(secret, "w") as f:
            f.write("|touch leaked\n")
        os.chmod(secret, 0o600)
        os.symlink(secret, os.path.join(entry.pw_dir, ".qmail"))
        result = yield self.deliver(self.agent(homeDotQmail=True), f"{entry.pw_name}@localhost")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn("unable to open", result.detail)
        self.assertFalse(os.path.exists(os.path.join(entry.pw_dir, "leaked")))

    @defer.inlineCallbacks
    def test_homeDotqmailForwardsAndDefaultStayWithJsmail(self) -> None:
        """Forwards come back to be queued by jsmail; no .qmail means jsmail's own
        default Maildir."""
        entry, other = self.user(), self.user()
        writeAs(entry, os.path.join(entry.pw_dir, ".qmail"), "&elsewhere@example.net\n")
        agent = self.agent(homeDotQmail=True)
        result = yield self.deliver(agent, f"{entry.pw_name}@localhost")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        [(envelope, data)] = self.forwarded.messages.values()
        self.assertTrue(data.startswith(f"Delivered-To: {entry.pw_name}@localhost\r\n".encode()))
        self.assertEqual([r.address for r in envelope.recipients], ["elsewhere@example.net"])
        result = yield self.deliver(agent, f"{other.pw_name}@localhost")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        self.assertEqual(len(glob.glob(os.path.join(self.base, "mail", "localhost", other.pw_name, "new", "*"))), 1)

    @defer.inlineCallbacks
    def test_concurrentDeliveriesAsOwnerAllArrive(self) -> None:
        """Deliveries under way at once send their descriptors ahead of their requests
        (Twisted sends one with each octet); the spawner must not take that for an
        attack and drop the connection, failing every one of them."""
        self.spawner = Spawner(SpawnerSettings(self.users, 100, 30.0, 10), reactor)
        self.spawner.privilegedStartService()
        self.addCleanup(self.spawner.stopService)
        entry = self.user()
        writeAs(entry, os.path.join(entry.pw_dir, ".qmail"), "./mbox\n")
        agent = self.agent(homeDotQmail=True, concurrency=10)
        results = yield defer.gatherResults([self.deliver(agent, f"{entry.pw_name}@localhost") for _ in range(10)])
        self.assertEqual([r.status for r in results], [DeliveryStatus.DELIVERED] * 10, [r.detail for r in results])
        with open(os.path.join(entry.pw_dir, "mbox"), "rb") as f:
            self.assertEqual(f.read().count(b"\nhello\n"), 10)

    @defer.inlineCallbacks
    def test_virtualHomeOwnedByUserIsFollowedAsThatUser(self) -> None:
        entry = systemUser(self)
        home = os.path.join(self.users, "localhost", "joe")
        os.mkdir(home)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        writeAs(entry, os.path.join(home, ".qmail"), "|id -u > ran-as\n")
        result = yield self.deliver(self.agent(), "joe@localhost")
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        self.assertEqual(ownerOf(os.path.join(home, "ran-as")), entry.pw_uid)

    @defer.inlineCallbacks
    def test_userOwnedHomeWaitsWithoutSpawner(self) -> None:
        """Without a spawner (jsmail not started as root) a user's .qmail is not
        followed as jsmail: the mail waits, and the log says why."""
        entry = systemUser(self)
        home = os.path.join(self.users, "localhost", "joe")
        os.mkdir(home)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        writeAs(entry, os.path.join(home, ".qmail"), "|touch ran\n")
        agent = self.agent()
        agent.spawn = None
        result = yield self.deliver(agent, "joe@localhost")
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn("needs the local spawner", result.detail)
        self.assertFalse(os.path.exists(os.path.join(home, "ran")))


class SpawnerProtocolTests(SpawnerTestCase):
    """The spawner's socket is a trust boundary: a compromised delivery process may
    say anything on it."""

    def request(self, user: str, uid: int, home: str) -> Request:
        return Request(0, user, uid, home, "x", "localhost", "x", "", "", False, "a@example.org", "x@localhost",
                       "-+", "mx.test", "From a@example.org\n", "Return-Path: <a@example.org>\n",
                       "Delivered-To: x@localhost\n", 10.0)

    @defer.inlineCallbacks
    def ask(self, request: Request) -> Any:
        agent = self.agent()
        assert agent.spawn is not None
        with tempfile.TemporaryFile() as copy:
            copy.write(b"hello\n")
            answer = yield agent.spawn.deliver(request, copy)
        return answerOutput(answer)

    @defer.inlineCallbacks
    def test_rootIsNeverActedFor(self) -> None:
        _, _, _, refused = yield self.ask(self.request("root", 0, "/root"))
        self.assertEqual(refused, "root is root: never delivered to as itself")

    @defer.inlineCallbacks
    def test_uidBelowMinimumIsRefused(self) -> None:
        entry = pwd.getpwnam("daemon") if "daemon" in {e.pw_name for e in pwd.getpwall()} else None
        if entry is None or entry.pw_uid >= 100:
            raise unittest.SkipTest("no system user with a uid below 100 here")
        _, _, _, refused = yield self.ask(self.request(entry.pw_name, entry.pw_uid, os.path.normpath(entry.pw_dir)))
        self.assertIn("below the minimum_uid", refused)

    @defer.inlineCallbacks
    def test_anotherUsersHomeIsRefused(self) -> None:
        entry, victim = self.user(), self.user()
        _, _, _, refused = yield self.ask(self.request(entry.pw_name, entry.pw_uid, victim.pw_dir))
        self.assertIn("neither", refused)
        _, _, _, refused = yield self.ask(self.request(entry.pw_name, victim.pw_uid, entry.pw_dir))
        self.assertIn(f"not {victim.pw_uid}", refused)

    @defer.inlineCallbacks
    def test_malformedFramesAreRefusedOrDropped(self) -> None:
        """No descriptor, a directory as the message, not JSON: each refused with a
        reason; a frame over the limit: the connection is closed."""
        connection = self.spawner.connection()
        assert connection is not None
        self.addCleanup(connection.close)
        connection.settimeout(10)

        def answer() -> bytes:
            length = struct.unpack(">I", connection.recv(4, socket.MSG_WAITALL))[0]
            return connection.recv(length, socket.MSG_WAITALL)

        def send(frame: bytes, path: str | None) -> bytes:
            framed = struct.pack(">I", len(frame)) + frame
            if path is None:
                connection.sendall(framed)
                return answer()
            descriptor = os.open(path, os.O_RDONLY)
            try:
                socket.send_fds(connection, [framed], [descriptor])
            finally:
                os.close(descriptor)
            return answer()

        def exchange() -> list[bytes]:
            entry = pwd.getpwnam("nobody")
            request = self.request("nobody", entry.pw_uid, os.path.normpath(entry.pw_dir)).encode()
            answers = [send(b"{}", None), send(request, self.base), send(b"not json", __file__)]
            connection.sendall(struct.pack(">I", 10 * 1024 * 1024) + b"x" * 1000)
            answers.append(connection.recv(10))  # closed: b""
            return answers

        answers = yield deferToThread(exchange)
        self.assertIn("no message descriptor", json.loads(answers[0])["refused"])
        self.assertIn("not a regular file", json.loads(answers[1])["refused"])
        self.assertIn("not a JSON object", json.loads(answers[2])["refused"])
        self.assertEqual(answers[3], b"")


class VirtualUserPathTests(unittest.TestCase):
    """Virtual users' file lines (followed as jsmail's user) stay in their home."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.home = os.path.join(self.base, "users", "localhost", "joe")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(self.home)
        os.makedirs(self.outside)
        with open(os.path.join(self.home, ".qmail"), "w") as f:
            f.write(f"./mbox\n{self.outside}/mbox\n")

    def deliver(self, **settings: Any) -> Any:
        agent = LocalDelivery(os.path.join(self.base, "mail"), deferToThread, "mx.test", reactor=reactor,
                              settings=LocalSettings(usersDir=os.path.join(self.base, "users"), **settings))
        return agent.deliver(message("joe@localhost"), [Recipient("joe@localhost")])

    @defer.inlineCallbacks
    def test_virtualUserMboxOutsideHomeRefused(self) -> None:
        [result] = yield self.deliver()
        self.assertEqual((result.status, result.reply.enhanced), (DeliveryStatus.TEMPORARY, "4.7.0"))
        self.assertIn("allowed_paths", result.detail)
        self.assertFalse(os.path.exists(os.path.join(self.outside, "mbox")))

    @defer.inlineCallbacks
    def test_virtualUserLinkOutOfHomeRefused(self) -> None:
        os.symlink(self.outside, os.path.join(self.home, "link"))
        with open(os.path.join(self.home, ".qmail"), "w") as f:
            f.write("./link/mbox\n")
        [result] = yield self.deliver()
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertFalse(os.path.exists(os.path.join(self.outside, "mbox")))

    @defer.inlineCallbacks
    def test_allowedPathsLetsTheOperatorOpenMore(self) -> None:
        [result] = yield self.deliver(allowedPaths=(self.outside,))
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        self.assertTrue(os.path.exists(os.path.join(self.outside, "mbox")))

    @defer.inlineCallbacks
    def test_qmailFileOfAnotherUserIsRefused(self) -> None:
        requireRoot()
        entry = systemUser(self)
        os.chown(os.path.join(self.home, ".qmail"), entry.pw_uid, entry.pw_gid)
        [result] = yield self.deliver()
        self.assertEqual(result.status, DeliveryStatus.TEMPORARY)
        self.assertIn(f"belongs to uid {entry.pw_uid}", result.detail)


class AliasIncludeTests(unittest.TestCase):
    """An :include: list a user keeps gives addresses, never a program run as jsmail."""

    @defer.inlineCallbacks
    def test_includeOwnedByAUserGivesAddressesOnly(self) -> None:
        requireRoot()
        entry = systemUser(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        listed, hostile = os.path.join(base, "list"), os.path.join(base, "hostile")
        writeAs(entry, listed, "a@example.net\nb@example.net\n")
        writeAs(entry, hostile, "a@example.net\n|touch ran\n")
        aliases = os.path.join(base, "aliases")
        with open(aliases, "w") as f:
            f.write(f"team: :include:{listed}\nbad: :include:{hostile}\n")
        queue = MemoryQueue()
        agent = LocalDelivery(os.path.join(base, "mail"), deferToThread, "mx.test", reactor=reactor,
                              settings=LocalSettings(aliases=aliases), newMessage=queue.newMessage)
        [result] = yield agent.deliver(message("bad@localhost"), [Recipient("bad@localhost")])
        self.assertEqual((result.status, result.reply.enhanced), (DeliveryStatus.TEMPORARY, "4.7.0"))
        self.assertIn("only addresses are taken from it", result.detail)
        self.assertFalse(os.path.exists(os.path.join(base, "ran")))
        [result] = yield agent.deliver(message("team@localhost"), [Recipient("team@localhost")])
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        [(envelope, _)] = queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["a@example.net", "b@example.net"])


class StartTests(unittest.TestCase):
    """What is refused at start, in one line."""

    def config(self, **server: Any) -> Any:
        return loadConfig(settings={"server": {"data": self.mktemp(), **server},
                                    "smtp": {"listen": [], "submission": [], "smtps": []},
                                    "queue": {"delivery_process": False}})

    def test_serverUserMustExist(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig(None, {"server.user": "no-such-user-here"})
        self.assertEqual(str(caught.exception), "command line: server.user: no such user 'no-such-user-here'")

    def test_runningAsRootIsNoUser(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            MailGateway(self.config(user="root"))
        self.assertIn("server.user: user 'root' is root", str(caught.exception))

    def test_homeDotqmailRefusedWithoutRoot(self) -> None:
        """Not started as root, home_dotqmail is a configuration error: nothing may
        follow a user's .qmail as jsmail's own user.  Run for real as another user."""
        requireRoot()
        python = userPython(self)
        entry = systemUser(self)
        base = openDirectory(self)
        script = ("from jsmail.config import ConfigError, loadConfig\nfrom jsmail.service import MailGateway\n"
                  f"config = loadConfig(settings={{'server': {{'data': {os.path.join(base, 'data')!r}}}, "
                  "'smtp': {'listen': [], 'submission': [], 'smtps': []}, 'local': {'home_dotqmail': True}})\n"
                  "try:\n    MailGateway(config)\nexcept ConfigError as e:\n    print(e)\n")
        result = subprocess.run([*python, "-c", script], user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                                env=pythonEnvironment(), capture_output=True, text=True, timeout=60, cwd=base)
        self.assertEqual(result.stdout.strip(), "configuration: local.home_dotqmail: delivering as each system user "
                         "needs jsmail started as root (the local spawner switches to the user); it is refused "
                         "rather than followed as jsmail's own user", result.stderr)

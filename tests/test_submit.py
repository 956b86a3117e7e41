"""Local submission: the socket any local user may write to, the sessions on it, and
who may give which envelope sender."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.settings import ServerSettings
from jsmail.submit.endpoint import SocketPlaceError, SubmissionEndpoint, closedDirectory
from jsmail.submit.listener import (
    USER_CACHE_SIZE,
    USER_CACHE_TIME,
    LocalListener,
    LocalSubmissionFactory,
    SenderRule,
    qualified,
)
from jsmail.submit.unix import connect, peerCredentials, reachable
from tests.localgateway import LocalGateway


class SenderRuleTests(SynchronousTestCase):
    """Who may give which envelope sender (docs/submission.rst)."""

    rule = SenderRule(("mx.test", "localhost"), frozenset({"backup"}),
                      {"www-data": ("@example.org", "news@example.net")}, trustOwnUser=False)
    TABLE = [
        (0, "root", "anyone@anywhere.example", True),  # root may give any sender
        (1000, "alice", "alice@localhost", True),
        (1000, "alice", "ALICE@MX.TEST", True),
        (1000, "alice", "", True),  # the null sender names nobody
        (1000, "alice", "bob@localhost", False),
        (1000, "alice", "alice@example.org", False),  # her name, not her address
        (1001, "backup", "reports@elsewhere.example", True),  # trusted_users
        (33, "www-data", "shop@example.org", True),  # senders: "@example.org"
        (33, "www-data", "shop@sub.example.org", False),
        (33, "www-data", "news@example.net", True),
        (33, "www-data", "other@example.net", False),
    ]

    def test_senders(self) -> None:
        for uid, login, sender, allowed in self.TABLE:
            with self.subTest(login=login, sender=sender):
                self.assertEqual(self.rule.userFor(uid, login).maySendAs(sender), allowed)

    def test_theGatewaysOwnUserIsTrusted(self) -> None:
        self.assertTrue(SenderRule(("localhost",)).userFor(os.geteuid(), "jsmail").maySendAs("x@y.example"))

    def test_addressesWithoutDomainGetTheLocalOne(self) -> None:
        for argument, expected in [("TO:<root>", "TO:<root@localhost>"),
                                   ("to: <root> NOTIFY=NEVER", "to: <root@localhost> NOTIFY=NEVER"),
                                   ("FROM:<>", "FROM:<>"), ("TO:<a@b.example>", "TO:<a@b.example>"),
                                   ('TO:<"a b">', 'TO:<"a b">'), ("TO:root", "TO:root")]:
            self.assertEqual(qualified(argument, "TO:" if argument[:1] in "tT" else "FROM:", "localhost"), expected)


class _Nothing(Protocol):
    pass


class EndpointTests(TestCase):
    """The socket's place: what a local user could plant there is refused or ignored."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.path = os.path.join(self.base, "submit", "socket")

    @defer.inlineCallbacks
    def listen(self, path: str | None = None):  # type: ignore[no-untyped-def]
        port = yield SubmissionEndpoint(reactor, path or self.path).listen(Factory.forProtocol(_Nothing))
        self.addCleanup(port.stopListening)
        return port

    @defer.inlineCallbacks
    def test_anyUserMayConnectAndNoOneElseMayReplaceIt(self):  # type: ignore[no-untyped-def]
        port = yield self.listen()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o666)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o755)
        yield port.stopListening()
        self.assertFalse(os.path.exists(self.path))

    def test_directoryWritableByOthersIsRefused(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        os.chmod(os.path.dirname(self.path), 0o1777)
        failure = self.failureResultOf(SubmissionEndpoint(reactor, self.path).listen(Factory()), SocketPlaceError)
        self.assertIn("is writable by other users (mode 1777)", failure.getErrorMessage())

    def test_symlinkedDirectoryIsRefused(self) -> None:
        os.symlink(self.base, os.path.dirname(self.path))
        failure = self.failureResultOf(SubmissionEndpoint(reactor, self.path).listen(Factory()), SocketPlaceError)
        self.assertIn("is not a directory", failure.getErrorMessage())

    def test_somethingElseUnderItsNameIsLeftAlone(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("mine")
        failure = self.failureResultOf(SubmissionEndpoint(reactor, self.path).listen(Factory()), SocketPlaceError)
        self.assertIn("exists and is not a socket; not removing it", failure.getErrorMessage())
        with open(self.path) as f:
            self.assertEqual(f.read(), "mine")

    @defer.inlineCallbacks
    def test_aDeadGatewaysSocketIsReplaced(self):  # type: ignore[no-untyped-def]
        os.makedirs(os.path.dirname(self.path))
        left = socket.socket(socket.AF_UNIX)
        with reachable(self.path) as name:
            left.bind(name)
        left.close()  # the file stays, nothing listens
        yield self.listen()
        connect(self.path, 5).close()

    @defer.inlineCallbacks
    def test_aLiveSocketIsNotTaken(self):  # type: ignore[no-untyped-def]
        yield self.listen()
        failure = self.failureResultOf(SubmissionEndpoint(reactor, self.path).listen(Factory()), SocketPlaceError)
        self.assertIn("another process listens on", failure.getErrorMessage())

    @defer.inlineCallbacks
    def test_aSocketOtherUsersCannotReachIsReported(self):  # type: ignore[no-untyped-def]
        """Under a data directory closed to others (0750), cron's mail would fail for
        every user but jsmail's: the operator is told at start, with the fix."""
        data = tempfile.mkdtemp(prefix="jsmail-data-")  # trial's own directory is closed already
        self.addCleanup(shutil.rmtree, data, True)
        os.chmod(data, 0o750)
        path = os.path.join(data, "submit", "socket")
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.listen(path)
        [text] = [formatEvent(e) for e in events if e.get("log_namespace") == "jsmail.submit.endpoint"]
        self.assertEqual(text, f"Local submission: other users cannot reach {path}, since {data} is "
                               f"closed to them; only its owner and group can use jsmail-sendmail.  Set [submit] "
                               f"socket to a path every user can reach, such as /run/jsmail/submit.sock")
        self.assertIsNone(closedDirectory(os.path.join(tempfile.gettempdir(), "socket")))

    @defer.inlineCallbacks
    def test_aPathLongerThanSunPathWorks(self):  # type: ignore[no-untyped-def]
        deep = os.path.join(self.base, "d" * 60, "e" * 60, "socket")
        os.makedirs(os.path.dirname(os.path.dirname(deep)))
        yield self.listen(deep)
        client = yield deferToThread(connect, deep, 5)
        self.assertEqual(peerCredentials(client).pid, os.getpid())
        client.close()


class SessionTests(LocalGateway, TestCase):
    """Sessions on the gateway's socket."""

    timeout = 60

    def setUp(self) -> Any:
        return self.startGateway(smtp="max_connections_per_client = 2\n")

    def talk(self, *lines: bytes) -> defer.Deferred[list[bytes]]:
        """One session: each line sent after the reply to the one before; the replies."""
        def run() -> list[bytes]:
            with connect(self.socketPath, 10) as sock, sock.makefile("rwb") as f:
                replies = [f.readline()]
                for line in lines:
                    f.write(line + b"\r\n")
                    f.flush()
                    reply = f.readline()
                    while reply[3:4] == b"-":
                        reply = f.readline()
                    replies.append(reply)
                return replies

        return deferToThread(run)

    @defer.inlineCallbacks
    def test_peerCredentialsNameTheSubmitter(self):  # type: ignore[no-untyped-def]
        """The Received field names the uid, the login name and the process that
        connected, whatever the client claims (HELO, MAIL FROM)."""
        replies = yield self.talk(b"EHLO root.example", b"MAIL FROM:<>", b"RCPT TO:<named>", b"DATA",
                                  b"Subject: who\r\n\r\nme\r\n.", b"QUIT")
        self.assertEqual([r[:3] for r in replies], [b"220", b"250", b"250", b"250", b"354", b"250", b"221"])
        [message] = yield self.delivered("named")
        login = pwd.getpwuid(os.getuid()).pw_name
        self.assertIn(f"\nReceived: by mx.test (jsmail, from userid {os.getuid()} ({login}) pid {os.getpid()})\n"
                      f"\tid ".encode(), message)
        self.assertNotIn(b"root.example", message)

    @defer.inlineCallbacks
    def test_connectionsPerUserAreLimited(self):  # type: ignore[no-untyped-def]
        for _ in range(2):
            sock = yield deferToThread(connect, self.socketPath, 10)
            self.addCleanup(sock.close)
            self.assertEqual((yield deferToThread(sock.recv, 100))[:3], b"220")
        third = yield self.talk()
        self.assertEqual(third, [b"421 4.7.0 Too many connections from your user, try again later\r\n"])

    @defer.inlineCallbacks
    def test_theSizeLimitHolds(self):  # type: ignore[no-untyped-def]
        size = self.gateway.config.smtp.maxMessageSize
        replies = yield self.talk(b"EHLO x", f"MAIL FROM:<> SIZE={size + 1}".encode())
        self.assertEqual(replies[-1][:9], b"552 5.3.4")


class LookupDeadlineTests(TestCase):
    """A user database that does not answer holds no session for ever."""

    @defer.inlineCallbacks
    def test_userLookupHasADeadline(self):  # type: ignore[no-untyped-def]
        clock = task.Clock()
        listener = LocalListener(ServerSettings(hostname="mx.test"), MemoryQueue(), clock, "local")
        factory = LocalSubmissionFactory(listener, SenderRule(("mx.test",)), "mx.test",
                                         lambda f, *args: defer.Deferred())  # never answers
        path = os.path.join(os.path.abspath(self.mktemp()), "socket")
        os.makedirs(os.path.dirname(path))
        port = yield SubmissionEndpoint(reactor, path).listen(factory)
        self.addCleanup(port.stopListening)
        client = yield deferToThread(connect, path, 10)
        self.addCleanup(client.close)
        for _ in range(100):
            if factory.connections:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        clock.advance(30)
        self.assertEqual((yield deferToThread(client.recv, 200)),
                         b"421 4.3.0 Cannot look up your user name now, try again later\r\n")
        self.assertEqual(factory.connections, 0)

    def test_userNamesAreCachedForAMinuteAndBounded(self) -> None:
        """A busy cron does not ask the user database for every message, a uid
        renamed is seen within a minute, and a flood of uids keeps the cache small."""
        clock, asked = task.Clock(), []

        def lookUp(f: Any, uid: int) -> defer.Deferred[str]:
            asked.append(uid)
            return defer.succeed(f"user{uid}")

        listener = LocalListener(ServerSettings(hostname="mx.test"), MemoryQueue(), clock, "local")
        factory = LocalSubmissionFactory(listener, SenderRule(("mx.test",)), "mx.test", lookUp)
        for _ in range(2):
            self.assertEqual(self.successResultOf(factory.userFor(1000)).name, "user1000")
        self.assertEqual(asked, [1000])
        clock.advance(USER_CACHE_TIME + 1)
        factory.userFor(1000)
        self.assertEqual(asked, [1000, 1000])
        for uid in range(2000, 2000 + 2 * USER_CACHE_SIZE):
            factory.userFor(uid)
        self.assertEqual(len(factory._names), USER_CACHE_SIZE)


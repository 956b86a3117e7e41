"""STARTTLS rules and SMTP AUTH dialogs in memory; jsmail's checkers for real."""

from __future__ import annotations

import base64
import os
import sys
import textwrap

from twisted.cred import error
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsmail.auth import (
    AnyOfCheckers,
    CheckpasswordChecker,
    HashedPasswordFile,
    MailRealm,
    MailUser,
    TemporaryAuthFailure,
    setPassword,
)
from jsmail.policy.relay import RelayControl
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.sasl import FailureCounter
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, runNow

AUTH_OK = b"235 2.7.0 Authentication successful\r\n"
BAD_CREDENTIALS = b"535 5.7.8 Authentication credentials invalid\r\n"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


class _TemporaryChecker:
    credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

    def requestAvatarId(self, creds: object) -> defer.Deferred[bytes]:
        return defer.fail(TemporaryAuthFailure("database down"))


def portal(*checkers: object, senderRule: str = "any") -> Portal:
    users = InMemoryUsernamePasswordDatabaseDontUse(u=b"p", **{"ann@example.org": b"pw"})
    return Portal(MailRealm(["localhost"], senderRule), [AnyOfCheckers([users, *checkers])])


class StartTLSTests(SynchronousTestCase):
    def dialog(self, **kw: object) -> Dialog:
        kw.setdefault("hostname", "mx.test")
        d = Dialog(ServerSettings(**kw), MemoryQueue(), tls=object(), portal=portal())  # type: ignore[arg-type]
        d.read()
        return d

    def test_offered_before_tls_with_auth_hidden(self) -> None:
        d = self.dialog()
        out = d.send(b"EHLO c\r\n")
        self.assertIn(b"250 STARTTLS\r\n", out)
        self.assertNotIn(b"AUTH", out)

    def test_injection_is_discarded(self) -> None:
        """CVE-2011-0411: commands pipelined after STARTTLS in plaintext are dropped,
        and after the handshake the session starts over (EHLO again, no STARTTLS)."""
        d = self.dialog()
        d.send(b"EHLO c\r\n")
        self.assertEqual(d.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b.example>\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertTrue(d.tlsStarted)
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"503 5.5.1 Send EHLO or HELO first\r\n")
        out = d.send(b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", out)
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", out)
        self.assertEqual(d.send(b"STARTTLS\r\n"), b"503 5.5.1 TLS is already active\r\n")

    def test_not_inside_a_transaction(self) -> None:
        d = self.dialog()
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"STARTTLS\r\n"), b"503 5.5.1 STARTTLS is not allowed inside a mail transaction\r\n")
        self.assertFalse(d.tlsStarted)

    def test_unavailable_without_certificate(self) -> None:
        d = Dialog(ServerSettings(hostname="mx.test"), MemoryQueue())
        d.read()
        self.assertNotIn(b"STARTTLS", d.send(b"EHLO c\r\n"))
        self.assertEqual(d.send(b"STARTTLS\r\n"), b"502 5.5.1 STARTTLS is not available\r\n")

    def test_submission_requires_tls_then_auth(self) -> None:
        d = self.dialog(requireTLS=True, requireAuth=True)
        self.assertNotIn(b"AUTH", d.send(b"EHLO c\r\n"))
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"), b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        d.send(b"STARTTLS\r\n")
        d.send(b"EHLO c\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"530 5.7.0 Authentication required\r\n")
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"), AUTH_OK)
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_port_25_auth_without_tls(self) -> None:
        d = self.dialog()
        d.send(b"EHLO c\r\n")
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"),
                         b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")


class AuthDialogTests(SynchronousTestCase):
    """AUTH over a transport that is TLS from the start (as on port 465)."""

    def dialog(self, senderRule: str = "any", checkers: tuple = (), **kw: object) -> Dialog:
        kw.setdefault("hostname", "mx.test")
        self.queue = MemoryQueue()
        relay = RelayControl(lambda domain: domain == "localhost")
        d = Dialog(ServerSettings(**kw), self.queue, policies=(relay,),  # type: ignore[arg-type]
                   portal=portal(*checkers, senderRule=senderRule), implicitTLS=True)
        d.read()
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", d.send(b"EHLO c\r\n"))
        return d

    def test_plain_initial_response(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"), AUTH_OK)
        self.assertNotIn(b"AUTH", d.send(b"EHLO c\r\n"))
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"), b"503 5.5.1 Already authenticated\r\n")

    def test_plain_with_challenge(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH PLAIN\r\n"), b"334 \r\n")
        self.assertEqual(d.send(b64("u\0u\0p") + b"\r\n"), AUTH_OK)

    def test_login(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(d.send(b64("u") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(d.send(b64("p") + b"\r\n"), AUTH_OK)

    def test_login_initial_response(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH LOGIN " + b64("u") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(d.send(b64("p") + b"\r\n"), AUTH_OK)

    def test_bad_credentials(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0wrong") + b"\r\n"), BAD_CREDENTIALS)

    def test_malformed_base64(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH PLAIN !!!\r\n"), b"501 5.5.2 Cannot decode the response as base64\r\n")
        self.assertEqual(d.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(d.send(b"not base64\r\n"), b"501 5.5.2 Cannot decode the response as base64\r\n")
        self.assertEqual(d.send(b"NOOP\r\n"), b"250 2.0.0 OK\r\n", "the exchange is over")

    def test_cancel(self) -> None:
        d = self.dialog()
        d.send(b"AUTH LOGIN\r\n")
        self.assertEqual(d.send(b"*\r\n"), b"501 5.0.0 Authentication cancelled\r\n")

    def test_unknown_mechanism(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH CRAM-MD5\r\n"), b"504 5.5.4 Unrecognised authentication mechanism\r\n")

    def test_authorisation_identity_must_match(self) -> None:
        d = self.dialog()
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("admin\0u\0p") + b"\r\n"), BAD_CREDENTIALS)
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("u\0u\0p") + b"\r\n"), AUTH_OK)

    def test_proxy_allowed_when_configured(self) -> None:
        d = self.dialog(allowProxyAuth=True)
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("admin\0u\0p") + b"\r\n"), AUTH_OK)

    def test_temporary_failure(self) -> None:
        d = self.dialog(checkers=(_TemporaryChecker(),))
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0x\0y") + b"\r\n"),
                         b"454 4.7.0 Temporary authentication failure, try again later\r\n")

    def test_failures_slowed_then_closed(self) -> None:
        """After each failure the next answer waits twice as long; past the limit, 421."""
        d = self.dialog(maxAuthFailures=2, authFailureDelay=1.0)
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0bad") + b"\r\n"), BAD_CREDENTIALS)
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0bad") + b"\r\n"), b"")
        d.clock.advance(0.99)
        self.assertEqual(d.read(), b"")
        d.clock.advance(0.01)
        self.assertEqual(d.read(), BAD_CREDENTIALS)
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0bad") + b"\r\n"), b"")
        d.clock.advance(2)
        self.assertEqual(d.read(), b"421 4.7.0 Too many authentication failures, closing connection\r\n")
        self.assertTrue(d.closed)

    def test_relay_only_when_authenticated(self) -> None:
        d = self.dialog()
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@example.org>\r\n")[:10], b"550 5.7.1 ")
        d.send(b"RSET\r\nAUTH PLAIN " + b64("\0u\0p") + b"\r\n")
        d.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<x@example.org>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\nhi\r\n.\r\n")
        [(envelope, body)] = self.queue.messages.values()
        self.assertEqual(envelope.recipients[0].address, "x@example.org")
        self.assertIn(b"with ESMTPSA id", body)
        self.assertNotIn(b"authenticated as", body)

    def test_sender_rule_own(self) -> None:
        d = self.dialog(senderRule="own")
        d.send(b"AUTH PLAIN " + b64("\0ann@example.org\0pw") + b"\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"553 5.7.1 Sender <bob@example.org> not allowed for user ann@example.org\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<Ann@Example.org>\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_auth_shown_in_received_when_configured(self) -> None:
        d = self.dialog(showAuthInReceived=True)
        d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\n")
        [(_, body)] = self.queue.messages.values()
        self.assertIn(b"\t(authenticated as u)\r\n", body)


class MailUserTests(SynchronousTestCase):
    def test_own_sender_for_plain_user_name(self) -> None:
        user = MailUser("u", frozenset({"localhost", "example.org"}), "own")
        self.assertTrue(user.maySendAs("u@example.org"))
        self.assertFalse(user.maySendAs("v@example.org"))
        self.assertFalse(user.maySendAs(""))


class CheckerTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_hashed_password_file(self):  # type: ignore[no-untyped-def]
        path = self.mktemp()
        checker = HashedPasswordFile(path)
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"u", b"p")), error.UnauthorizedLogin)
        setPassword(path, "u", "p")
        self.assertRegex(open(path).read(), r"^u:\$2b\$12\$.{53}\n$")
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"u", b"p"))), b"u")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"u", b"x")), error.UnauthorizedLogin)
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"v", b"p")), error.UnauthorizedLogin)

    def passwordFile(self, text: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        return path

    def refused(self, checker: HashedPasswordFile, user: bytes, password: bytes) -> defer.Deferred[object]:
        return self.assertFailure(checker.requestAvatarId(UsernamePassword(user, password)), error.UnauthorizedLogin)

    @defer.inlineCallbacks
    def test_blankHashIsALockedAccount(self):  # type: ignore[no-untyped-def]
        """H-2: "bob:" and a line "carol" without a colon once let anyone in with the
        dummy hash's password, "no such user"."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        checker = HashedPasswordFile(self.passwordFile(b"bob:\ncarol\n"))
        for user in (b"bob", b"carol"):
            for password in (b"no such user", b"", b"x"):
                yield self.refused(checker, user, password)
        warnings = [e for e in events if "the account is locked" in e.get("log_format", "")]
        self.assertEqual([(e["number"], e["user"]) for e in warnings], [(1, b"bob"), (2, b"carol")])

    @defer.inlineCallbacks
    def test_lockedMarkers(self):  # type: ignore[no-untyped-def]
        """"!" and "*" (and "!" before a real hash) lock an account: bad credentials, as
        for a wrong password, never a temporary failure that tells users apart."""
        path = self.mktemp()
        setPassword(path, "dave", "secret")
        with open(path, "rb") as f:
            daveHash = f.read().split(b":", 1)[1].strip()
        checker = HashedPasswordFile(self.passwordFile(b"bob:!\ncarol:*\ndave:!" + daveHash + b"\n:nobody\n"))
        for user, password in [(b"bob", b"!"), (b"carol", b"*"), (b"dave", b"secret"), (b"", b"nobody")]:
            yield self.refused(checker, user, password)

    @defer.inlineCallbacks
    def test_longPasswordIsBadCredentialsNotATraceback(self):  # type: ignore[no-untyped-def]
        """L-4: a password over bcrypt's 72 octets is checked like any other: wrong is
        UnauthorizedLogin (bcrypt's ValueError never escapes), right is accepted, and
        every octet of it counts."""
        path = self.mktemp()
        long = "correct horse battery staple " * 4  # 116 octets
        setPassword(path, "u", long)
        checker = HashedPasswordFile(path)
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"u", long.encode()))), b"u")
        yield self.refused(checker, b"u", b"A" * 100)
        yield self.refused(checker, b"u", long.encode()[:72])
        yield self.refused(checker, b"u", long.encode()[:-1] + b"!")  # differs after octet 72
        yield self.refused(checker, b"nobody", b"A" * 100)
        yield self.refused(checker, b"u", b"a\x00b")

    @defer.inlineCallbacks
    def test_unreadablePasswordFileIsATemporaryFailure(self):  # type: ignore[no-untyped-def]
        """Read in the checking thread, not on the reactor: an error there is 454, not 535."""
        path = self.mktemp()
        os.mkdir(path)  # reading it fails with IsADirectoryError
        checker = HashedPasswordFile(path, runNow)
        failure = yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"u", b"p")),
                                           TemporaryAuthFailure)
        self.assertIn(f"cannot read {path}", str(failure))

    @defer.inlineCallbacks
    def test_hashesOfLongPasswordsMadeBeforeBcrypt5StillWork(self):  # type: ignore[no-untyped-def]
        """bcrypt before 5.0 hashed the first 72 octets of a longer password."""
        import bcrypt

        long = b"x" * 72 + b"tail"
        path = self.passwordFile(b"old:" + bcrypt.hashpw(long[:72], bcrypt.gensalt(4)) + b"\n")
        checker = HashedPasswordFile(path)
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"old", long))), b"old")
        yield self.refused(checker, b"old", b"y" * 80)

    def test_longPasswordOverSMTPAuthIs535(self) -> None:
        """L-4 through an AUTH dialog: 535 after the failure delay, not 454 and a traceback."""
        path = self.mktemp()
        setPassword(path, "u", "p")
        checker = HashedPasswordFile(path, runNow)
        d = Dialog(ServerSettings(hostname="mx.test"), MemoryQueue(), implicitTLS=True,
                   portal=Portal(MailRealm(["localhost"]), [AnyOfCheckers([checker])]))
        d.read()
        d.send(b"EHLO c\r\n")
        for user in ("u", "bob"):
            out = d.send(b"AUTH PLAIN " + b64(f"\0{user}\0" + "A" * 100) + b"\r\n")
            d.clock.advance(60)
            self.assertEqual(out + d.read(), BAD_CREDENTIALS)
        self.assertEqual(self.flushLoggedErrors(), [])

    def program(self) -> str:
        """A checkpassword program: u/p is good, "temp" is a temporary failure."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                #!{sys.executable}
                import os, sys
                data = b""
                while True:
                    chunk = os.read(3, 512)
                    if not chunk:
                        break
                    data += chunk
                user, password, timestamp, end = data.split(b"\\0")
                assert timestamp.isdigit() and end == b"", data
                if user == b"temp":
                    sys.exit(111)
                if (user, password) != (b"u", b"p"):
                    sys.exit(1)
                os.execv(sys.argv[1], sys.argv[1:])
                """))
        os.chmod(path, 0o755)
        return path

    @defer.inlineCallbacks
    def test_checkpassword(self):  # type: ignore[no-untyped-def]
        checker = CheckpasswordChecker(self.program())
        self.assertEqual((yield checker.requestAvatarId(UsernamePassword(b"u", b"p"))), b"u")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"u", b"x")), error.UnauthorizedLogin)
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"temp", b"p")), TemporaryAuthFailure)

    @defer.inlineCallbacks
    def test_checkpassword_timeout(self):  # type: ignore[no-untyped-def]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("#!/bin/sh\nsleep 30\n")
        os.chmod(path, 0o755)
        checker = CheckpasswordChecker(path, timeout=0.5)
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"u", b"p")), TemporaryAuthFailure)


    def test_checkpasswordTimeoutIsAnArgument(self) -> None:
        from jsmail.auth import CheckpasswordFactory

        program = self.program()
        factory = CheckpasswordFactory()
        self.assertEqual(factory.generateChecker(program).timeout, 30.0)
        checker = factory.generateChecker(program + ":timeout=2.5")
        self.assertEqual((checker.program, checker.timeout), (program, 2.5))
        for bad in ("0", "-1", "x", "7200"):
            with self.assertRaises(ValueError) as caught:
                factory.generateChecker(f"{program}:timeout={bad}")
            self.assertIn(f"timeout={bad!r}", str(caught.exception))


class GuessingTests(SynchronousTestCase):
    """Security review M-10: the slowdown was per session (a guesser hung up and
    connected again) and a success was answered at once, before any delay (so a
    client waiting 0.7 s knew a guess had failed)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.failures = FailureCounter(window=900.0)

    def session(self, client: str = "192.0.2.1") -> Dialog:
        d = Dialog(ServerSettings(hostname="mx.test", maxClientAuthFailures=4), MemoryQueue(), clock=self.clock,
                   clientAddress=client, implicitTLS=True, portal=portal())
        d.listener.__dict__["authFailures"] = self.failures  # as a gateway shares one count
        d.server.connectionMade()  # the exchange takes the count when the session starts
        d.read()
        d.send(b"EHLO c\r\n")
        return d

    def test_failuresCountAcrossSessions(self) -> None:
        for _ in range(4):
            d = self.session()
            d.send(b"AUTH PLAIN " + b64("\0u\0guess") + b"\r\n")
            self.clock.advance(60)
            d.read()
        d = self.session()
        self.assertEqual(d.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"),
                         b"421 4.7.0 Too many authentication failures, closing connection\r\n",
                         "even the right password: the client is refused without a check")
        other = self.session("192.0.2.2")
        self.assertEqual(other.send(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n"), b"", "another client waits")
        self.clock.advance(8)  # 4 failures for user u: 1 s doubling, 8 s
        self.assertEqual(other.read(), b"235 2.7.0 Authentication successful\r\n")

    def test_successTakesAsLongAsFailure(self) -> None:
        """After a failure, the right password is answered as late as a wrong one."""
        timings = []
        for password in ("wrong", "p"):
            self.failures = FailureCounter(window=900.0)
            self.session().send(b"AUTH PLAIN " + b64("\0u\0guess") + b"\r\n")  # one failure, answered at once
            d = self.session()
            self.assertEqual(d.send(b"AUTH PLAIN " + b64(f"\0u\0{password}") + b"\r\n"), b"")
            self.clock.advance(0.99)
            self.assertEqual(d.read(), b"", "neither answer comes early")
            self.clock.advance(0.01)
            timings.append(d.read()[:3])
        self.assertEqual(timings, [b"535", b"235"])

    def test_failureCounterIsBounded(self) -> None:
        counter = FailureCounter(window=900.0, maxKeys=100)
        for n in range(10_000):
            counter.add(f"client{n}", 0.0)
        self.assertEqual(len(counter._failures), 100)
        self.assertEqual(counter.count("client9999", 1.0), 1)
        self.assertEqual(counter.count("client9999", 901.0), 0, "forgotten after the window")


class CheckerFitnessTests(SynchronousTestCase):
    """Newcomer review item 5 and issue 13.1: only checkers that judge a user name and
    password serve AUTH, and the ``memory:`` checker works."""

    def gateway(self, checkers: tuple[str, ...] = (), extra: tuple = ()) -> Dialog:
        from jsmail.config import loadConfig
        from jsmail.service import makePortal

        data = self.mktemp()
        os.makedirs(data)
        config = loadConfig(None, {"server.data": data, "auth.checkers": list(checkers)})
        d = Dialog(ServerSettings(hostname="mx.test"), MemoryQueue(), implicitTLS=True,
                   portal=makePortal(config, extra, runNow),
                   policies=(RelayControl(lambda domain: domain == "localhost"),))
        d.read()
        d.send(b"EHLO c\r\n")
        return d

    def auth(self, d: Dialog, user: str, password: str) -> bytes:
        out = d.send(b"AUTH PLAIN " + b64(f"\0{user}\0{password}") + b"\r\n")
        d.clock.advance(60)
        return out + d.read()

    def test_memoryCheckerAuthenticates(self) -> None:
        from twisted.cred import strcred

        d = self.gateway(("memory:alice:pw1",), (strcred.makeChecker("memory:dave:pw2"),))
        self.assertEqual(self.auth(d, "alice", "pw1"), AUTH_OK)
        d = self.gateway(("memory:alice:pw1",), (strcred.makeChecker("memory:dave:pw2"),))
        self.assertEqual(self.auth(d, "dave", "pw2"), AUTH_OK)
        d = self.gateway(("memory:alice:pw1",))
        self.assertEqual(self.auth(d, "alice", "wrong"), BAD_CREDENTIALS)

    def test_anonymousCheckerCannotRelay(self) -> None:
        from jsmail.config import ConfigError, loadConfig

        with self.assertRaises(ConfigError) as caught:
            loadConfig(None, {"auth.checkers": ["anonymous"]})
        self.assertIn("cannot be used for SMTP AUTH", str(caught.exception))

    def test_anonymousOnTheCommandLineRefused(self) -> None:
        """Refused in one line on stderr (exit status 2), not after twistd's usage text."""
        import contextlib
        import io

        from jsmail.tap import Options

        for description in ("anonymous", "sshkey"):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as caught:
                Options().parseOptions(["--auth", description])
            self.assertEqual(caught.exception.code, 2)
            self.assertTrue(err.getvalue().startswith(f"jsmail: configuration error: command line: --auth "
                                                      f"{description}: Auth plugin not supported"), err.getvalue())

    def test_sshkeyCheckerNeverCrashesAuth(self) -> None:
        """A checker given straight to the embedding API is refused too, and one that
        slips in behind AnyOfCheckers is skipped, not fed a password it cannot read."""
        from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker

        from jsmail.auth import UnfitChecker

        sshkeys = SSHPublicKeyChecker(InMemorySSHKeyDB({}))
        with self.assertRaises(UnfitChecker):
            self.gateway((), (sshkeys,))
        d = Dialog(ServerSettings(hostname="mx.test"), MemoryQueue(), implicitTLS=True,
                   portal=portal(sshkeys))
        d.read()
        d.send(b"EHLO c\r\n")
        self.assertEqual(self.auth(d, "u", "p"), AUTH_OK)
        d = Dialog(ServerSettings(hostname="mx.test"), MemoryQueue(), implicitTLS=True, portal=portal(sshkeys))
        d.read()
        d.send(b"EHLO c\r\n")
        self.assertEqual(self.auth(d, "nobody", "x"), BAD_CREDENTIALS)
        self.assertEqual(self.flushLoggedErrors(), [])

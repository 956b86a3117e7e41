"""Real TLS over loopback: STARTTLS on port 25 and submission, implicit TLS, AUTH with
stdlib smtplib, the STARTTLS injection against a running gateway, certificate reload."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl

import trustme
from twisted.internet import defer, utils
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import SkipTest, TestCase

from jsmail.auth import setPassword
from jsmail.config import loadConfig
from jsmail.service import MailGateway
from jsmail.smtp.tls import ServerTLS, TLSError
from jsmail.testing import DNSServer, delivered

CLIENT_TIMEOUT = 10


class GatewayTestCase(TestCase):
    """A gateway on ephemeral loopback ports with a trustme certificate for mx.test."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.ca = trustme.CA()
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        certificate = self.ca.issue_cert("mx.test", "127.0.0.1")
        self.certPath = os.path.join(self.data, "cert.pem")
        self.keyPath = os.path.join(self.data, "key.pem")
        certificate.private_key_and_cert_chain_pem.write_to_path(self.certPath)
        certificate.private_key_pem.write_to_path(self.keyPath)
        setPassword(os.path.join(self.data, "passwd"), "u", "secret")
        ephemeral = ["tcp:0:interface=127.0.0.1"]
        # Relayed test mail meets a null MX on a loopback DNS server: no lookup leaves the machine.
        dnsServer = DNSServer({"example.org": [("example.org", dns.Record_MX(0, b""))]})
        self.addCleanup(dnsServer.stop)
        config = loadConfig(settings={
            "server": {"hostname": "mx.test", "data": self.data, "tls_certificate": self.certPath},
            "smtp": {"listen": ephemeral, "submission": ephemeral, "smtps": ephemeral},
            "auth": {"failure_delay": 0}, "remote": {"dns_server": dnsServer.start()}})
        self.gateway = MailGateway(config)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.ports = {}
        for listener in self.gateway.listeners:
            port = yield listener.whenListening()
            self.ports[listener.kind] = port.getHost().port

    def clientContext(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def smtp(self, kind: str) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.ports[kind], local_hostname="client.test", timeout=CLIENT_TIMEOUT)

    def delivered(self, domain: str, local: str, count: int = 1):  # type: ignore[no-untyped-def]
        """The delivered files for a mailbox, waiting (bounded) for ``count`` of them."""
        return delivered(os.path.join(self.data, "mail", domain, local), count)

    @defer.inlineCallbacks
    def test_submission_login_and_relay(self):  # type: ignore[no-untyped-def]
        """The issue's "done when": TLS, AUTH, then a foreign recipient is accepted."""

        def send() -> dict:
            with self.smtp("submission") as client:
                client.ehlo()
                self.assertFalse(client.has_extn("auth"), "AUTH is not offered before TLS")
                client.starttls(context=self.clientContext())
                client.login("u", "secret")
                return client.sendmail("u@localhost", ["someone@example.org"], b"Subject: out\r\n\r\nhi\r\n")

        refused = yield deferToThread(send)
        self.assertEqual(refused, {})

    @defer.inlineCallbacks
    def test_submission_without_tls_refused(self):  # type: ignore[no-untyped-def]
        def send() -> tuple[int, bytes]:
            with self.smtp("submission") as client:
                client.ehlo()
                return client.mail("u@localhost")

        self.assertEqual((yield deferToThread(send)), (530, b"5.7.0 Must issue a STARTTLS command first"))

    @defer.inlineCallbacks
    def test_unauthenticated_relay_refused(self):  # type: ignore[no-untyped-def]
        def send() -> tuple[int, bytes]:
            with self.smtp("smtp") as client:
                client.starttls(context=self.clientContext())
                client.ehlo()
                client.mail("a@example.org")
                return client.rcpt("someone@example.org")

        code, text = yield deferToThread(send)
        self.assertEqual((code, text[:5]), (550, b"5.7.1"))

    @defer.inlineCallbacks
    def test_bad_password(self):  # type: ignore[no-untyped-def]
        def send() -> None:
            with self.smtp("submission") as client:
                client.starttls(context=self.clientContext())
                client.login("u", "wrong")

        failure = yield self.assertFailure(deferToThread(send), smtplib.SMTPAuthenticationError)
        self.assertEqual((failure.smtp_code, failure.smtp_error), (535, b"5.7.8 Authentication credentials invalid"))

    @defer.inlineCallbacks
    def test_injection_against_running_gateway(self):  # type: ignore[no-untyped-def]
        """STARTTLS and RSET in one write: after the handshake nothing answers the RSET;
        the first reply over TLS is the one to our EHLO."""

        def inject() -> bytes:
            with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=CLIENT_TIMEOUT) as raw:
                reader = raw.makefile("rb")
                reader.readline()
                raw.sendall(b"EHLO client.test\r\n")
                while not reader.readline().startswith(b"250 "):
                    pass
                raw.sendall(b"STARTTLS\r\nRSET\r\n")
                self.assertEqual(reader.readline(), b"220 2.0.0 Ready to start TLS\r\n")
                with self.clientContext().wrap_socket(raw, server_hostname="mx.test") as secure:
                    secure.sendall(b"EHLO client.test\r\n")
                    return secure.recv(4096)

        first = yield deferToThread(inject)
        self.assertTrue(first.startswith(b"250-mx.test greets client.test\r\n"), first)

    @defer.inlineCallbacks
    def test_failed_handshake_closes_cleanly(self):  # type: ignore[no-untyped-def]
        def garbage() -> bytes:
            with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=CLIENT_TIMEOUT) as raw:
                raw.makefile("rb").readline()
                raw.sendall(b"STARTTLS\r\n")
                raw.recv(100)
                raw.sendall(b"this is not a TLS client hello\r\n" * 4)
                return raw.recv(100)

        self.assertEqual((yield deferToThread(garbage)), b"")


class ImplicitTLSTests(GatewayTestCase):
    @defer.inlineCallbacks
    def test_smtp_ssl_login_and_send(self):  # type: ignore[no-untyped-def]
        def send() -> dict:
            with smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], local_hostname="client.test",
                                  context=self.clientContext(), timeout=CLIENT_TIMEOUT) as client:
                client.ehlo()
                self.assertFalse(client.has_extn("starttls"))
                client.login("u", "secret")
                return client.sendmail("u@localhost", ["someone@localhost"], b"Subject: 465\r\n\r\nhi\r\n")

        self.assertEqual((yield deferToThread(send)), {})
        [message] = yield self.delivered("localhost", "someone")
        self.assertIn(b"with ESMTPSA id", message)

    @defer.inlineCallbacks
    def test_auth_required_before_mail(self):  # type: ignore[no-untyped-def]
        def send() -> tuple[int, bytes]:
            with smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], context=self.clientContext(),
                                  timeout=CLIENT_TIMEOUT) as client:
                client.ehlo()
                return client.mail("u@localhost")

        self.assertEqual((yield deferToThread(send)), (530, b"5.7.0 Authentication required"))

    @defer.inlineCallbacks
    def test_reload_serves_the_new_certificate(self):  # type: ignore[no-untyped-def]
        """A new certificate in place plus reload (SIGHUP): new handshakes get it, and an
        open session is not dropped."""
        def openSession() -> smtplib.SMTP_SSL:
            client = smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], context=self.clientContext(), timeout=CLIENT_TIMEOUT)
            client.ehlo()
            return client

        session = yield deferToThread(openSession)
        self.addCleanup(session.close)
        otherCA = trustme.CA()
        renewed = otherCA.issue_cert("mx.test", "127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(self.certPath)
        renewed.private_key_pem.write_to_path(self.keyPath)
        self.gateway.reload()

        def handshake(ca: trustme.CA) -> None:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            with smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], context=context, timeout=CLIENT_TIMEOUT):
                pass

        yield deferToThread(handshake, otherCA)
        yield self.assertFailure(deferToThread(handshake, self.ca), ssl.SSLCertVerificationError)
        self.assertEqual((yield deferToThread(session.noop))[0], 250)


    @defer.inlineCallbacks
    def test_reload_rereads_a_password_file_changed_unseen(self):  # type: ignore[no-untyped-def]
        """A password changed within one time-stamp tick (same size, same mtime) is
        missed by the change check; SIGHUP's reload reads it, and logs what it reloaded."""
        path = os.path.join(self.data, "passwd")

        def login(password: str) -> int:
            with smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], context=self.clientContext(),
                                  timeout=CLIENT_TIMEOUT) as client:
                try:
                    return client.login("u", password)[0]
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code

        self.assertEqual((yield deferToThread(login, "secret")), 235)
        before = os.stat(path)
        setPassword(path, "u", "public")  # a bcrypt hash: the same length as before
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(os.stat(path).st_size, before.st_size)
        self.assertEqual((yield deferToThread(login, "public")), 535)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.gateway.reload()
        self.assertEqual((yield deferToThread(login, "public")), 235)
        [what] = [e["what"] for e in events if "what" in e]
        self.assertEqual(what, f"TLS certificate, password file {path}")


class SwaksTests(GatewayTestCase):
    """Interop with swaks, a real SMTP client (installed by .ci/run)."""

    def setUp(self):  # type: ignore[no-untyped-def]
        if shutil.which("swaks") is None:
            raise SkipTest("swaks is not installed (apt-get install swaks)")
        return super().setUp()

    def swaks(self, *arguments: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return utils.getProcessOutputAndValue(
            shutil.which("swaks"), ["--timeout", "10", "--helo", "client.test", *arguments], env=os.environ
        )

    @defer.inlineCallbacks
    def test_submission_with_tls_and_auth(self):  # type: ignore[no-untyped-def]
        out, err, code = yield self.swaks("--server", f"127.0.0.1:{self.ports['submission']}", "--tls",
                                          "--to", "someone@example.org", "--from", "u@localhost",
                                          "--auth-user", "u", "--auth-password", "secret")
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"<~  235 2.7.0 Authentication successful", out)
        self.assertRegex(out, rb"<~  250 2\.0\.0 Queued as [0-9A-F]{21}")

    @defer.inlineCallbacks
    def test_port_25_to_local_mailbox(self):  # type: ignore[no-untyped-def]
        out, err, code = yield self.swaks("--server", f"127.0.0.1:{self.ports['smtp']}", "--tls",
                                          "--to", "someone@localhost", "--from", "a@example.org")
        self.assertEqual(code, 0, out + err)
        [message] = yield self.delivered("localhost", "someone")
        self.assertIn(b"with ESMTPS id", message)


class CertificateFileTests(TestCase):
    """Newcomer review item 3: a certificate and key that do not go together were
    accepted at start, by --check-config and by SIGHUP, after which every handshake
    failed."""

    def files(self, cert: bytes, key: bytes) -> tuple[str, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        paths = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, data in zip(paths, (cert, key), strict=True):
            with open(path, "wb") as f:
                f.write(data)
        return paths

    def test_keyOfAnotherCertificateIsRefusedAtLoad(self) -> None:
        ca = trustme.CA()
        one, other = ca.issue_cert("mx.test"), ca.issue_cert("mx.test")
        cert, key = self.files(one.cert_chain_pems[0].bytes(), other.private_key_pem.bytes())
        with self.assertRaises(TLSError) as caught:
            ServerTLS(cert, key)
        self.assertEqual(str(caught.exception), f"the key in {key} is not the key of the certificate in {cert}")

    def test_chainOutOfOrderIsRefused(self) -> None:
        ca = trustme.CA()
        intermediate = ca.create_child_ca()
        leaf = intermediate.issue_cert("mx.test")
        shuffled = leaf.cert_chain_pems[0].bytes() + ca.cert_pem.bytes() + intermediate.cert_pem.bytes()
        cert, key = self.files(shuffled, leaf.private_key_pem.bytes())
        with self.assertRaises(TLSError) as caught:
            ServerTLS(cert, key)
        self.assertIn("the chain is out of order", str(caught.exception))

    def test_badReloadKeepsTheWorkingCertificate(self) -> None:
        ca = trustme.CA()
        good = ca.issue_cert("mx.test")
        cert, key = self.files(good.cert_chain_pems[0].bytes(), good.private_key_pem.bytes())
        tls = ServerTLS(cert, key)
        working = tls.options
        with open(key, "wb") as f:
            f.write(ca.issue_cert("mx.test").private_key_pem.bytes())  # a renewal gone wrong
        self.assertFalse(tls.reload())
        self.assertIs(tls.options, working, "the working context is kept")
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class SelfSignedRaceTests(TestCase):
    """Under tcpserver each connection is a process; the first few race to make the
    self-signed certificate."""

    def test_concurrentFirstConnectionsGetOneMatchingPair(self) -> None:
        import subprocess
        import sys
        import time

        directory = self.mktemp()
        program = (
            "import sys, time; from jsmail.smtp.tls import ensureSelfSigned\n"
            "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
            "ensureSelfSigned(sys.argv[1], 'mx.test')"
        )
        startAll = str(time.time() + 3)
        processes = [subprocess.Popen([sys.executable, "-c", program, directory, startAll]) for _ in range(8)]
        self.assertEqual([p.wait(timeout=60) for p in processes], [0] * 8)
        from jsmail.smtp.tls import loadServerContext

        loadServerContext(os.path.join(directory, "selfsigned-cert.pem"), os.path.join(directory, "selfsigned-key.pem"))
        self.assertEqual(oct(os.stat(os.path.join(directory, "selfsigned-key.pem")).st_mode & 0o777), "0o600")

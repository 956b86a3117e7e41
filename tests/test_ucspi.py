"""jsmail-smtpd under a real tcpserver (ucspi-tcp), as qmail-smtpd runs."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jsmail.queue.admin import listQueue, openEntry
from jsmail.testing import freePort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UCSPITests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("tcpserver") is None:
            raise SkipTest("tcpserver is not installed (apt-get install ucspi-tcp)")
        self.data = os.path.abspath(self.mktemp())

    def serve(self, rules: str = "", *arguments: str, **environment: str) -> int:
        """tcpserver on a free loopback port running jsmail-smtpd with ``environment``
        (and tcprules ``rules``, if given, and more command-line ``arguments``)."""
        port = freePort()
        options = []
        if rules:
            cdb = os.path.abspath(self.mktemp())
            subprocess.run(["tcprules", cdb, cdb + ".tmp"], input=rules.encode(), check=True, timeout=10)
            options = ["-x", cdb]
        server = subprocess.Popen(
            ["tcpserver", "-q", "-R", "-H", *options, "127.0.0.1", str(port),
             sys.executable, "-m", "jsmail.qmail.tcpserver", "--data", self.data, *arguments],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": ROOT, **environment},
        )
        self.addCleanup(server.wait, 10)
        self.addCleanup(server.kill)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port
            time.sleep(0.05)
        self.fail("tcpserver did not listen")

    def transaction(self, port: int, recipient: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as client:
            client.ehlo()
            client.mail("a@example.org")
            code, text = client.rcpt(recipient)
            if code == 250:
                client.data(b"Subject: via tcpserver\r\n\r\nhello\r\n")
            return code, text

    def test_local_recipient_queued_and_relay_refused(self) -> None:
        port = self.serve()
        self.assertEqual(self.transaction(port, "x@localhost")[0], 250)
        code, text = self.transaction(port, "x@example.net")
        self.assertEqual((code, text[:5]), (550, b"5.7.1"))
        [entry] = listQueue(os.path.join(self.data, "queue"))
        self.assertEqual(entry.envelope.clientAddress, "127.0.0.1", "from tcpserver's TCPREMOTEIP")

    def test_tcpremotehost_in_received(self) -> None:
        """A name tcpserver gives (here from a tcprules line) is in the Received header,
        with unsafe characters replaced as qmail-smtpd replaces them."""
        port = self.serve(rules='127.0.0.1:allow,TCPREMOTEHOST="mail.client.test;x"\n')
        self.assertEqual(self.transaction(port, "x@localhost")[0], 250)
        [entry] = listQueue(os.path.join(self.data, "queue"))
        with openEntry(os.path.join(self.data, "queue"), entry.queueId) as f:
            received = f.readline()
        self.assertTrue(received.startswith(b"Received: from client.test (mail.client.test?x [127.0.0.1])\r\n"),
                        received)

    def test_relayclient_allows_relay(self) -> None:
        port = self.serve(RELAYCLIENT="")
        self.assertEqual(self.transaction(port, "x@example.net")[0], 250)
        [entry] = listQueue(os.path.join(self.data, "queue"))
        self.assertEqual([r.address for r in entry.envelope.recipients], ["x@example.net"])

    def test_relayclient_suffix(self) -> None:
        port = self.serve(RELAYCLIENT=".relay.test")
        self.assertEqual(self.transaction(port, "x@example")[0], 250)
        [entry] = listQueue(os.path.join(self.data, "queue"))
        self.assertEqual(entry.envelope.recipients[0].address, "x@example.relay.test")

    def test_rblsmtpd(self) -> None:
        port = self.serve(RBLSMTPD="-listed at dnsbl.example")
        self.assertEqual(self.transaction(port, "x@localhost"), (553, b"5.7.1 listed at dnsbl.example"))

    def configFile(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_policyChecksRunUnderTcpserver(self) -> None:
        """I-1: jsmail-smtpd built only the relay and badmailfrom checks, so [policy]
        in the same file was skipped without a word."""
        os.makedirs(self.data)
        with open(os.path.join(self.data, "deny-senders"), "w") as f:
            f.write("@spam.test\n")
        config = self.configFile('[policy]\nsmtp = ["access"]\n[plugins.access]\ndeny_senders = "deny-senders"\n')
        port = self.serve("", "--config", config)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as client:
            client.ehlo()
            code, text = client.mail("x@spam.test")
        self.assertEqual((code, text), (553, b"5.7.1 Sender address <x@spam.test> refused"))

    def test_starttlsAndAuthUnderTcpserver(self) -> None:
        """The daemon's certificate and users serve jsmail-smtpd too: STARTTLS, then
        AUTH, then the submission rules (here: own sender only)."""
        import ssl

        import trustme

        from jsmail.auth import setPassword

        ca = trustme.CA()
        cert = ca.issue_cert("mx.test", "127.0.0.1")
        certPath = os.path.abspath(self.mktemp())
        cert.private_key_and_cert_chain_pem.write_to_path(certPath)
        os.makedirs(self.data)
        setPassword(os.path.join(self.data, "passwd"), "u@localhost", "secret")
        config = self.configFile(f'[server]\nhostname = "mx.test"\ntls_certificate = "{certPath}"\n')
        port = self.serve("", "--config", config, "--listener", "submission")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as client:
            client.ehlo()
            self.assertEqual(client.mail("u@localhost")[0], 530, "submission: STARTTLS first")
            client.rset()
            client.starttls(context=context)
            client.login("u@localhost", "secret")
            self.assertEqual(client.mail("ceo@localhost")[0], 553)
            client.rset()
            client.sendmail("u@localhost", ["x@example.net"], b"From: u@localhost\r\nSubject: s\r\n\r\nhi\r\n")
        [entry] = listQueue(os.path.join(self.data, "queue"))
        self.assertEqual([r.address for r in entry.envelope.recipients], ["x@example.net"])
        with openEntry(os.path.join(self.data, "queue"), entry.queueId) as f:
            message = f.read()
        self.assertIn(b"with ESMTPSA", message)
        self.assertIn(b"\r\nMessage-ID: <", message, "submission is owed a Message-ID")

    def test_unusableConfigurationGets421(self) -> None:
        config = self.configFile('[server]\ntls_certificate = "/nonexistent/cert.pem"\n')
        port = self.serve("", "--config", config)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            greeting = s.makefile("rb").readline()
        self.assertEqual(greeting, b"421 4.3.0 Temporary local problem, try again later\r\n")

    def test_qmailqueue_program(self) -> None:
        saved = os.path.abspath(self.mktemp())
        program = os.path.abspath(self.mktemp())
        with open(program, "w") as f:
            f.write(f"#!{sys.executable}\nimport os, sys\n"
                    f"open({saved!r}, 'wb').write(sys.stdin.buffer.read() + b'|' + os.read(1, 4096))\n")
        os.chmod(program, 0o755)
        port = self.serve(QMAILQUEUE=program)
        self.assertEqual(self.transaction(port, "x@localhost")[0], 250)
        with open(saved, "rb") as f:
            message, envelope = f.read().split(b"|")
        self.assertIn(b"Subject: via tcpserver", message)
        self.assertEqual(envelope, b"Fa@example.org\x00Tx@localhost\x00\x00")


class SessionOnStdioTests(SynchronousTestCase):
    """The session does not stop the reactor; the main() that owns it is told the
    connection is gone, and stops it."""

    def test_the_session_sees_everything_and_main_is_told_at_the_end(self) -> None:
        from twisted.internet.protocol import Protocol
        from twisted.internet.testing import StringTransport

        from jsmail.qmail.tcpserver import SessionOnStdio

        events: list[object] = []

        class Session(Protocol):
            def connectionMade(self) -> None:
                events.append(("made", self.transport._transport))  # behind the wrapper that adds startTLS

            def dataReceived(self, data: bytes) -> None:
                events.append(data)

            def connectionLost(self, reason: object = None) -> None:
                events.append("lost")
                raise RuntimeError("a session that fails as it ends")

        transport = StringTransport()
        wrapper = SessionOnStdio(Session(), lambda: events.append("ended"))
        wrapper.makeConnection(transport)
        wrapper.dataReceived(b"EHLO x\r\n")
        self.assertRaises(RuntimeError, wrapper.connectionLost, None)
        self.assertEqual(events, [("made", transport), b"EHLO x\r\n", "lost", "ended"])

    def test_the_reactor_is_stopped_once(self) -> None:
        from jsmail.qmail.tcpserver import reactorStopper

        class Reactor:
            running = True
            stops = 0

            def stop(self) -> None:
                self.stops += 1
                self.running = False

        reactor = Reactor()
        stop = reactorStopper(reactor)
        stop()
        stop()  # the connection ended because the reactor was stopping
        self.assertEqual(reactor.stops, 1)

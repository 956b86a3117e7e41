"""``jsmail check`` against real ports, a real DNS server and real files."""

from __future__ import annotations

import datetime
import io
import os
import socket
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jsmail.config import loadConfig
from jsmail.ops import check
from jsmail.service import MailGateway
from jsmail.testing import DNSServer, freePort


def writeCertificate(directory: str, days: float) -> tuple[str, str]:
    """A self-signed certificate for mx.test valid for ``days`` more days, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    paths = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(paths[0], "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class CheckTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.dns = DNSServer({"localhost": [("MX", (10, "mx.test"))]})
        self.dnsAddress = self.dns.start()
        self.addCleanup(self.dns.stop)
        self.smtpPort = freePort()

    def writeConfig(self, **server: str) -> str:
        path = os.path.join(self.directory, "jsmail.toml")
        extra = "".join(f'{key} = "{value}"\n' for key, value in server.items())
        with open(path, "w") as f:
            f.write(f'[server]\ndata = "{self.directory}/data"\nhostname = "mx.test"\n{extra}'
                    f'[smtp]\nlisten = "tcp:{self.smtpPort}:interface=127.0.0.1"\nsubmission = []\nsmtps = []\n'
                    f'[remote]\ndns_server = "{self.dnsAddress}"\n')
        return path

    def check(self, path: str, dnsTimeout: float = 3.0) -> defer.Deferred[tuple[int, list[str]]]:
        """Run the check in a thread: it talks to the gateway this reactor runs."""
        out = io.StringIO()
        d = deferToThread(check.run, path, {}, out, dnsTimeout)
        return d.addCallback(lambda status: (status, out.getvalue().splitlines()))

    @defer.inlineCallbacks
    def test_all_well_beside_a_running_gateway(self) -> Any:
        """The gateway's own port answers SMTP, so it counts as fine; everything else
        passes too: exit status 0 and an OK line first."""
        path = self.writeConfig()
        gateway = MailGateway(loadConfig(path, {"queue.delivery_process": False}))
        gateway.privilegedStartService()
        gateway.startService()
        self.addCleanup(gateway.stopService)
        status, lines = yield self.check(path)
        self.assertEqual(status, 0, lines)
        self.assertEqual(lines[0], "JSMAIL OK - 7 checks passed")
        self.assertEqual(lines[2], f"OK       smtp listener tcp:{self.smtpPort}:interface=127.0.0.1: in use, "
                                   "answering (the running gateway)")
        self.assertRegex(lines[6], r"^OK       TLS certificate \S+selfsigned-cert.pem for mx.test: expires in \d+ days$")
        self.assertRegex(lines[7], r"^OK       local submission \S+/data/submit/socket: answering; only root and "
                                   r"jsmail's user reach it \(\S+ is closed to others; ")

    @defer.inlineCallbacks
    def test_port_taken_by_another_program(self) -> Any:
        taken = socket.socket()
        taken.bind(("127.0.0.1", self.smtpPort))
        taken.listen(1)
        self.addCleanup(taken.close)
        status, lines = yield self.check(self.writeConfig())
        self.assertEqual(status, 2)
        self.assertEqual(lines[0], f"JSMAIL CRITICAL - smtp listener tcp:{self.smtpPort}:interface=127.0.0.1: "
                                   "cannot bind: Address already in use")
        self.assertIn(f"WARNING  queue {self.directory}/data/queue: not there yet (made at the first start)", lines)

    @defer.inlineCallbacks
    def test_certificate_expiring_soon(self) -> Any:
        certificate, key = writeCertificate(self.directory, 10)
        os.makedirs(os.path.join(self.directory, "data", "queue", "tmp"))
        status, lines = yield self.check(self.writeConfig(tls_certificate=certificate, tls_key=key))
        self.assertEqual(status, 1, lines)
        self.assertEqual(lines[0], f"JSMAIL WARNING - TLS certificate {certificate} for mx.test: expires in 10 days")

    @defer.inlineCallbacks
    def test_dns_not_answering(self) -> Any:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the queries, never answers
        silent.bind(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        self.dnsAddress = f"127.0.0.1:{silent.getsockname()[1]}"
        status, lines = yield self.check(self.writeConfig(), dnsTimeout=0.5)
        self.assertEqual(status, 2)
        self.assertIn(f"CRITICAL DNS ({self.dnsAddress}): no answer within 0.5 s", lines)

    @defer.inlineCallbacks
    def test_bad_configuration(self) -> Any:
        path = os.path.join(self.directory, "bad.toml")
        with open(path, "w") as f:
            f.write('[smtp]\nmax_recipients = "many"\n')
        status, lines = yield self.check(path)
        self.assertEqual(status, 2)
        self.assertEqual(lines, [f"JSMAIL CRITICAL - configuration: {path}: smtp.max_recipients: expected a whole "
                                 "number, got 'many'",
                                 f"CRITICAL configuration: {path}: smtp.max_recipients: expected a whole number, "
                                 "got 'many'"])



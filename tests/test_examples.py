"""The worked configurations of docs/operations.rst (etc/examples/) pass --check-config."""

from __future__ import annotations

import os
import subprocess

from twisted.trial import unittest

from jsmail.config import loadConfig
from tests.test_plugin import COMMAND_TIMEOUT, twistd, twistdEnvironment

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "examples")


class ExampleTests(unittest.TestCase):
    def checkConfig(self, name: str) -> None:
        """``twistd jsmail --config etc/examples/NAME --check-config``, with the data
        directory moved somewhere writable."""
        data = os.path.abspath(self.mktemp())
        path = os.path.join(EXAMPLES, name)
        result = subprocess.run(twistd("jsmail", "--config", path, "--data", data, "--dns-server", "127.0.0.1:53",
                                       "--check-config"), env=twistdEnvironment(), capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual((result.returncode, result.stdout), (0, f"jsmail: configuration OK ({path})\n"),
                         result.stderr)

    def test_inbound_mx(self) -> None:
        self.checkConfig("inbound-mx.toml")
        config = loadConfig(os.path.join(EXAMPLES, "inbound-mx.toml"))
        self.assertEqual((config.server.domains, config.listen.submission, config.server.trustedNetworks),
                         (("example.org",), (), ()))
        self.assertEqual(config.policy.smtp, ("dnsbl", "spf", "dkim", "dmarc"))

    def test_smarthost_relay(self) -> None:
        self.checkConfig("smarthost-relay.toml")
        route = loadConfig(os.path.join(EXAMPLES, "smarthost-relay.toml")).remote.smarthostRoute
        assert route is not None
        self.assertEqual((route.host, route.port, route.tls), ("smtp.provider.example", 587, "verify"))

    def test_submission_with_dkim_signing(self) -> None:
        self.checkConfig("submission-dkim.toml")
        config = loadConfig(os.path.join(EXAMPLES, "submission-dkim.toml"))
        self.assertEqual((config.listen.smtp, config.policy.submission, config.auth.senderRule),
                         ((), ("dkim-sign",), "own"))

"""README.rst's examples, run as written (newcomer review 8 and 16): each is read from
the README itself, so the test and the text cannot drift apart."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.test_plugin import COMMAND_TIMEOUT, twistd, twistdEnvironment

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.rst")


def example(startsWith: str) -> str:
    """The README's indented command that starts with ``startsWith``, continuation
    lines joined as the shell joins them."""
    with open(README) as f:
        text = f.read()
    match = re.search(r"^    (" + re.escape(startsWith) + r"(?:.*\\\n)*.*)$", text, re.M)
    assert match is not None, startsWith
    return match.group(1).replace("\\\n", " ")


def freePort() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


class ListenerExampleTests(unittest.TestCase):
    def test_the_production_command_line_listens_on_ipv4_and_ipv6(self) -> None:
        """It lost its backslashes to the shell, and then its ``[::]`` listener
        collided with the ``0.0.0.0`` one on Linux."""
        port, data = freePort(), os.path.abspath(self.mktemp())
        argv = shlex.split(example("twistd -n jsmail --data /var/lib/jsmail"))
        argv = [a.replace("/var/lib/jsmail", data).replace(":25:", f":{port}:").replace("mx.example.org", "mx.test")
                for a in argv]
        self.assertEqual(argv[:3], ["twistd", "-n", "jsmail"])
        process = subprocess.Popen(twistd("-n", "--pidfile=", *argv[2:], "--submission", "none", "--smtps", "none"),
                                   env=twistdEnvironment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, stdin=subprocess.DEVNULL)
        self.addCleanup(process.wait, COMMAND_TIMEOUT)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        for line in process.stdout:
            if "Listening for smtp" in line:
                break
        else:
            self.fail(f"twistd ended with {process.wait(COMMAND_TIMEOUT)}")
        for address in ("127.0.0.1", "::1"):
            with socket.create_connection((address, port), timeout=COMMAND_TIMEOUT) as client:
                self.assertTrue(client.recv(512).startswith(b"220 mx.test "), address)


class DotQmailExampleTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_the_dot_qmail_example_delivers_once(self) -> Any:
        """It named a program that is not there, so every retry appended the message to
        the mbox again, for five days."""
        from jsmail.config import loadConfig
        from jsmail.service import MailGateway

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for command in (example("mkdir -p jsmail-data/users/localhost/joe"), example("printf '|")):
            subprocess.run(command, shell=True, check=True, cwd=directory, timeout=COMMAND_TIMEOUT)
        gateway = MailGateway(loadConfig(settings={
            "server": {"data": os.path.join(directory, "jsmail-data")},
            "smtp": {"listen": "none", "submission": "none", "smtps": "none"},
            "queue": {"delivery_process": False},
            "remote": {"dns_server": "127.0.0.1:9"}}))  # not resolv.conf, which is watched on a timer
        gateway.startService()
        self.addCleanup(gateway.stopService)
        [result] = yield gateway.submit("a@localhost", ["joe@localhost"], b"Subject: s\n\nhello\n")
        self.assertEqual(result.status.value, "delivered", result)
        with open(os.path.join(directory, "jsmail-data", "users", "localhost", "joe", "mbox"), "rb") as f:
            self.assertEqual(f.read().count(b"\nhello\n"), 1)

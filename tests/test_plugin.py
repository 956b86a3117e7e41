"""``twistd jsmail`` as an operator runs it: the plugin is found, ``--help`` works, and a
bad setting is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

import jsmail
from jsmail.service import MailGateway

COMMAND_TIMEOUT = 30.0


def twistd(*args: str) -> list[str]:
    """The command line running the ``twistd`` installed beside this Python."""
    script = shutil.which("twistd", path=os.path.dirname(sys.executable))
    if script is None:
        raise unittest.SkipTest(f"no twistd script beside {sys.executable}")
    return [sys.executable, script, *args]


def twistdEnvironment() -> dict[str, str]:
    """The environment for a ``twistd`` subprocess: it imports the jsmail under test."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(jsmail.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def runTwistd(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd(*args), env=twistdEnvironment(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class PluginTests(unittest.TestCase):
    def test_foundAsInstalledFromAnyDirectory(self) -> None:
        """As installed (``pip install .`` or a contributor's ``pip install -e .``), with
        no PYTHONPATH and another working directory, ``twistd jsmail --help`` lists
        jsmail's options: the plugin stub is on the installed path."""
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run(twistd("jsmail", "--help"), env=environment, cwd="/",
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--smarthost=", result.stdout)

    def test_found(self) -> None:
        """Twisted's plugin system finds exactly one service maker named jsmail, and
        its options build a gateway."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "jsmail"]
        self.assertEqual(len(makers), 1)
        options = makers[0].options()
        options.parseOptions(["--data", self.mktemp(), "--hostname", "mx.test"])
        self.assertIsInstance(makers[0].makeService(options), MailGateway)

    def test_help(self) -> None:
        """``twistd jsmail --help`` exits 0 and documents the main options."""
        result = runTwistd("jsmail", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--smtp", "--data", "--domain", "--config", "--check-config"):
            self.assertIn(option, result.stdout)


class CheckConfigTests(unittest.TestCase):
    def configFile(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertRefused(self, result: subprocess.CompletedProcess[str], *expected: str) -> None:
        """One line on stderr containing each of ``expected``, nothing on stdout, no
        traceback, and a non-zero exit status."""
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        for text in expected:
            self.assertIn(text, lines[0])

    def test_good(self) -> None:
        """A valid file is reported OK, by name, and the exit status is 0."""
        path = self.configFile('[server]\nhostname = "mx.test"\n[smtp]\nmax_message_size = 1000\n')
        result = runTwistd("jsmail", "--config", path, "--check-config")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, f"jsmail: configuration OK ({path})\n")

    def test_badValue(self) -> None:
        """A value of the wrong type names the file, the key and what is wrong."""
        path = self.configFile('[smtp]\nmax_message_size = "big"\n')
        result = runTwistd("jsmail", "--config", path, "--check-config")
        self.assertRefused(result, path, "smtp.max_message_size", "expected a whole number", "'big'")

    def test_smarthostPasswordOverOpportunisticTLSRefused(self) -> None:
        """Security review M-3: --check-config refuses credentials that could go to
        whoever sits in the path."""
        path = self.configFile('[remote]\nsmarthost = "relay.example.net:587"\nsmarthost_tls = "opportunistic"\n'
                               'smarthost_username = "u"\nsmarthost_password = "S3cret"\n')
        result = runTwistd("jsmail", "--config", path, "--check-config")
        self.assertRefused(result, path, "remote.smarthost_tls", "verified certificate", "allow_insecure_auth")
        self.assertNotIn("S3cret", result.stderr)

    def test_unknownKey(self) -> None:
        """A misspelt key is refused, not ignored."""
        path = self.configFile("[smtp]\nmax_mesage_size = 1000\n")
        result = runTwistd("jsmail", "--config", path, "--check-config")
        self.assertRefused(result, path, "smtp.max_mesage_size", "unknown setting")

    def test_badEndpoint(self) -> None:
        """A bad ``--smtp`` endpoint is refused before anything starts, naming the
        command line as where it came from."""
        data = os.path.abspath(self.mktemp())
        result = runTwistd("jsmail", "--smtp", "bogus:1", "--data", data)
        self.assertRefused(result, "command line", "smtp.listen", "bogus:1")
        self.assertFalse(os.path.exists(data))


class StartTests(unittest.TestCase):
    def test_portTaken(self) -> None:
        """If its port is taken, ``twistd jsmail`` says which and exits non-zero,
        rather than running without listening."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
            try:
                result = runTwistd("-n", "--pidfile=", "jsmail", "--data", os.path.abspath(self.mktemp()),
                                   "--smtp", endpoint, "--submission", "none", "--smtps", "none", timeout=10)
            except subprocess.TimeoutExpired:
                self.fail(f"twistd still running 10 s after failing to listen on {endpoint}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(endpoint, result.stdout + result.stderr)


class BacklogTests(unittest.TestCase):
    def test_tcpListenersGetAMailServersBacklog(self) -> None:
        """Connection bursts: Twisted's default backlog of 50 dropped SYNs when 200
        clients connected at once.  TCP endpoints get the kernel's somaxconn (at least
        1024) unless the description sets a backlog itself."""
        from jsmail.listen import listenBacklog, withBacklog

        backlog = listenBacklog()
        self.assertGreaterEqual(backlog, 1024)
        self.assertEqual(withBacklog("tcp:25"), f"tcp:25:backlog={backlog}")
        self.assertEqual(withBacklog("tcp6:25:interface=\\:\\:"), f"tcp6:25:interface=\\:\\::backlog={backlog}")
        self.assertEqual(withBacklog("tcp:25:backlog=10"), "tcp:25:backlog=10")
        self.assertEqual(withBacklog("unix:/run/smtp.sock"), "unix:/run/smtp.sock")

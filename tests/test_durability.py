"""The crash test: mail acknowledged with 250 survives SIGKILL of the gateway.

A real ``twistd jsmail`` runs as a subprocess.  Client threads send one message per
connection, each to a recipient of its own, while the test kills the server with
SIGKILL at random moments and starts it again.  After a last start has emptied the
queue, every acknowledged message must be in its Maildir; delivery is at-least-once,
so a message may be there twice only if it was still in the queue at a kill (or was
never acknowledged).

The kill schedule comes from a seed named in every failure message and in test.log;
set ``JSMAIL_CRASH_SEED`` to replay a schedule.  Every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time

from twisted.python import log
from twisted.trial import unittest

from jsmail.testing import freePort
from tests.test_plugin import twistd, twistdEnvironment

KILLS = (3, 5)
KILL_DELAY = (0.05, 0.5)
CLIENTS = 3
CLIENT_TIMEOUT = 5.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DRAIN_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


def message(name: str) -> bytes:
    return f"Message-ID: <{name}@client.test>\r\nSubject: {name}\r\n\r\nThis is {name}.\r\n".encode()


class GatewayProcess:
    """``twistd -n jsmail`` on ``port`` with its data in ``dataDir``, started again and
    again; its output is appended to ``logPath``."""

    def __init__(self, dataDir: str, port: int, logPath: str) -> None:
        self.dataDir, self.port, self.logPath = dataDir, port, logPath
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        command = twistd("-n", "--pidfile=", "jsmail", "--data", self.dataDir, "--hostname", "mx.test",
                         "--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--submission", "none", "--smtps", "none")
        with open(self.logPath, "ab") as output:
            self.process = subprocess.Popen(command, env=twistdEnvironment(), stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with status {self.process.returncode}: see {self.logPath}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"not listening after {START_TIMEOUT} s: see {self.logPath}") from None
                time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL, if running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
            self.process = None

    def stop(self) -> None:
        """SIGTERM, the way an operator stops it: it must exit cleanly (twistd ends
        by re-raising the signal that stopped it, so the status says SIGTERM)."""
        assert self.process is not None
        self.process.terminate()
        try:
            status = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {STOP_TIMEOUT} s after SIGTERM: see {self.logPath}") from None
        self.process = None
        if status not in (0, -signal.SIGTERM):
            raise AssertionError(f"exited with status {status} on SIGTERM: see {self.logPath}")


class Client(threading.Thread):
    """Sends message after message, one per connection, each to its own recipient
    ``<prefix><n>@localhost``, until ``stopping`` is set.  Records the queue id of each
    acknowledged message, and the names of the others (refused or cut off)."""

    def __init__(self, prefix: str, port: int, stopping: threading.Event) -> None:
        super().__init__(name=f"crash-test client {prefix}", daemon=True)
        self.prefix, self.port, self.stopping = prefix, port, stopping
        self.acknowledged: dict[str, str] = {}
        self.unacknowledged: list[str] = []

    def run(self) -> None:
        for n in itertools.count():
            if self.stopping.is_set():
                return
            name = f"{self.prefix}{n}"
            try:
                self.acknowledged[name] = self.sendOne(name)
            except (OSError, smtplib.SMTPException):
                self.unacknowledged.append(name)
                self.stopping.wait(POLL_INTERVAL)

    def sendOne(self, name: str) -> str:
        """Send one message; its queue id if the final dot got 250, else an exception.
        The connection is dropped without QUIT, so nothing after the 250 can fail."""
        client = smtplib.SMTP(local_hostname="client.test", timeout=CLIENT_TIMEOUT)
        try:
            expect(client.connect("127.0.0.1", self.port), 220)
            expect(client.ehlo(), 250)
            expect(client.mail("a@example.org"), 250)
            expect(client.rcpt(f"{name}@localhost"), 250)
            code, text = expect(client.data(message(name)), 250)
        finally:
            client.close()
        match = re.fullmatch(rb"2\.0\.0 Queued as (\w+)", text)
        if match is None:
            raise smtplib.SMTPResponseException(code, text)
        return match.group(1).decode()


def expect(reply: tuple[int, bytes], code: int) -> tuple[int, bytes]:
    if reply[0] != code:
        raise smtplib.SMTPResponseException(*reply)
    return reply


class CrashTests(unittest.TestCase):
    def test_killedAtRandom(self) -> None:
        """No acknowledged message is lost across SIGKILLs; duplicates only of messages
        still queued at a kill; every delivered copy is whole."""
        seed = int(os.environ.get("JSMAIL_CRASH_SEED") or random.randrange(2**32))
        rng = random.Random(seed)
        dataDir = os.path.abspath(self.mktemp())
        logPath = dataDir + ".log"
        about = f"seed {seed} (rerun with JSMAIL_CRASH_SEED={seed}); server log {logPath}"
        log.msg(f"crash test: {about}")
        activeDir = os.path.join(dataDir, "queue", "active")
        mailDir = os.path.join(dataDir, "mail", "localhost")

        port = freePort()
        gateway = GatewayProcess(dataDir, port, logPath)
        self.addCleanup(gateway.kill)
        stopping = threading.Event()
        self.addCleanup(stopping.set)
        clients = [Client(f"c{i}-", port, stopping) for i in range(CLIENTS)]
        for client in clients:
            client.start()

        queuedAtKill: set[str] = set()
        for _ in range(rng.randint(*KILLS)):
            gateway.start()
            time.sleep(rng.uniform(*KILL_DELAY))
            gateway.kill()
            queuedAtKill.update(name.removesuffix(".env") for name in os.listdir(activeDir))
        stopping.set()
        for client in clients:
            client.join(CLIENT_TIMEOUT * 4)
            self.assertFalse(client.is_alive(), f"{client.name} did not stop; {about}")

        gateway.start()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while os.listdir(activeDir):
            self.assertLess(time.monotonic(), deadline, f"queue not empty after {DRAIN_TIMEOUT} s; {about}")
            time.sleep(POLL_INTERVAL)
        gateway.stop()

        acknowledged = {name: queueId for c in clients for name, queueId in c.acknowledged.items()}
        sent = set(acknowledged).union(*(c.unacknowledged for c in clients))
        delivered: dict[str, list[bytes]] = {}
        for name in os.listdir(mailDir) if os.path.isdir(mailDir) else []:
            new = os.path.join(mailDir, name, "new")
            delivered[name] = []
            for file in os.listdir(new) if os.path.isdir(new) else []:
                with open(os.path.join(new, file), "rb") as f:
                    delivered[name].append(f.read())
        log.msg(f"crash test: {len(acknowledged)} acknowledged, {len(sent) - len(acknowledged)} refused or cut off; "
                f"{sum(len(copies) > 1 for copies in delivered.values())} delivered more than once")

        self.assertGreater(len(acknowledged), 0, about)
        self.assertEqual(set(delivered) - sent, set(), f"mail for recipients never sent to; {about}")
        self.assertEqual(sorted(set(acknowledged) - set(delivered)), [], f"acknowledged but lost; {about}")
        unexplained = sorted(name for name, copies in delivered.items()
                             if len(copies) > 1 and name in acknowledged and acknowledged[name] not in queuedAtKill)
        self.assertEqual(unexplained, [], f"delivered more than once though not queued at any kill; {about}")
        for name, copies in delivered.items():
            for copy in copies:
                self.assertTrue(copy.endswith(message(name).replace(b"\r\n", b"\n")),
                                f"incomplete delivery to {name}: {copy!r}; {about}")

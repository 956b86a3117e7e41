"""The servers under test: how to start and stop each, where its mail lands,
and which processes to weigh.

Every server listens on 127.0.0.1 only, keeps its data under its own
directory, and accepts mail for ``RECIPIENT`` into a Maildir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from memory import process_tree
from postfix_instance import PostfixInstance

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RECIPIENT_LOCAL = "to"
RECIPIENT = f"{RECIPIENT_LOCAL}@localhost"
START_TIMEOUT = 30.0


class ServerUnavailable(Exception):
    """The server cannot be run here; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Server(ABC):
    """A server under test on 127.0.0.1:``port`` with its data in ``root``,
    to be able to hold ``max_sessions`` sessions at once."""

    name = ""
    #: True if a message is in new/ before its final-dot 250 is sent.
    delivers_synchronously = False

    def __init__(self, root: Path, port: int, max_sessions: int) -> None:
        self.root = root
        self.port = port
        self.max_sessions = max_sessions

    @abstractmethod
    def start(self) -> None:
        """Start and return once the port accepts connections."""

    @abstractmethod
    def stop(self) -> None:
        """Stop everything started; safe to call more than once."""

    @abstractmethod
    def maildir_new(self) -> Path:
        """The new/ directory that mail for RECIPIENT lands in."""

    @abstractmethod
    def memory_pids(self) -> list[int]:
        """The processes whose memory grows with the number of sessions."""


class SubprocessServer(Server):
    """A server that is one foreground process (and maybe its children)."""

    def __init__(self, root: Path, port: int, max_sessions: int) -> None:
        super().__init__(root, port, max_sessions)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    def env(self) -> dict[str, str]:
        """The environment for the server process."""
        return dict(os.environ)

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.argv(), cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts_connections(self.port):
            if self.process.poll() is not None:
                self.stop()
                raise ServerUnavailable(f"exited with status {self.process.returncode}: "
                                        f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailable(f"port {self.port} not open after "
                                        f"{START_TIMEOUT:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def memory_pids(self) -> list[int]:
        assert self.process is not None
        return process_tree(self.process.pid)

    def log_tail(self) -> str:
        """The last lines the server printed, on one line."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(no output)"


class JSMail(SubprocessServer):
    """jsmail run by twistd from the repository root, its connection limits
    (total and per client address) raised above ``max_sessions``."""

    name = "jsmail"

    def start(self) -> None:
        limit = self.max_sessions + 100
        (self.root / "jsmail.toml").write_text(
            f"[smtp]\nmax_connections = {limit}\n"
            f"max_connections_per_client = {limit}\n")
        super().start()

    def argv(self) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        if twistd.exists():
            command = [str(twistd)]
        else:
            command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        return command + ["-n", "--pidfile=", "jsmail",
                          "--config", str(self.root / "jsmail.toml"),
                          "--data", str(self.root / "data"),
                          "--smtp", f"tcp:{self.port}:interface=127.0.0.1",
                          "--domain", "localhost"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                          env.get("PYTHONPATH")]))
        return env

    def maildir_new(self) -> Path:
        return self.root / "data" / "mail" / "localhost" / RECIPIENT_LOCAL / "new"


class PythonPeer(SubprocessServer):
    """One of the bundled peer scripts: ``peer_*.py PORT DATADIR``."""

    delivers_synchronously = True
    script = ""

    def argv(self) -> list[str]:
        return [sys.executable, str(BENCH / self.script), str(self.port),
                str(self.root / "data")]

    def maildir_new(self) -> Path:
        return self.root / "data" / "localhost" / RECIPIENT_LOCAL / "new"


class AioSMTPD(PythonPeer):
    """aiosmtpd with a Maildir handler (fsync in the default executor)."""

    name = "aiosmtpd"
    script = "peer_aiosmtpd.py"


class TwistedMail(PythonPeer):
    """twisted.mail ESMTP with a Maildir IMessage (fsync via deferToThread)."""

    name = "twisted.mail"
    script = "peer_twistedmail.py"


class Postfix(Server):
    """A private Postfix instance delivering with virtual(8)."""

    name = "postfix"

    def __init__(self, root: Path, port: int, max_sessions: int) -> None:
        super().__init__(root, port, max_sessions)
        # Each session is an smtpd process; leave room for the other daemons.
        self.instance = PostfixInstance(root, port, [RECIPIENT_LOCAL],
                                        process_limit=max_sessions + 100)
        self.started = False

    def start(self) -> None:
        reason = PostfixInstance.unavailable()
        if reason:
            raise ServerUnavailable(reason)
        try:
            self.started = True
            self.instance.start()
            deadline = time.monotonic() + START_TIMEOUT
            while not accepts_connections(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} not open after "
                                       f"{START_TIMEOUT:.0f}s")
                time.sleep(0.1)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            self.stop()
            tail = self.instance.log_tail(3).replace("\n", " | ")
            raise ServerUnavailable(f"{e} {tail}".strip()) from e

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.instance.stop()

    def maildir_new(self) -> Path:
        return self.instance.maildir_new(RECIPIENT_LOCAL)

    def memory_pids(self) -> list[int]:
        return self.instance.smtpd_pids()


SERVERS: dict[str, type[Server]] = {
    cls.name: cls for cls in (JSMail, AioSMTPD, TwistedMail, Postfix)}

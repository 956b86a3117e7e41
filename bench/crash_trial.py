"""Crash trials: kill -9 jsmail under load and count what an acknowledgement was worth.

A message counts as acknowledged only when its final-dot ``250`` has arrived.
jsmail promises that such a message is never lost (delivery is at-least-once,
so a crash may deliver some twice).  Two kinds of trial:

``gateway``
    Each trial starts the gateway (``twistd -n jsmail``, this checkout's code),
    sends load from ``--clients`` threads, and after a random time of up to
    ``--seconds`` kills the whole process group with SIGKILL.  After the last
    trial the gateway is started once more and left to drain.

``delivery``
    The gateway runs throughout; each trial kills only the delivery process
    (``python -m jsmail.send.process``) with SIGKILL at a random moment under
    load.  The gateway starts it again by itself; then the load stops and,
    with no operator action (no restart, no ``jsmail queue flush``), every
    acknowledged message must reach the Maildir.

At the end the delivered Maildir files are counted by Message-ID:
acknowledged-but-lost (must be 0) and duplicates.  The exit status is 1 if
anything acknowledged was lost.  Everything lives in one temporary directory,
removed afterwards unless ``--keep``; nothing is sent beyond 127.0.0.1.

    python bench/crash_trial.py --kind gateway --trials 10 --seconds 8 --clients 4
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from email.parser import BytesHeaderParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import REPO, accepts_connections, free_port  # noqa: E402

DOMAIN = "example.test"
RECIPIENT = f"to@{DOMAIN}"
START_TIMEOUT = 30.0
BODY = ("The quick brown fox jumps over the lazy dog.\r\n" * 20)


class Gateway:
    """One jsmail configuration under ``root``, started and killed at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"
        self.config = root / "jsmail.toml"
        self.log = root / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            f'[server]\ndata = "{self.data}"\ndomains = ["{DOMAIN}"]\n'
            f'hostname = "crash.{DOMAIN}"\n\n'
            f'[smtp]\nlisten = ["tcp:{self.port}:interface=127.0.0.1"]\n'
            "submission = []\nsmtps = []\n"
            "max_connections = 200\nmax_connections_per_client = 200\n")
        for sub in ("tmp", "new", "cur"):  # RCPT is checked against existing mailboxes
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def maildir(self) -> Path:
        return self.data / "mail" / DOMAIN / "to"

    def start(self) -> None:
        """Start ``twistd -n jsmail`` in a session of its own; return once it listens."""
        twistd = Path(sys.executable).with_name("twistd")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "jsmail", "--config", str(self.config)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts_connections(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SystemExit(f"the gateway did not start; see {self.log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the gateway's whole process group (the delivery process too)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait, as an operator stops it."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def delivery_pid(self) -> int | None:
        """The pid of the running ``jsmail.send.process`` child, if any."""
        assert self.process is not None
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == self.process.pid and b"jsmail.send.process" in cmdline:
                return int(entry)
        return None

    def delivered(self) -> Counter[str]:
        """How many Maildir files hold each Message-ID."""
        counts: Counter[str] = Counter()
        parser = BytesHeaderParser()
        for sub in ("new", "cur"):
            for path in (self.maildir / sub).iterdir():
                try:
                    with open(path, "rb") as f:
                        messageId = parser.parse(f).get("Message-ID", "")
                except FileNotFoundError:
                    continue
                counts[messageId.strip()] += 1
        return counts

    def tracebacks(self) -> int:
        """How many tracebacks and unhandled errors the gateway logged."""
        text = self.log.read_text(errors="replace")
        return text.count("Traceback (most recent call last)") + text.count("Unhandled error")

    def queued(self, state: str = "active") -> int:
        """How many files the queue holds in ``state`` (``active`` or ``corrupt``)."""
        try:
            return len(os.listdir(self.data / "queue" / state))
        except FileNotFoundError:
            return 0


class Load:
    """``clients`` threads sending one message after another until stopped."""

    def __init__(self, port: int, clients: int, tag: str) -> None:
        self.port = port
        self.acknowledged: set[str] = set()
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(f"{tag}c{n}",), daemon=True)
                         for n in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, name: str) -> None:
        sequence = 0
        while not self._stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self._stop.is_set():
                        sequence += 1
                        messageId = f"<{name}.{sequence}@crash.{DOMAIN}>"
                        message = (f"From: from@crash.{DOMAIN}\r\nTo: {RECIPIENT}\r\n"
                                   f"Subject: crash trial\r\nMessage-ID: {messageId}\r\n\r\n{BODY}")
                        smtp.sendmail(f"from@crash.{DOMAIN}", [RECIPIENT], message)
                        with self._lock:  # sendmail returned: the final 250 arrived
                            self.acknowledged.add(messageId)
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.errors += 1
                self._stop.wait(0.05)


def drain(gateway: Gateway, acknowledged: set[str], timeout: float) -> float:
    """Wait until every acknowledged message is delivered and the queue is empty;
    return the seconds it took (or ``timeout`` if it never happened)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if gateway.queued() == 0 and acknowledged <= set(gateway.delivered()):
            return time.monotonic() - started
        time.sleep(0.5)
    return timeout


def gateway_trials(gateway: Gateway, args: argparse.Namespace) -> tuple[set[str], int]:
    acknowledged: set[str] = set()
    errors = 0
    for trial in range(args.trials):
        gateway.start()
        load = Load(gateway.port, args.clients, f"g{trial}")
        load.start()
        moment = random.uniform(0.5, args.seconds)
        time.sleep(moment)
        gateway.kill()
        load.stop()
        acknowledged |= load.acknowledged
        errors += load.errors
        print(f"trial {trial + 1}: killed the gateway after {moment:.1f} s; "
              f"{len(load.acknowledged)} acknowledged, {gateway.queued()} in active/",
              file=sys.stderr)
    gateway.start()
    return acknowledged, errors


def delivery_trials(gateway: Gateway, args: argparse.Namespace) -> tuple[set[str], int]:
    gateway.start()
    load = Load(gateway.port, args.clients, "d")
    load.start()
    for trial in range(args.trials):
        moment = random.uniform(0.5, args.seconds)
        time.sleep(moment)
        pid = gateway.delivery_pid()
        while pid is None:  # still being started again after the previous kill
            time.sleep(0.1)
            pid = gateway.delivery_pid()
        os.kill(pid, signal.SIGKILL)
        print(f"trial {trial + 1}: killed the delivery process {pid} after {moment:.1f} s; "
              f"{len(load.acknowledged)} acknowledged so far, {gateway.queued()} in active/",
              file=sys.stderr)
    time.sleep(2.0)  # let the last restart happen under load too
    load.stop()
    return load.acknowledged, load.errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("gateway", "delivery"), default="gateway")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="longest load before each kill (the moment is uniform in 0.5..SECONDS)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--drain", type=float, default=120.0,
                        help="how long to wait for delivery after the last trial")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    random.seed(args.seed)
    root = Path(tempfile.mkdtemp(prefix="jsmail-crash-"))
    gateway = Gateway(root)
    started = time.monotonic()
    try:
        trials = gateway_trials if args.kind == "gateway" else delivery_trials
        acknowledged, errors = trials(gateway, args)
        drained = drain(gateway, acknowledged, args.drain)
        counts = gateway.delivered()
        gateway.stop()
    finally:
        gateway.kill()
    lost = acknowledged - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    unacknowledged = len(set(counts) - acknowledged)
    print(f"kind: {args.kind}, trials: {args.trials}, clients: {args.clients}, "
          f"seconds: {args.seconds:g}, wall time: {time.monotonic() - started:.0f} s\n"
          f"acknowledged: {len(acknowledged)}\n"
          f"delivered (distinct Message-IDs): {len(counts)}\n"
          f"acknowledged but lost: {len(lost)}\n"
          f"duplicates: {duplicates}\n"
          f"delivered though never acknowledged (interrupted): {unacknowledged}\n"
          f"left in active/: {gateway.queued()}, set aside in corrupt/: {gateway.queued('corrupt')}\n"
          f"drained {'in' if drained < args.drain else 'NOT within'} {drained:.1f} s\n"
          f"client errors (connections cut or refused): {errors}\n"
          f"tracebacks in the gateway log: {gateway.tracebacks()}")
    if lost:
        print("lost:", " ".join(sorted(lost)[:20]))
    if args.keep:
        print(f"kept {root} (the gateway's log is {gateway.log.name})", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

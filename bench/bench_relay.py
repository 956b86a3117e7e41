"""Benchmark jsmail's outbound (relay) throughput into a discarding sink on loopback.

Each run starts a fresh jsmail (twistd) whose smarthost is a sink on
127.0.0.1, pauses its delivery process (SIGSTOP), queues N messages for a
non-local recipient through jsmail's SMTP listener, starts the sink, resumes
the delivery process (SIGCONT) and times until the sink has received all N.
Two modes, in interleaved rounds: connection reuse (``[remote] idle_timeout
= 10``, jsmail's default) and "no reuse" (``idle_timeout`` tiny); the sink's
session counter shows how many SMTP sessions each mode really used.

See bench/README.rst, section "Relay throughput".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from memory import process_tree
from report import table
from servers import BENCH, START_TIMEOUT, JSMail, ServerUnavailable, SubprocessServer, free_port
from throughput import smtp_source

SENDER = "from@localhost"
RECIPIENT = "sink@relay.example"  # not a local domain: relayed to the smarthost
SMTP_SINK = "/usr/sbin/smtp-sink"
FILL_SESSIONS = 10
STOP_WAIT = 10.0


@dataclass(frozen=True)
class Mode:
    """One way of running jsmail's remote delivery."""

    name: str
    idle_timeout: float


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


class RunFailed(Exception):
    """A run did not complete; the message says where."""


# -- the sink ------------------------------------------------------------------


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:``port`` (from /proc/net/tcp, so
    that no test connection shows up in the sink's session counter)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in lines))


class Sink(ABC):
    """A discarding SMTP server on 127.0.0.1:``port`` that prints smtp-sink's
    ``-c`` counters (``sess=S quit=Q mesg=M``, one record per change, each
    ended by CR); a thread reads them as they come."""

    name = ""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.sessions = self.quits = self.messages = 0
        self.changed = threading.Condition()
        self.last_change = time.monotonic()
        self._reader: threading.Thread | None = None

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that runs the sink in the foreground."""

    def start(self) -> None:
        """Start and return once the port listens."""
        with open(self.root / f"{self.name}.err", "wb") as err:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RunFailed(f"{self.name} did not listen on 127.0.0.1:{self.port}: "
                                f"{(self.root / f'{self.name}.err').read_text(errors='replace')}")
            time.sleep(0.01)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream, record = self.process.stdout, b""
        while chunk := stream.read1(65536):
            *records, record = (record + chunk).split(b"\r")
            if records:
                self._update(records[-1])

    def _update(self, record: bytes) -> None:
        try:
            counts = dict(field.split(b"=") for field in record.split())
            values = int(counts[b"sess"]), int(counts[b"quit"]), int(counts[b"mesg"])
        except (ValueError, KeyError):
            return
        with self.changed:
            self.sessions, self.quits, self.messages = values
            self.last_change = time.monotonic()
            self.changed.notify_all()

    def wait_messages(self, count: int, timeout: float) -> float | None:
        """The monotonic time at which the sink had received ``count`` messages,
        or None if it has not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.messages < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.process is not None and self.process.poll() is not None):
                    return None
                self.changed.wait(min(left, 0.5))
            return self.last_change

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until the counters have not changed for ``quiet`` seconds (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - self.last_change < quiet:
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the sink; safe to call more than once."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_WAIT)
        if self._reader is not None:
            self._reader.join(STOP_WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


class SmtpSink(Sink):
    """Postfix's smtp-sink: ``smtp-sink -c [-u nobody] 127.0.0.1:PORT 1000``."""

    name = "smtp-sink"

    def argv(self) -> list[str]:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # required when root
        return [SMTP_SINK, "-c", *user, f"127.0.0.1:{self.port}", "1000"]


class AioSink(Sink):
    """bench/sink_aiosmtpd.py, when smtp-sink is not installed."""

    name = "aiosmtpd-sink"

    def argv(self) -> list[str]:
        return [sys.executable, str(BENCH / "sink_aiosmtpd.py"), str(self.port)]


SINKS: dict[str, type[Sink]] = {"smtp-sink": SmtpSink, "aiosmtpd": AioSink}


# -- jsmail --------------------------------------------------------------------


def cpu_ticks(pid: int) -> int | None:
    """User plus system CPU time of ``pid`` in clock ticks (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


class RelayGateway(JSMail):
    """jsmail relaying everything to the sink: run by twistd from the
    repository root with only ``--config``; its delivery process can be paused."""

    name = "jsmail"

    def __init__(self, root: Path, port: int, sink_port: int, mode: Mode,
                 args: argparse.Namespace) -> None:
        super().__init__(root, port, args.fill_sessions)
        self.sink_port = sink_port
        self.mode = mode
        self.args = args
        self.config = root / "jsmail.toml"
        self.delivery_pid: int | None = None
        self.paused = False

    def config_text(self) -> str:
        q = json.dumps
        return "\n".join([
            "[server]",
            f"hostname = {q('relay.localhost')}",
            f"data = {q(str(self.root / 'data'))}",
            'trusted_networks = ["127.0.0.0/8"]',
            "[smtp]",
            f"listen = [{q(f'tcp:{self.port}:interface=127.0.0.1')}]",
            "submission = []",
            "smtps = []",
            f"max_connections_per_client = {self.max_sessions + 100}",
            "[remote]",
            # Never used (the smarthost is an address), kept on loopback anyway.
            f"dns_server = {q(f'127.0.0.1:{self.args.dns_port}')}",
            f"smarthost = {q(f'127.0.0.1:{self.sink_port}')}",
            'smarthost_tls = "none"',
            f"idle_timeout = {self.mode.idle_timeout!r}",
            f"per_host = {self.args.per_host}",
            # Nothing should fail; if something does, retry it soon.
            "host_backoff = 0.5",
            "[queue]",
            f"concurrency = {self.args.concurrency}",
            "retry_first = 0.5",
            "",
        ])

    def start(self) -> None:
        self.config.write_text(self.config_text())
        SubprocessServer.start(self)
        self.delivery_pid = self._find_delivery_process()

    def argv(self) -> list[str]:
        command = super().argv()
        return command[:command.index("--config") + 2]  # no command-line overrides

    def _find_delivery_process(self) -> int:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for pid in process_tree(self.process.pid)[1:]:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"jsmail.send.process" in cmdline and self._ready(pid, deadline):
                    return pid
            time.sleep(0.05)
        self.stop()
        raise ServerUnavailable("no delivery process (python -m jsmail.send.process) got ready; "
                                "this benchmark needs [queue] delivery_process = true")

    def _ready(self, pid: int, deadline: float) -> bool:
        """Wait until the delivery process holds ``queue/send.lock`` (it takes it
        as it starts its services) and then has used no CPU for 0.3 s, so that
        its start-up is over before the clock runs."""
        lock = self.root / "data" / "queue" / "send.lock"
        while time.monotonic() < deadline:
            try:
                inode = lock.stat().st_ino
                locks = Path("/proc/locks").read_text().splitlines()
            except OSError:
                locks, inode = [], -1
            if any(f[4] == str(pid) and f[5].rsplit(":", 1)[-1] == str(inode)
                   for f in (line.split() for line in locks) if len(f) > 5):
                break
            time.sleep(0.05)
        else:
            return False
        before = cpu_ticks(pid)
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if (now := cpu_ticks(pid)) == before:
                return True
            before = now
        return False

    def pause(self) -> None:
        assert self.delivery_pid is not None
        os.kill(self.delivery_pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.delivery_pid is not None:
            self.paused = False
            try:
                os.kill(self.delivery_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        super().stop()

    def queued(self) -> int:
        """Messages in the queue (``queue/active/ID``, envelope updates aside)."""
        try:
            names = os.listdir(self.root / "data" / "queue" / "active")
        except FileNotFoundError:
            return 0
        return sum(1 for name in names if not name.endswith(".env"))

    def log_events(self) -> dict[str, int]:
        """How many of each operator-log event the log holds."""
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if "[jsmail.maillog#" in line:
                event = line.split("] ", 1)[1].split(" ", 1)[0]
                counts[event] = counts.get(event, 0) + 1
        return counts


# -- one run -------------------------------------------------------------------


def fill(args: argparse.Namespace, port: int) -> float:
    """Queue ``args.messages`` messages for RECIPIENT through jsmail's SMTP
    listener; seconds taken."""
    if args.loadgen == "smtp-source":
        argv = [smtp_source() or "smtp-source", "-d", "-s", str(args.fill_sessions),
                "-m", str(args.messages), "-l", str(args.size), "-f", SENDER,
                "-t", RECIPIENT, "-M", "fill.localhost", f"127.0.0.1:{port}"]
    else:
        argv = [sys.executable, str(BENCH / "loadgen.py"), "-s", str(args.fill_sessions),
                "-m", str(args.messages), "-l", str(args.size), "-f", SENDER,
                "-t", RECIPIENT, f"127.0.0.1:{port}"]
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RunFailed(f"{args.loadgen} timed out after {args.timeout:.0f}s") from e
    if result.returncode != 0:
        raise RunFailed(f"{args.loadgen}: {(result.stderr or result.stdout).strip()}")
    return time.monotonic() - start


@dataclass(frozen=True)
class RunResult:
    """Messages/s relayed, seconds, SMTP sessions the sink saw end, and
    operator-log events other than queued/delivered/removed."""

    rate: float
    seconds: float
    sessions: int
    anomalies: dict[str, int]


def run_once(args: argparse.Namespace, root: Path, mode: Mode) -> RunResult:
    """One stop-and-fill run in ``root``; every process is stopped on return."""
    root.mkdir()
    with ExitStack() as stack:
        gateway = RelayGateway(root, free_port(), free_port(), mode, args)
        stack.callback(gateway.stop)
        gateway.start()
        gateway.pause()
        fill_seconds = fill(args, gateway.port)
        if (queued := gateway.queued()) != args.messages:
            raise RunFailed(f"{queued} messages queued, {args.messages} sent")
        sink = SINKS[args.sink](root, gateway.sink_port)
        stack.callback(sink.stop)
        sink.start()
        start = time.monotonic()
        gateway.resume()
        end = sink.wait_messages(args.messages, args.timeout)
        if end is None:
            raise RunFailed(f"the sink received {sink.messages} of {args.messages} messages "
                            f"in {args.timeout:.0f}s ({gateway.queued()} still queued)")
        seconds = end - start
        # Let jsmail record the last deliveries, then stop it: it says QUIT on the
        # sessions it keeps, so the sink has counted every session once it is gone.
        deadline = time.monotonic() + args.timeout
        while gateway.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        gateway.stop()
        sink.wait_quiet(0.3, STOP_WAIT)
        events = gateway.log_events()
        anomalies = {k: v for k, v in events.items()
                     if k not in ("connect", "queued", "delivered", "removed") and v}
        if sink.messages != args.messages:
            anomalies["sink messages"] = sink.messages
        if gateway.queued():
            anomalies["left in queue"] = gateway.queued()
        log(f"  filled in {fill_seconds:.1f}s; relayed in {seconds:.2f}s over "
            f"{sink.sessions} session(s)")
        return RunResult(args.messages / seconds, seconds, sink.sessions, anomalies)


# -- main ----------------------------------------------------------------------


def jsmail_defaults() -> tuple[int, int]:
    """jsmail's default [queue] concurrency and [remote] per_host."""
    try:
        from jsmail.config import Config
    except ImportError:
        return 20, 5
    return Config.deliveryConcurrency, Config.perHost


def parse_args() -> argparse.Namespace:
    concurrency, per_host = jsmail_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 200 messages")
    parser.add_argument("--messages", type=int, help="messages per run (default 2000)")
    parser.add_argument("--rounds", type=int, help="rounds per mode (default 3)")
    parser.add_argument("--size", type=int, default=1024,
                        help="message payload octets (default 1024)")
    parser.add_argument("--no-reuse-idle", type=float, default=0.0, metavar="SECONDS",
                        help="[remote] idle_timeout of the no-reuse mode (default 0: a session per message)")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"[queue] concurrency (default {concurrency}, jsmail's)")
    parser.add_argument("--per-host", type=int, default=per_host,
                        help=f"[remote] per_host (default {per_host}, jsmail's)")
    parser.add_argument("--sink", choices=list(SINKS),
                        default="smtp-sink" if os.access(SMTP_SINK, os.X_OK) else "aiosmtpd",
                        help="the sink (default smtp-sink if installed, else aiosmtpd)")
    parser.add_argument("--loadgen", choices=["smtp-source", "asyncio"],
                        default="smtp-source" if smtp_source() else "asyncio",
                        help="what queues the messages (default smtp-source if installed)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for filling and for relaying, each (default 120)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.messages = args.messages or (200 if args.quick else 2000)
    args.fill_sessions = FILL_SESSIONS
    args.dns_port = free_port()
    if args.sink == "smtp-sink" and not os.access(SMTP_SINK, os.X_OK):
        parser.error(f"{SMTP_SINK} is not installed; use --sink aiosmtpd")
    if args.loadgen == "smtp-source" and not smtp_source():
        parser.error("smtp-source is not installed; use --loadgen asyncio")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    log("terminated: stopping jsmail and the sink")
    raise SystemExit(128 + signum)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    modes = [Mode("reuse", 10.0), Mode("no-reuse", args.no_reuse_idle)]
    results: dict[str, list[RunResult]] = {m.name: [] for m in modes}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jsmail-relay-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for mode in modes:
                label = f"round {round_}/{args.rounds} {mode.name}"
                log(f"{label}: idle_timeout {mode.idle_timeout:g}, {args.messages} messages")
                try:
                    result = run_once(args, Path(tmp) / f"{round_}-{mode.name}", mode)
                except (RunFailed, ServerUnavailable, OSError, subprocess.SubprocessError) as e:
                    log(f"{label}: failed: {e}")
                    continue
                results[mode.name].append(result)
                note = f"; anomalies: {result.anomalies}" if result.anomalies else ""
                log(f"{label}: {result.rate:.0f} msg/s, {result.sessions} session(s){note}")

    print(f"\nRelay throughput: {args.messages} messages of {args.size} octets per run, "
          f"sink {args.sink}, queued with {args.loadgen}; median of {args.rounds} round(s); "
          f"total {time.monotonic() - started:.0f}s.")
    print(f"jsmail delivery settings: [queue] concurrency = {args.concurrency}, "
          f"[remote] per_host = {args.per_host}, smarthost_tls = \"none\".\n")
    rows, medians = [], {}
    for mode in modes:
        runs = results[mode.name]
        medians[mode.name] = statistics.median(r.rate for r in runs) if runs else None
        rows.append([
            mode.name, f"{mode.idle_timeout:g}",
            "-" if not runs else f"{medians[mode.name]:.0f}",
            " ".join(f"{r.rate:.0f}" for r in runs) or "-",
            "-" if not runs else f"{statistics.median(r.sessions for r in runs):.0f}",
            "-" if not runs else f"{args.messages / statistics.median(r.sessions for r in runs):.1f}",
        ])
    print(table(["mode", "idle_timeout s", "msg/s (median)", "msg/s per round",
                 "sessions", "msg/session"], rows))
    reuse, no_reuse = medians["reuse"], medians["no-reuse"]
    ratio = f"{reuse / no_reuse:.2f}" if reuse and no_reuse else "-"
    print(f"\nreuse/no-reuse: {ratio}")
    if results["no-reuse"]:
        sessions = statistics.median(r.sessions for r in results["no-reuse"])
        if sessions < args.messages * 0.9:
            print(f"note: the no-reuse mode used {sessions:.0f} sessions for {args.messages} "
                  f"messages: idle_timeout closes only a session left idle that long, and the "
                  f"next message for the host takes it sooner (at once if it was waiting "
                  f"for a per_host slot); see bench/README.rst.")
    anomalies = [(m, i + 1, r.anomalies) for m, runs in results.items()
                 for i, r in enumerate(runs) if r.anomalies]
    for mode_name, index, found in anomalies:
        print(f"note: {mode_name} run {index}: {found}")
    if any(not runs for runs in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: jsmail and the sink stopped")

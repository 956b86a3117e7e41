"""Benchmark jsmail against aiosmtpd, twisted.mail and Postfix on loopback.

Measures, for each server, with the same load generator and rounds
interleaved across servers:

1. messages/s accepted (final-dot 250) at 1, 10 and 50 concurrent sessions
   with 1 KiB and 100 KiB messages, and the jsmail/peer ratio per cell;
2. messages/s accepted and delivered into the Maildir (new/ polled);
3. memory per idle session (N sessions after EHLO, RSS before/after).

Run as root (Postfix needs it); see bench/README.rst.
"""

from __future__ import annotations

import argparse
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from loadgen import SMTPReplyError
from memory import MemoryResult, measure_idle_sessions
from report import Cell, Rates, memory_table, rate_table
from servers import SERVERS, Server, ServerUnavailable, free_port
from throughput import GENERATORS, Load, RunFailed, RunResult, run_once, smtp_source

SIZES = [1024, 100 * 1024]
SESSIONS = [1, 10, 50]
WARM_UP = Load(sessions=2, messages=20, size=1024)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 50 messages, 100 idle sessions")
    parser.add_argument("--only", action="append", choices=list(SERVERS),
                        metavar="SERVER",
                        help=f"run only this server (repeatable): {', '.join(SERVERS)}")
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 3)")
    parser.add_argument("--messages", type=int, help="messages per run (default 1000)")
    parser.add_argument("--idle", type=int,
                        help="idle sessions for the memory test (default 1000)")
    parser.add_argument("--loadgen", choices=list(GENERATORS),
                        default="smtp-source" if smtp_source() else "asyncio",
                        help="load generator (default: smtp-source if installed)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for each run and each wait (default 120)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.messages = args.messages or (50 if args.quick else 1000)
    args.idle = args.idle or (100 if args.quick else 1000)
    args.servers = args.only or list(SERVERS)
    if args.loadgen == "smtp-source" and not smtp_source():
        parser.error("smtp-source is not installed; use --loadgen asyncio")
    return args


def raise_file_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE (inherited by the servers) to at least ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log(f"warning: open files limited to {target}, {needed} wanted")


def _terminate(signum: int, frame: FrameType | None) -> None:
    log("terminated: stopping the servers")
    raise SystemExit(128 + signum)


@contextmanager
def running(names: list[str], workdir: Path, label: str, max_sessions: int,
            args: argparse.Namespace, skipped: dict[str, str]) -> Iterator[list[Server]]:
    """Start and warm up the named servers; skip (and note) those that fail."""
    with ExitStack() as stack:
        servers = []
        for name in names:
            root = workdir / f"{label}-{name}"
            root.mkdir()
            server = SERVERS[name](root, free_port(), max_sessions)
            log(f"starting {name} on 127.0.0.1:{server.port}")
            stack.callback(server.stop)
            try:
                server.start()
            except ServerUnavailable as e:
                skipped[name] = f"{label}: {e}"
                log(f"{name}: skipped ({e})")
                continue
            try:
                run_once(server, args.loadgen, WARM_UP, args.timeout)
            except RunFailed as e:
                server.stop()
                skipped[name] = f"{label}: warm-up failed: {e}"
                log(f"{name}: skipped (warm-up failed: {e})")
                continue
            servers.append(server)
        yield servers


def measure_throughput(args: argparse.Namespace, workdir: Path,
                       skipped: dict[str, str]) -> tuple[Rates, Rates, set[str]]:
    """Median accepted and delivered rates per server and cell, and the
    names of the servers that deliver before accepting."""
    runs: dict[str, dict[Cell, list[RunResult]]] = {}
    with running(args.servers, workdir, "throughput", max(SESSIONS), args,
                 skipped) as servers:
        synchronous = {s.name for s in servers if s.delivers_synchronously}
        for size in SIZES:
            for sessions in SESSIONS:
                load = Load(sessions, args.messages, size)
                for round_ in range(1, args.rounds + 1):
                    for server in servers:
                        label = (f"{size // 1024} KiB x{sessions} round "
                                 f"{round_}/{args.rounds} {server.name}")
                        try:
                            result = run_once(server, args.loadgen, load, args.timeout)
                        except RunFailed as e:
                            log(f"{label}: failed: {e}")
                            continue
                        cell_runs = runs.setdefault(server.name, {})
                        cell_runs.setdefault((size, sessions), []).append(result)
                        note = ("not all delivered in time" if result.delivered is None
                                else f"{result.delivered:.0f} delivered/s")
                        log(f"{label}: {result.accepted:.0f} accepted/s, {note}")
    accepted = {name: {cell: _median([r.accepted for r in results])
                       for cell, results in cells.items()}
                for name, cells in runs.items()}
    delivered = {name: {cell: _median([r.delivered for r in results])
                        for cell, results in cells.items()}
                 for name, cells in runs.items()}
    return accepted, delivered, synchronous


def _median(values: list[float | None]) -> float | None:
    """Median of the runs; None if any run's value is missing."""
    present = [v for v in values if v is not None]
    if not values or len(present) < len(values):
        return None
    return statistics.median(present)


def measure_memory(args: argparse.Namespace, workdir: Path,
                   skipped: dict[str, str]) -> dict[str, MemoryResult]:
    """Memory per idle session, each server started fresh and alone."""
    results = {}
    for name in args.servers:
        if name in skipped:
            continue
        with running([name], workdir, "memory", args.idle, args, skipped) as servers:
            for server in servers:
                log(f"memory: {args.idle} idle sessions on {name}")
                try:
                    result = measure_idle_sessions(
                        server.port, args.idle, server.memory_pids, args.timeout)
                except (OSError, TimeoutError, SMTPReplyError) as e:
                    skipped[name] = f"memory: {e!r}"
                    log(f"memory: {name} failed: {e!r}")
                else:
                    results[name] = result
                    log(f"memory: {name}: {result.rss_per_session:.1f} KiB/session")
    return results


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    raise_file_limit(2 * args.idle + 1024)
    skipped: dict[str, str] = {}
    cells = [(size, sessions) for size in SIZES for sessions in SESSIONS]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jsmail-bench-") as tmp:
        workdir = Path(tmp)
        # Postfix's delivery user must be able to reach its maildirs in here.
        workdir.chmod(0o755)
        accepted, delivered, synchronous = measure_throughput(args, workdir, skipped)
        memory = measure_memory(args, workdir, skipped)

    print(f"\nLoad generator: {args.loadgen}; {args.messages} messages per run; "
          f"median of {args.rounds} round(s); total {time.monotonic() - started:.0f}s.")
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    if accepted:
        print("\n1. Messages/s accepted (final-dot 250 received)\n")
        print(rate_table(accepted, cells))
        print("\n2. Messages/s accepted and delivered into the Maildir\n")
        print(rate_table(delivered, cells, synchronous))
        if synchronous:
            print("\n* delivers (writes and fsyncs the Maildir file) before its 250 "
                  "reply, so this equals its acceptance rate.")
    if memory:
        print(f"\n3. Memory per idle session ({args.idle} sessions after EHLO)\n")
        print(memory_table(memory))
        if "postfix" in memory:
            print("\nPostfix: summed over its smtpd processes; RSS counts the pages "
                  "they share once per process, PSS splits them.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: servers stopped")

"""One throughput run: drive a load at a server, time acceptance, then wait
for delivery into the Maildir.

A message counts as delivered when its file appears in new/: the latest
ctime there (set by the rename or link into new/) is when the last one did,
so polling for completion does not have to compete for CPU during the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import BENCH, RECIPIENT, Server

SENDER = "from@localhost"
POLL_INTERVAL = 0.05


class RunFailed(Exception):
    """The load generator failed or timed out."""


@dataclass(frozen=True)
class Load:
    """``messages`` messages of ``size`` payload bytes over ``sessions`` sessions."""

    sessions: int
    messages: int
    size: int


@dataclass(frozen=True)
class RunResult:
    """Messages per second accepted, and accepted and delivered (None if
    delivery did not complete in time)."""

    accepted: float
    delivered: float | None


def smtp_source() -> str | None:
    """The path of Postfix's smtp-source, if installed."""
    return shutil.which("smtp-source",
                        path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def _run_smtp_source(port: int, load: Load, timeout: float) -> tuple[int, float]:
    argv = [smtp_source() or "smtp-source", "-d", "-s", str(load.sessions),
            "-m", str(load.messages), "-l", str(load.size), "-f", SENDER,
            "-t", RECIPIENT, "-M", "loadgen.localhost", f"127.0.0.1:{port}"]
    start_ns = time.time_ns()
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RunFailed(f"smtp-source timed out after {timeout:.0f}s") from e
    if result.returncode != 0:
        raise RunFailed(f"smtp-source: {result.stderr.strip()}")
    return start_ns, time.monotonic() - start


def _run_asyncio(port: int, load: Load, timeout: float) -> tuple[int, float]:
    argv = [sys.executable, str(BENCH / "loadgen.py"), "-s", str(load.sessions),
            "-m", str(load.messages), "-l", str(load.size), "-f", SENDER,
            "-t", RECIPIENT, f"127.0.0.1:{port}"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()  # "start": the process is up, the clock starts
        start_ns = time.time_ns()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RunFailed(f"loadgen timed out after {timeout:.0f}s") from e
        finally:
            proc.kill()
    if proc.returncode != 0 or not out.startswith("elapsed "):
        raise RunFailed(err.strip() or f"loadgen exited with {proc.returncode}")
    return start_ns, float(out.split()[1])


GENERATORS = {"smtp-source": _run_smtp_source, "asyncio": _run_asyncio}


def _count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def _last_change_ns(directory: Path) -> int:
    return max(entry.stat().st_ctime_ns for entry in os.scandir(directory))


def _clear(directory: Path) -> None:
    for name in os.listdir(directory):
        os.unlink(directory / name)


def run_once(server: Server, generator: str, load: Load, timeout: float) -> RunResult:
    """Send ``load`` to ``server``; wait (bounded) until it is all in new/.

    Delivered mail is removed afterwards so the next run starts empty.
    """
    new = server.maildir_new()
    target = _count(new) + load.messages
    start_ns, accept_seconds = GENERATORS[generator](server.port, load, timeout)
    accepted = load.messages / accept_seconds
    deadline = time.monotonic() + timeout
    while (count := _count(new)) < target and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    if count < target:
        return RunResult(accepted, None)
    deliver_seconds = (_last_change_ns(new) - start_ns) / 1e9
    _clear(new)
    # Done when the last message is both accepted and delivered.
    return RunResult(accepted, load.messages / max(accept_seconds, deliver_seconds))

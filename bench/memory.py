"""Server memory per idle SMTP session.

Opens N sessions (220 greeting read, EHLO answered), weighs the server
processes before and after from /proc, and closes the sessions again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loadgen import reply

CONNECT_CONCURRENCY = 50


@dataclass
class MemoryResult:
    """Summed RSS (and PSS, where /proc has it) in KiB before and after."""

    sessions: int
    rss_before: int
    rss_after: int
    pss_before: int | None
    pss_after: int | None

    @property
    def rss_per_session(self) -> float:
        return (self.rss_after - self.rss_before) / self.sessions

    @property
    def pss_per_session(self) -> float | None:
        if self.pss_before is None or self.pss_after is None:
            return None
        return (self.pss_after - self.pss_before) / self.sessions


def _proc_field(path: Path, field: str) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return None


def rss_kib(pids: list[int]) -> int:
    """Summed VmRSS of ``pids`` (processes gone meanwhile count 0)."""
    return sum(_proc_field(Path(f"/proc/{pid}/status"), "VmRSS:") or 0 for pid in pids)


def pss_kib(pids: list[int]) -> int | None:
    """Summed proportional set size of ``pids``, or None without smaps_rollup."""
    total = 0
    for pid in pids:
        pss = _proc_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
        if pss is None:
            return None
        total += pss
    return total


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := parent_pid(int(entry.name))) is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


async def open_idle_session(port: int,
                            gate: asyncio.Semaphore) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One session on ``port`` that has read the greeting and had its EHLO answered
    (at most ``gate``'s count being opened at once)."""
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reply(reader, 220)
            writer.write(b"EHLO idle.localhost\r\n")
            await reply(reader, 250)
        except BaseException:
            writer.close()
            raise
        return reader, writer


async def _measure(port: int, sessions: int,
                   pids: Callable[[], list[int]]) -> MemoryResult:
    before = pids()
    rss_before, pss_before = rss_kib(before), pss_kib(before)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tasks = [asyncio.ensure_future(open_idle_session(port, gate)) for _ in range(sessions)]
    try:
        await asyncio.gather(*tasks)
        after = pids()
        return MemoryResult(sessions, rss_before, rss_kib(after),
                            pss_before, pss_kib(after))
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result()[1].close()
            else:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def measure_idle_sessions(port: int, sessions: int, pids: Callable[[], list[int]],
                          timeout: float) -> MemoryResult:
    """Hold ``sessions`` idle sessions open on ``port`` and weigh ``pids()``."""
    return asyncio.run(asyncio.wait_for(_measure(port, sessions, pids), timeout))

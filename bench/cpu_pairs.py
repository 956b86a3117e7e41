"""CPU per message of running SMTP servers, in interleaved rounds.

Each server is named by its port and the process id at the root of its process tree
(a twistd's pid covers its receiving and delivery processes).  Every server is first
warmed with ``--warm`` messages, then each round sends ``--messages`` messages to each
server in turn with Postfix's ``smtp-source``; a server's CPU is the user and system
time its whole tree spent in that run, from ``/proc``.  Prints each round, then the
medians and each server's median ratio to the first, round by round::

    python3 bench/cpu_pairs.py base=2575:31875 nolog=2577:31892 twisted=2528:31919

Why this shape: the machine's speed drifts by more than most changes are worth, so
only servers measured in the same rounds compare; and a server whose data directory
was just removed and made again runs 30-40 % slower for its first 20,000 or so
messages (ext4 looking past recently freed inodes), so every server is warmed past
that before a round counts.  Each server needs a Maildir for ``--to`` already.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from dataclasses import dataclass

from memory import process_tree

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    pid: int


def cpuSeconds(pids: list[int]) -> float:
    """User and system time of ``pids`` so far (those that are gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def send(server: Server, count: int, args: argparse.Namespace) -> float:
    """Send ``count`` messages; return the seconds it took."""
    started = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(count), "-l", str(args.size),
                    "-f", args.sender, "-t", args.to, f"127.0.0.1:{server.port}"], check=True)
    return time.perf_counter() - started


def measure(server: Server, args: argparse.Namespace) -> tuple[float, float]:
    """(µs of CPU per message, messages per second) of one run."""
    pids = process_tree(server.pid)
    before = cpuSeconds(pids)
    seconds = send(server, args.messages, args)
    used = cpuSeconds(pids) - before
    return used / args.messages * 1e6, args.messages / seconds


def parseServer(text: str) -> Server:
    name, _, rest = text.partition("=")
    port, _, pid = rest.partition(":")
    return Server(name, int(port), int(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("servers", nargs="+", type=parseServer, help="NAME=PORT:PID")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--warm", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sender", default="from@example.test")
    parser.add_argument("--to", default="to@example.test")
    args = parser.parse_args()
    for server in args.servers:
        send(server, args.warm, args)
    rounds: list[list[tuple[float, float]]] = []
    for number in range(args.rounds):
        results = [measure(server, args) for server in args.servers]
        rounds.append(results)
        shown = (f"{server.name} {cpu:.0f} µs {rate:.0f} msg/s"
                 for server, (cpu, rate) in zip(args.servers, results, strict=True))
        print(f"round {number + 1}: " + "  ".join(shown))
    first = args.servers[0]
    for i, server in enumerate(args.servers):
        cpu = statistics.median(r[i][0] for r in rounds)
        rate = statistics.median(r[i][1] for r in rounds)
        line = f"{server.name}: median {cpu:.0f} µs/msg, {rate:.0f} msg/s"
        if i:
            cpuRatio = statistics.median(r[i][0] / r[0][0] for r in rounds)
            rateRatio = statistics.median(r[i][1] / r[0][1] for r in rounds)
            line += f"; against {first.name}, round by round: CPU {cpuRatio:.3f}x, rate {rateRatio:.3f}x"
        print(line)


if __name__ == "__main__":
    main()

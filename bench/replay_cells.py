"""The common harness's cells replayed against one running server, without the harness.

Before each cell, as ``../shared/bench`` does, the Maildir's ``new/`` and ``cur/`` are
emptied and the file system synced; then Postfix's ``smtp-source`` sends one message
per session at the cell's concurrency.  By default a cell is cut off after
``--seconds`` by SIGTERM, in the middle of its sessions, and its rate is the files that
reached ``new/`` after the first half second (the harness takes the slope of
``smtp-source``'s counter instead); with ``--messages`` (one count, or one per cell) a
cell sends that many messages and its rate is their count over the time taken.  Used
to ask whether a server's 50-session cells are slower after cells of 1 and 10
sessions than after 50-session cells alone::

    python3 bench/replay_cells.py --port 2575 --maildir DATA/mail/example.test/to --cells 1,10,50
    python3 bench/replay_cells.py --port 2575 --maildir DATA/mail/example.test/to --cells 50

Prints one line per round, each cell's msg/s.  The server must accept mail for
``--to`` from ``--sender``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time


def emptied(maildir: str) -> None:
    """What the harness does between cells: delivered files removed, then a sync."""
    for sub in ("new", "cur"):
        with os.scandir(os.path.join(maildir, sub)) as entries:
            for entry in entries:
                os.unlink(entry.path)
    os.sync()
    time.sleep(0.2)


def delivered(maildir: str) -> int:
    return len(os.listdir(os.path.join(maildir, "new")))


def sourceCommand(args: argparse.Namespace, sessions: int, messages: int) -> list[str]:
    return ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(args.size), "-f", args.sender,
            "-t", args.to, f"127.0.0.1:{args.port}"]


def cutOffCell(args: argparse.Namespace, sessions: int) -> float:
    """msg/s delivered from half a second in until the cell is cut off."""
    source = subprocess.Popen(sourceCommand(args, sessions, 1_000_000), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before, started = delivered(args.maildir), time.perf_counter()
        time.sleep(args.seconds - 0.5)
        rate = (delivered(args.maildir) - before) / (time.perf_counter() - started)
    finally:
        source.send_signal(signal.SIGTERM)
        source.wait()
    time.sleep(1.0)  # the sessions cut off are ended by the server
    return rate


def countedCell(args: argparse.Namespace, sessions: int, messages: int) -> float:
    """msg/s of ``messages`` sent in full."""
    started = time.perf_counter()
    subprocess.run(sourceCommand(args, sessions, messages), check=True)
    return messages / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True, help="the Maildir the messages reach")
    parser.add_argument("--cells", default="1,10,50", help="concurrencies, in order, of one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a cut-off cell")
    parser.add_argument("--messages", default="", help="send this many per cell (or N1,N2,... for each cell) "
                        "instead of cutting cells off")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sender", default="from@localhost")
    parser.add_argument("--to", default="to@example.test")
    args = parser.parse_args()
    cells = [int(c) for c in args.cells.split(",")]
    counts = [int(n) for n in args.messages.split(",")] if args.messages else []
    if len(counts) == 1:
        counts *= len(cells)
    if counts and len(counts) != len(cells):
        parser.error("--messages needs one count, or one for each cell")
    for number in range(args.rounds):
        rates = []
        for i, sessions in enumerate(cells):
            emptied(args.maildir)
            rate = countedCell(args, sessions, counts[i]) if counts else cutOffCell(args, sessions)
            rates.append(f"c{sessions} {rate:.0f}")
        print(f"round {number}: " + "  ".join(rates), flush=True)


if __name__ == "__main__":
    main()

"""jsmail holding many idle sessions at once, while mail still goes through.

Starts jsmail (as ``bench_accept.py`` does, on 127.0.0.1 only, data in a temporary
directory), opens ``--sessions`` SMTP sessions (greeting read, EHLO answered) at
``--burst`` connects at a time, weighs the server's processes, and then, with every
session still open, sends one message on a new session and times its 250 and its
arrival in the Maildir.  Then it closes everything and stops jsmail.

Usage: python bench/idle_sessions.py [--sessions 10000] [--burst 500] [--limit-kib 4]

Prints one line per figure and exits 1 if a session was lost, the message did not go
through, or a session cost more than ``--limit-kib`` KiB (PSS, summed over jsmail's
processes).  Needs a file descriptor limit above the session count for this process
and jsmail's (it raises its soft limit to the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from loadgen import Messages, reply
from memory import open_idle_session, pss_kib, rss_kib
from servers import RECIPIENT, JSMail, free_port

SENDER = "from@localhost"


Session = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _sendOne(port: int) -> float:
    """Seconds from connecting to the 250 after the final dot."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reply(reader, 220)
        for command, code in ((b"EHLO busy.localhost", 250), (f"MAIL FROM:<{SENDER}>".encode(), 250),
                              (f"RCPT TO:<{RECIPIENT}>".encode(), 250), (b"DATA", 354)):
            writer.write(command + b"\r\n")
            await reply(reader, code)
        message = Messages(1, 1024, SENDER, RECIPIENT).take()
        assert message is not None
        writer.write(message)
        await reply(reader, 250)
        accepted = time.monotonic() - started
        writer.write(b"QUIT\r\n")
        await reply(reader, 221)
        return accepted
    finally:
        writer.close()


async def _alive(held: list[Session]) -> int:
    """How many held sessions still answer (a NOOP each, in one pass)."""
    for _, writer in held:
        writer.write(b"NOOP\r\n")
    answered = 0
    for reader, _ in held:
        try:
            await asyncio.wait_for(reply(reader, 250), 30)
            answered += 1
        except Exception:
            pass
    return answered


async def _warmUp(server: JSMail, burst: int) -> None:
    """One message through, and one burst of sessions opened and closed, before the
    first weighing: what the first of them starts once (thread pools and their stacks,
    the delivery process's work, allocator arenas) is no session's cost.  Without it the
    figure per session held a fixed 25-30 MiB spread over the sessions (12 KiB each at
    3000 sessions, 6.5 at 10,000, 3.7 in the harness, which warms up too)."""
    await _sendOne(server.port)
    gate = asyncio.Semaphore(burst)
    warm = await asyncio.gather(*(open_idle_session(server.port, gate) for _ in range(burst)),
                                return_exceptions=True)
    for session in warm:
        if isinstance(session, tuple):
            session[1].close()
    await asyncio.sleep(1.0)  # the gateway notices the closes and frees the sessions


async def run(server: JSMail, sessions: int, burst: int) -> dict[str, float]:
    await _warmUp(server, burst)
    pids = server.memory_pids()
    rss0, pss0 = rss_kib(pids), pss_kib(pids)
    gate = asyncio.Semaphore(burst)
    started = time.monotonic()
    results = await asyncio.gather(*(open_idle_session(server.port, gate) for _ in range(sessions)),
                                   return_exceptions=True)
    held = [r for r in results if isinstance(r, tuple)]
    figures: dict[str, float] = {"opened": len(held), "open_seconds": time.monotonic() - started}
    try:
        pids = server.memory_pids()
        rss1, pss1 = rss_kib(pids), pss_kib(pids)
        figures["rss_kib_per_session"] = (rss1 - rss0) / max(1, len(held))
        if pss0 is not None and pss1 is not None:
            figures["pss_kib_per_session"] = (pss1 - pss0) / max(1, len(held))
        maildir = server.maildir_new()
        before = len(list(maildir.iterdir())) if maildir.is_dir() else 0
        sent = time.monotonic()
        figures["accept_seconds"] = await _sendOne(server.port)
        while (len(list(maildir.iterdir())) if maildir.is_dir() else 0) == before:
            if time.monotonic() - sent > 60:
                raise SystemExit("the message was not delivered within 60 s")
            await asyncio.sleep(0.01)
        figures["deliver_seconds"] = time.monotonic() - sent
        figures["still_answering"] = await _alive(held)
    finally:
        for _, writer in held:
            writer.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=500, help="connects in flight at once")
    parser.add_argument("--limit-kib", type=float, default=4.0, help="most PSS per idle session")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.sessions + 200:
        print(f"the file descriptor limit ({hard}) is below {args.sessions} sessions", file=sys.stderr)
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # jsmail inherits it
    with tempfile.TemporaryDirectory(prefix="jsmail-idle-") as root:
        server = JSMail(Path(root), free_port(), args.sessions)
        server.start()
        try:
            figures = asyncio.run(asyncio.wait_for(run(server, args.sessions, args.burst), args.timeout))
        finally:
            server.stop()
    for name, value in figures.items():
        print(f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}")
    perSession = figures.get("pss_kib_per_session", figures["rss_kib_per_session"])
    ok = (figures["opened"] == args.sessions and figures["still_answering"] == args.sessions
          and perSession <= args.limit_kib)
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

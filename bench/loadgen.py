"""Asyncio SMTP load generator, a stand-in for Postfix's smtp-source.

SESSIONS concurrent sessions share MESSAGES messages of SIZE payload bytes.
Each session sends EHLO, then MAIL/RCPT/DATA transactions (the three
commands pipelined when the server advertises PIPELINING) until no message
is left, then QUIT.  Any unexpected reply aborts the run with status 1.

Usage: loadgen.py [-s SESSIONS] [-m MESSAGES] [-l SIZE] [-f FROM] [-t TO]
                  HOST:PORT

Prints ``start`` once ready to connect and, at the end, ``elapsed SECONDS``
(from the first connection attempt until every session has quit).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

LINE = 78


class SMTPReplyError(Exception):
    """The server answered with an unexpected reply code."""


class Messages:
    """The shared pool of messages still to send, and their content."""

    def __init__(self, count: int, size: int, sender: str, recipient: str) -> None:
        self.left = count
        self.sender = sender
        self.recipient = recipient
        lines = [(b"%d" % i).ljust(LINE, b"X") for i in range(size // (LINE + 2))]
        tail = size - len(lines) * (LINE + 2)
        if tail >= 2:
            lines.append(b"X" * (tail - 2))
        self.payload = b"\r\n".join(lines) + b"\r\n.\r\n"

    def take(self) -> bytes | None:
        """The next message (headers, payload, final dot), or None if done."""
        if self.left <= 0:
            return None
        self.left -= 1
        headers = (f"From: <{self.sender}>\r\nTo: <{self.recipient}>\r\n"
                   f"Subject: load {self.left}\r\n"
                   f"Message-Id: <{self.left}.{time.time_ns()}@loadgen>\r\n\r\n")
        return headers.encode() + self.payload


async def reply(reader: asyncio.StreamReader, code: int) -> list[bytes]:
    """Read one (possibly multi-line) reply and check its code."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPReplyError(f"connection closed, expected {code}")
        lines.append(line)
        if line[3:4] != b"-":
            break
    if not line.startswith(b"%d" % code):
        raise SMTPReplyError(f"expected {code}, got {line!r}")
    return lines


async def session(host: str, port: int, messages: Messages) -> None:
    """One SMTP session sending messages until the pool is empty."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reply(reader, 220)
        writer.write(b"EHLO loadgen.localhost\r\n")
        ehlo = await reply(reader, 250)
        pipelining = any(line[4:].upper().startswith(b"PIPELINING") for line in ehlo)
        envelope = [f"MAIL FROM:<{messages.sender}>\r\n".encode(),
                    f"RCPT TO:<{messages.recipient}>\r\n".encode(),
                    b"DATA\r\n"]
        while (message := messages.take()) is not None:
            if pipelining:
                writer.write(b"".join(envelope))
                for code in (250, 250, 354):
                    await reply(reader, code)
            else:
                for command, code in zip(envelope, (250, 250, 354), strict=False):
                    writer.write(command)
                    await reply(reader, code)
            writer.write(message)
            await reply(reader, 250)
        writer.write(b"QUIT\r\n")
        await reply(reader, 221)
    finally:
        writer.close()


async def run(host: str, port: int, sessions: int, messages: Messages) -> float:
    """Run all sessions; return the seconds they took."""
    start = time.perf_counter()
    await asyncio.gather(*(session(host, port, messages) for _ in range(sessions)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", type=int, default=1, dest="sessions")
    parser.add_argument("-m", type=int, default=1, dest="messages")
    parser.add_argument("-l", type=int, default=1024, dest="size")
    parser.add_argument("-f", default="from@localhost", dest="sender")
    parser.add_argument("-t", default="to@localhost", dest="recipient")
    parser.add_argument("server", help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    messages = Messages(args.messages, args.size, args.sender, args.recipient)
    print("start", flush=True)
    try:
        elapsed = asyncio.run(run(host, int(port), args.sessions, messages))
    except (OSError, SMTPReplyError) as e:
        sys.exit(f"loadgen: {e}")
    print(f"elapsed {elapsed:.6f}", flush=True)


if __name__ == "__main__":
    main()

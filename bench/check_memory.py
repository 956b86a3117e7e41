"""Memory of a gateway checking DKIM and DMARC on 16 large messages at once.

Issue 12, item 5: memory for 16 concurrent 24 MiB messages on a listener with DKIM
and DMARC stays under 2x one message.  This starts jsmail under twistd (as
``bench_accept.py`` does: 127.0.0.1 only, data in a temporary directory) with the
checks of ``etc/policy.toml`` but the DNS block list (SPF, DKIM, ARC, DMARC), its
records served by a DNS server on loopback in this process.  It sends one
DKIM-signed 24 MiB message on a fresh gateway, then ``--clients`` such messages at
once on another fresh gateway, waits until all are delivered, and reads each
process's peak resident set (``VmHWM`` in ``/proc/PID/status``): the receiving
process (twistd) and the delivery process (its child).

Usage: python bench/check_memory.py [--clients 16] [--size-mib 24] [--limit 2.0]
                                    [--dkim-timeout SECONDS]

Prints one line per run, how many messages got each ``dkim=`` result, and the
ratios; exits 1 if a message was not taken or delivered, or the receiving
process's peak with ``--clients`` messages is ``--limit`` times its peak with one
or more.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import dkim
from loadgen import reply
from memory import _proc_field
from servers import REPO, JSMail, free_port
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.names import dns

sys.path.insert(0, str(REPO / "src"))
from jsmail.policy.dkim import generateKey, keyRecord  # noqa: E402
from jsmail.testing import DNSServer  # noqa: E402

SENDER = "bench@example.test"
RECIPIENT = "to@localhost"
LINE = 76
DELIVERY_TIMEOUT = 600.0


def txt(text: str) -> dns.Record_TXT:
    """A TXT record in strings of at most 255 octets."""
    data = text.encode("ascii")
    return dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)], ttl=300)


class CheckingJSMail(JSMail):
    """jsmail with SPF, DKIM, ARC and DMARC on its port, asking ``dnsServer``."""

    def __init__(self, root: Path, port: int, max_sessions: int, dnsServer: str, dkimTimeout: float | None) -> None:
        super().__init__(root, port, max_sessions)
        self.dnsServer, self.dkimTimeout = dnsServer, dkimTimeout

    def start(self) -> None:
        limit = self.max_sessions + 100
        (self.root / "jsmail.toml").write_text(
            f"[smtp]\nmax_connections = {limit}\nmax_connections_per_client = {limit}\n"
            f'[remote]\ndns_server = "{self.dnsServer}"\n'
            '[policy]\nsmtp = ["spf", "dkim", "arc", "dmarc"]\nauthserv_id = "mx.bench"\n'
            + (f"[plugins.dkim]\ntimeout = {self.dkimTimeout}\n" if self.dkimTimeout else ""))
        super(JSMail, self).start()


def signedMessage(size: int, key: bytes) -> bytes:
    """A message of ``size`` octets (signature included, give or take a line) signed
    by dkimpy for example.test, with the final dot."""
    header = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: large\r\n"
              f"Message-ID: <large@example.test>\r\n\r\n").encode()
    count = (size - len(header) - 1024) // (LINE + 2)
    body = b"".join((b"%d" % i).ljust(LINE, b"X") + b"\r\n" for i in range(count))
    message = header + body
    signature = dkim.sign(message, b"bench", b"example.test", key, canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"message-id"])
    return signature + message + b".\r\n"


async def send(port: int, message: bytes, client: str) -> bytes:
    """One session from ``client``, one message; the reply to the final dot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(client, 0))
    try:
        await reply(reader, 220)
        for command, code in ((b"EHLO client.localhost", 250), (f"MAIL FROM:<{SENDER}>".encode(), 250),
                              (f"RCPT TO:<{RECIPIENT}>".encode(), 250), (b"DATA", 354)):
            writer.write(command + b"\r\n")
            await reply(reader, code)
        writer.write(message)
        await writer.drain()
        last = (await reader.readline()).rstrip()
        writer.write(b"QUIT\r\n")
        return last
    finally:
        writer.close()


async def sendAll(port: int, message: bytes, clients: int) -> list[bytes]:
    """``clients`` sessions at once from as many loopback addresses (per-client
    limits apply to each as to separate hosts), each sending ``message``; their
    final replies."""
    sessions = [send(port, message, f"127.0.0.{2 + i}") for i in range(clients)]
    return await asyncio.wait_for(asyncio.gather(*sessions), DELIVERY_TIMEOUT)


def peaks(server: JSMail) -> tuple[int, int]:
    """Peak resident KiB (VmHWM) of the receiving process and of the rest (delivery)."""
    assert server.process is not None
    pids = server.memory_pids()
    values = {pid: _proc_field(Path(f"/proc/{pid}/status"), "VmHWM:") or 0 for pid in pids}
    receiving = values.pop(server.process.pid)
    return receiving, sum(values.values())


def dkimResults(new: Path) -> str:
    """How many delivered messages got each dkim= result, e.g. "pass 12, temperror 4"."""
    counts: dict[str, int] = {}
    for path in new.glob("*"):
        with open(path, "rb") as f:
            head = f.read(65536).split(b"\n\n", 1)[0]
        found = re.search(rb"dkim=(\w+)", head)
        result = found.group(1).decode() if found else "none"
        counts[result] = counts.get(result, 0) + 1
    return ", ".join(f"{result} {count}" for result, count in sorted(counts.items()))


def run(clients: int, message: bytes, dnsServer: str, dkimTimeout: float | None) -> dict[str, float]:
    """One fresh gateway taking ``clients`` copies of ``message`` at once."""
    with tempfile.TemporaryDirectory(prefix="jsmail-memory-") as tmp:
        server = CheckingJSMail(Path(tmp), free_port(), clients, dnsServer, dkimTimeout)
        server.start()
        try:
            idle, _ = peaks(server)
            started = time.monotonic()
            replies = asyncio.run(sendAll(server.port, message, clients))
            taken = time.monotonic() - started
            refused = [r for r in replies if not r.startswith(b"250")]
            if refused:
                raise SystemExit(f"{len(refused)} of {clients} refused: {refused[0]!r}")
            deadline = time.monotonic() + DELIVERY_TIMEOUT
            new = server.maildir_new()
            while len(list(new.glob("*"))) < clients:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(list(new.glob('*')))} of {clients} delivered: {server.log_tail()}")
                time.sleep(0.2)
            delivered = time.monotonic() - started
            results = dkimResults(new)
            receiving, delivery = peaks(server)
        finally:
            server.stop()
    print(f"{clients:2d} x {len(message) / 2**20:.1f} MiB: receiving peak {receiving / 1024:.0f} MiB "
          f"(after start-up {idle / 1024:.0f} MiB), delivery peak {delivery / 1024:.0f} MiB; "
          f"all taken in {taken:.1f} s, delivered in {delivered:.1f} s", flush=True)
    print(f"   dkim results: {results}", flush=True)
    return {"idle": idle, "receiving": receiving, "delivery": delivery}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size-mib", type=float, default=24)
    parser.add_argument("--limit", type=float, default=2.0)
    parser.add_argument("--dkim-timeout", type=float, help="[plugins.dkim] timeout [default: the gateway's]")
    args = parser.parse_args()
    key = generateKey("rsa", 2048)
    zones = {"example.test": [("example.test", txt("v=spf1 ip4:127.0.0.0/8 -all")),
                              ("_dmarc.example.test", txt("v=DMARC1; p=reject")),
                              ("bench._domainkey.example.test", txt(keyRecord(key)))]}
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    dnsServer = DNSServer(zones, reactor)
    address = blockingCallFromThread(reactor, dnsServer.start)
    try:
        message = signedMessage(int(args.size_mib * 2**20), key)
        one = run(1, message, address, args.dkim_timeout)
        many = run(args.clients, message, address, args.dkim_timeout)
    finally:
        reactor.callFromThread(reactor.stop)
    ratio = many["receiving"] / one["receiving"]
    growth = (many["receiving"] - many["idle"]) / max(1, one["receiving"] - one["idle"])
    delivery = many["delivery"] / max(1, one["delivery"])
    print(f"receiving process: peak {ratio:.2f}x one message's, growth after start-up {growth:.2f}x; "
          f"delivery process: peak {delivery:.2f}x")
    sys.exit(0 if ratio < args.limit else 1)


if __name__ == "__main__":
    main()

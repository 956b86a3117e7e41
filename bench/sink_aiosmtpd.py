"""aiosmtpd sink: accepts any mail and throws it away, for when Postfix's
smtp-sink is not installed.

Usage: sink_aiosmtpd.py PORT   (listens on 127.0.0.1:PORT)

Prints running counters on stdout in smtp-sink's ``-c`` format, one record
per change, each ended by CR: ``sess=S quit=Q mesg=M`` (sessions ended, QUIT
commands, messages received), so that bench_relay.py reads both sinks alike.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counters:
    """smtp-sink's three counters, printed on every change."""

    def __init__(self) -> None:
        self.sessions = self.quits = self.messages = 0

    def show(self) -> None:
        sys.stdout.write(f"sess={self.sessions} quit={self.quits} mesg={self.messages}\r")
        sys.stdout.flush()


class DiscardHandler:
    """Accepts every recipient and message; keeps nothing but the count."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.counters.messages += 1
        self.counters.show()
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.counters.quits += 1
        self.counters.show()
        return "221 2.0.0 Bye"


class CountingSMTP(SMTP):
    """Counts sessions as they end, as smtp-sink does."""

    def __init__(self, handler: DiscardHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.counters = handler.counters

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.counters.sessions += 1
        self.counters.show()


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:``port`` until killed."""
    handler = DiscardHandler(Counters())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CountingSMTP(handler, hostname="sink.localhost", loop=loop),
        host="127.0.0.1", port=port, backlog=1000)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

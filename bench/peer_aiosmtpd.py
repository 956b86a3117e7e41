"""aiosmtpd peer: accepts mail for any local part @localhost into Maildirs.

Usage: peer_aiosmtpd.py PORT DATADIR   (listens on 127.0.0.1:PORT)

Each message is written to ``DATADIR/localhost/<local-part>/`` and fsynced
in the event loop's default executor, so one session's fsync does not stall
the others, before the final 250 is sent.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session
from maildir import deliver, maildir_for


class MaildirHandler:
    """aiosmtpd handler storing every accepted message in Maildirs."""

    def __init__(self, base: Path) -> None:
        self.base = base

    async def handle_RCPT(self, server: SMTP, session: Session,
                          envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower() != "localhost":
            return "550 5.1.1 Unknown domain"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        loop = asyncio.get_running_loop()
        data = envelope.original_content
        assert data is not None
        await asyncio.gather(*(
            loop.run_in_executor(None, deliver, maildir_for(self.base, rcpt), data)
            for rcpt in envelope.rcpt_tos))
        return "250 2.0.0 OK"


async def serve(port: int, base: Path) -> None:
    """Listen on 127.0.0.1:``port`` until killed."""
    handler = MaildirHandler(base)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="localhost", loop=loop),
        host="127.0.0.1", port=port)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))

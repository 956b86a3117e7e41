"""Delivery status notifications: the bounce sent to the envelope sender (RFC 3464).

A bounce is a ``multipart/report; report-type=delivery-status`` (RFC 6522) with a
human-readable part, a ``message/delivery-status`` part (one per-recipient group for
each failed recipient) and the original message's header section
(``text/rfc822-headers``).  It is sent from the null reverse-path so that it can never
cause another bounce (RFC 5321 section 4.5.5).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import BinaryIO, Sequence

from jsmail.envelope import Envelope, Recipient

MAX_RETURNED_HEADERS = 64 * 1024
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def statusOf(detail: str) -> str:
    """The enhanced status code in a reply text, or 5.0.0 when it has none."""
    match = _ENHANCED.search(detail)
    return match.group(1) if match and match.group(1).startswith("5") else "5.0.0"


def readHeaders(message: BinaryIO, limit: int = MAX_RETURNED_HEADERS) -> bytes:
    """The header section of a queued (CR LF) message, at most ``limit`` octets."""
    lines = []
    size = 0
    for line in message:
        if line in (b"\r\n", b"\n") or size + len(line) > limit:
            break
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def makeBounce(
    queueId: str, envelope: Envelope, failed: Sequence[Recipient], headers: bytes, hostname: str, now: float
) -> bytes:
    """The whole bounce message, CR LF line ends, ready for the queue."""
    boundary = f"{queueId}.{int(now)}/{hostname}"
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    arrival = format_datetime(datetime.fromtimestamp(envelope.arrival, timezone.utc))
    explanation = "\n".join(f"<{r.address}>: {r.lastReply or 'delivery failed'}" for r in failed)
    groups = "\n\n".join(
        f"Final-Recipient: rfc822; {r.address}\nAction: failed\nStatus: {statusOf(r.lastReply or '')}\n"
        f"Diagnostic-Code: smtp; {r.lastReply or 'delivery failed'}"
        for r in failed
    )
    text = f"""\
From: Mail Delivery System <MAILER-DAEMON@{hostname}>
To: <{envelope.sender}>
Subject: Undelivered Mail Returned to Sender
Date: {date}
Message-ID: <{queueId}.bounce@{hostname}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"

This is a MIME-encapsulated message.

--{boundary}
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at {hostname}.

Your message (queue id {queueId}) could not be delivered to one or more
recipients. It has not been delivered to these recipients, and will not be:

{explanation}

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; {hostname}
X-Jsmail-Queue-ID: {queueId}
Arrival-Date: {arrival}

{groups}

--{boundary}
Content-Type: text/rfc822-headers

"""
    body = text.replace("\n", "\r\n").encode("utf-8")
    return body + headers + f"\r\n--{boundary}--\r\n".encode("ascii")

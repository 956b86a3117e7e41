"""Delivery status notifications: the bounce sent to the envelope sender (RFC 3464).

A bounce is a ``multipart/report; report-type=delivery-status`` (RFC 6522) with a
human-readable part, a ``message/delivery-status`` part (one per-recipient group for
each failed recipient, RFC 3464) and the original: its header section
(``text/rfc822-headers``), or all of it (``message/rfc822``) when the sender asked
with RET=FULL (RFC 3461).  Recipients whose NOTIFY leaves out FAILURE get none.  It is
sent from the null reverse-path so that it can never cause another bounce (RFC 5321
section 4.5.5); a bounce that cannot be delivered goes, once, to the postmaster.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import BinaryIO, Callable, Sequence

from jsmail.envelope import Envelope, Recipient
from jsmail.headers import readHeader

MAX_RETURNED_HEADERS = 64 * 1024


def wantsFailureNotice(recipient: Recipient) -> bool:
    """RFC 3461 section 4.1: no NOTIFY means "failures"; NOTIFY without FAILURE, none."""
    notify = recipient.params.get("NOTIFY")
    return notify is None or "FAILURE" in notify.upper().split(",")


def _xtextDecode(value: str) -> str:
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def writeBounce(
    write: Callable[[bytes], None],
    original: BinaryIO,
    queueId: str,
    envelope: Envelope,
    failed: Sequence[Recipient],
    hostname: str,
    now: float,
    toPostmaster: bool = False,
    fromLocal: str = "MAILER-DAEMON",
) -> None:
    """Write the whole bounce, CR LF line ends, through ``write``; the original is
    read from ``original`` (its header section, or all of it with RET=FULL or for the
    postmaster).  Blocking: run it in a thread."""
    full = toPostmaster or (envelope.mailParams.get("RET") or "").upper() == "FULL"
    boundary = f"{queueId}.{int(now)}/{hostname}"
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    arrival = format_datetime(datetime.fromtimestamp(envelope.arrival, timezone.utc))
    envid = envelope.mailParams.get("ENVID")
    explanation = "\n".join(f"<{r.address}>: {r.lastReply or 'delivery failed'}" for r in failed)
    groups = "\n\n".join(_recipientGroup(r) for r in failed)
    recipient = f"postmaster@{hostname}" if toPostmaster else envelope.sender
    about = ("A bounce from this server could not be delivered to its recipient, "
             f"<{envelope.recipients[0].address}>." if toPostmaster else
             f"Your message (queue id {queueId}) could not be delivered to one or more\n"
             "recipients. It has not been delivered to these recipients, and will not be:")
    head = f"""\
From: Mail Delivery System <{fromLocal}@{hostname}>
To: <{recipient}>
Subject: {"Undeliverable bounce" if toPostmaster else "Undelivered Mail Returned to Sender"}
Date: {date}
Message-ID: <{queueId}.bounce.{int(now)}@{hostname}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"

This is a MIME-encapsulated message.

--{boundary}
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at {hostname}.

{about}

{explanation}

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; {hostname}
{f"Original-Envelope-Id: {_xtextDecode(envid)}{chr(10)}" if envid else ""}X-Jsmail-Queue-ID: {queueId}
Arrival-Date: {arrival}

{groups}

--{boundary}
Content-Type: {"message/rfc822" if full else "text/rfc822-headers"}

"""
    write(head.replace("\n", "\r\n").encode("utf-8"))
    if full:
        while chunk := original.read(65536):
            write(chunk)
    else:
        write(readHeader(original, MAX_RETURNED_HEADERS).header)
    write(f"\r\n--{boundary}--\r\n".encode("ascii"))


def _recipientGroup(r: Recipient) -> str:
    """One per-recipient group of the delivery-status part (RFC 3464 section 2.3)."""
    lines = []
    if r.params.get("ORCPT"):
        addressType, _, address = (r.params["ORCPT"] or "").partition(";")
        lines.append(f"Original-Recipient: {addressType}; {_xtextDecode(address)}")
    # A message given up on after temporary failures keeps its 4.x.x status, as Postfix
    # reports it: the reader learns it was a time-out, not a refusal.
    lines += [f"Final-Recipient: rfc822; {r.address}", "Action: failed", f"Status: {r.lastStatus or '5.0.0'}"]
    if r.remoteMTA:
        lines.append(f"Remote-MTA: {r.remoteMTA}")
    # RFC 3464 section 2.3.6: the remote server's reply is "smtp"; jsmail's own reason
    # goes under a type of its own.
    lines.append(f"Diagnostic-Code: {'smtp' if r.lastFromPeer else 'X-jsmail'}; {r.lastReply or 'delivery failed'}")
    return "\n".join(lines)

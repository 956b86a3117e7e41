"""Delivery status notifications as written: one ``multipart/report`` (RFC 6522) with a
human-readable part, the machine-readable status (RFC 3464) and the original message
or its header section.

:mod:`jsmail.send.bounce` decides who is owed which notice and when; this module only
writes one.  A notice may mix actions (RFC 3464 section 2.3.3): recipients that failed,
are delayed, were delivered, relayed or expanded, each in its own per-recipient group.

Decisions, and why:

- A message that needed SMTPUTF8 (its parameter, or a non-ASCII address) gets an
  internationalised notice (RFC 6533): ``message/global-delivery-status`` in a report of
  type ``global-delivery-status``, non-ASCII addresses as ``utf-8;`` (section 3), and
  the original as ``message/global`` or ``message/global-headers`` (sections 5 and 6).
- ENVID and ORCPT go into Original-Envelope-Id and Original-Recipient as the client
  gave them, in xtext (RFC 3461 section 4; Postfix does the same): decoding them let
  ``+0D+0A`` write fields of the sender's choosing into the report (security review
  L-1).  A value that is not xtext (a hand-made queue file) is encoded as xtext here.
- Every other value that comes from outside (addresses, replies, host names) has its
  control characters replaced, the returned original has its line ends made CR LF, and
  the whole notice is checked for a bare CR or LF as it is written: one found stops the
  notice before it is queued (:class:`BareLineEnd`).
- The original comes whole only in a report of failure, when the sender asked with
  RET=FULL and was authenticated or trusted (:attr:`Envelope.trusted`), or to the
  postmaster; success and delay notices carry the header section (RFC 3461 section
  4.3: RET is about failures).  Anyone can forge a reverse-path: returning the whole
  message to it would let them send content of their choosing from this server to a
  victim (security review M-1).  RFC 3461 section 4.3 lets an MTA return less.
- For the same reason a private reply (a program's output, the words and name of a
  relay host of the operator's own: :attr:`jsmail.reply.Reply.private`) reaches only
  an authenticated or trusted sender; anyone else reads its status code and a generic
  text, and no Remote-MTA (security review I-5).  The operator log has it all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from enum import Enum
from typing import BinaryIO, Callable, Iterator, Sequence

from jsmail.envelope import Envelope, Recipient
from jsmail.headers import readHeader
from jsmail.smtp.params import encodeXtext

__all__ = ["Action", "BareLineEnd", "MAX_RETURNED_HEADERS", "Notice", "isInternational", "writeDSN", "xtext"]

MAX_RETURNED_HEADERS = 64 * 1024
_CHUNK = 65536
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")


class Action(str, Enum):
    """What happened to a recipient, as a notice says it (RFC 3464 section 2.3.3)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True)
class Notice:
    """One recipient's group in a notice."""

    recipient: Recipient
    action: Action


class BareLineEnd(ValueError):
    """A notice would have held a bare CR or LF: it is not queued."""


_STATUS = {Action.FAILED: "5.0.0", Action.DELAYED: "4.0.0"}  # when a recipient has no reply yet
_WITHHELD = {Action.FAILED: "delivery failed", Action.DELAYED: "delivery delayed"}
_WITHHELD_NOTE = "; the details are in this mail system's log"
_TEXT = {
    Action.FAILED: "It could not be delivered to these recipients, and will not be:",
    Action.DELAYED: "It has not been delivered to these recipients yet; delivery will be tried again:",
    Action.DELIVERED: "It was delivered to these recipients:",
    Action.RELAYED: "It was passed on to these recipients' mail servers, which send no delivery notices:",
    Action.EXPANDED: "It was delivered to these recipients and forwarded on from there:",
}


def isInternational(envelope: Envelope) -> bool:
    """Whether the message needed SMTPUTF8, so its notices do too (RFC 6533)."""
    return (any(key.upper() == "SMTPUTF8" for key in envelope.mailParams) or not envelope.sender.isascii()
            or not all(r.address.isascii() for r in envelope.recipients))


def xtext(value: str) -> str:
    """``value`` in xtext (RFC 3461 section 4): as it is when it already is xtext, else
    with every octet outside printable ASCII, "+" and "=" written ``+XX``."""
    return value if _XTEXT.fullmatch(value) else encodeXtext(value)


def _oneLine(text: str) -> str:
    return _CONTROL.sub(" ", text)


def _address(address: str) -> str:
    """A Final-Recipient value: ``rfc822;`` for an ASCII address, else ``utf-8;`` (RFC
    6533 section 3; only ever in a ``message/global-delivery-status``)."""
    return f"{'rfc822' if address.isascii() else 'utf-8'}; {_oneLine(address)}"


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def writeDSN(
    write: Callable[[bytes], None],
    original: BinaryIO,
    queueId: str,
    envelope: Envelope,
    notices: Sequence[Notice],
    hostname: str,
    now: float,
    *,
    toPostmaster: bool = False,
    fromLocal: str = "MAILER-DAEMON",
    retryUntil: float = 0.0,
) -> None:
    """Write the whole notice, CR LF line ends, through ``write``, reading the
    original from ``original``.  ``toPostmaster``: the notice is about a bounce that
    could not be delivered.  ``retryUntil``: when delayed recipients are given up on.
    Raises :class:`BareLineEnd` (before the last octet is written) rather than write a
    bare CR or LF.  Blocking: run it in a thread."""
    checked = _Checked(write)
    actions = {n.action for n in notices}
    international = isInternational(envelope)
    trusted = toPostmaster or envelope.trusted
    full = toPostmaster or (trusted and Action.FAILED in actions
                            and (envelope.mailParams.get("RET") or "").upper() == "FULL")
    boundary = f"{queueId}.{int(now)}/{hostname}"
    recipient = f"postmaster@{hostname}" if toPostmaster else envelope.sender
    if toPostmaster:
        subject = "Undeliverable bounce"
        about = (f"A bounce from this server could not be delivered to its recipient, "
                 f"<{_oneLine(envelope.recipients[0].address)}>.")
    else:
        subject = ("Undelivered Mail Returned to Sender" if Action.FAILED in actions else
                   "Delayed Mail (still being retried)" if Action.DELAYED in actions else
                   "Successful Mail Delivery Report")
        about = "\n\n".join(f"{_TEXT[action]}\n\n" + "\n".join(
            f"<{_oneLine(n.recipient.address)}>: {_oneLine(_shown(n, trusted) or action.value)}"
            for n in notices if n.action is action) for action in Action if action in actions)
        about = f"This is about your message with queue id {queueId}.\n\n{about}"
    envid = envelope.mailParams.get("ENVID")
    perMessage = [f"Reporting-MTA: dns; {_oneLine(hostname)}"]
    if envid:
        perMessage.append(f"Original-Envelope-Id: {xtext(envid)}")
    perMessage += [f"X-Jsmail-Queue-ID: {_oneLine(queueId)}", f"Arrival-Date: {_date(envelope.arrival)}"]
    groups = "\n\n".join(_recipientGroup(n, retryUntil, trusted) for n in notices)
    statusType = "message/global-delivery-status" if international else "message/delivery-status"
    returnedType = (("message/global" if full else "message/global-headers") if international else
                    ("message/rfc822" if full else "text/rfc822-headers"))
    head = f"""\
From: Mail Delivery System <{_oneLine(fromLocal)}@{_oneLine(hostname)}>
To: <{_oneLine(recipient)}>
Subject: {subject}
Date: {_date(now)}
Message-ID: <{_oneLine(queueId)}.dsn.{int(now)}@{_oneLine(hostname)}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type={statusType.partition("/")[2]};
\tboundary="{boundary}"

This is a MIME-encapsulated message.

--{boundary}
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at {_oneLine(hostname)}.

{about}

--{boundary}
Content-Type: {statusType}
{"Content-Transfer-Encoding: 8bit" + chr(10) if international else ""}
{chr(10).join(perMessage)}

{groups}

--{boundary}
Content-Type: {returnedType}
{"Content-Transfer-Encoding: 8bit" + chr(10) if international else ""}
"""
    checked(head.replace("\n", "\r\n").encode("utf-8"))
    if full:
        for chunk in _withCRLF(original.read):
            checked(chunk)
    else:
        checked(_LINE_END.sub(b"\r\n", readHeader(original, MAX_RETURNED_HEADERS).header))
    checked(f"\r\n--{boundary}--\r\n".encode("ascii"))
    checked.close()


def _shown(notice: Notice, trusted: bool) -> str | None:
    """The recipient's last reply as the notice may show it: a private one only to a
    trusted sender, else a generic text (or nothing, for a success)."""
    r = notice.recipient
    if trusted or not r.lastPrivate or r.lastReply is None:
        return r.lastReply
    withheld = _WITHHELD.get(notice.action)
    return withheld and withheld + _WITHHELD_NOTE


def _recipientGroup(notice: Notice, retryUntil: float, trusted: bool) -> str:
    """One per-recipient group of the status part (RFC 3464 section 2.3)."""
    r, action = notice.recipient, notice.action
    shown = _shown(notice, trusted)
    withheld = shown != r.lastReply
    lines = []
    addressType, semicolon, address = (r.params.get("ORCPT") or "").partition(";")
    if semicolon and _ADDRESS_TYPE.fullmatch(addressType.strip()):
        lines.append(f"Original-Recipient: {addressType.strip()}; {xtext(address.strip())}")
    # A message given up on after temporary failures keeps its 4.x.x status, as Postfix
    # reports it: the reader learns it was a time-out, not a refusal.
    lines += [f"Final-Recipient: {_address(r.address)}", f"Action: {action.value}",
              f"Status: {_oneLine(r.lastStatus or _STATUS.get(action, '2.0.0'))}"]
    if r.remoteMTA and not withheld:
        lines.append(f"Remote-MTA: {_oneLine(r.remoteMTA)}")
    if shown:
        # RFC 3464 section 2.3.6: the remote server's reply is "smtp"; jsmail's own
        # reason goes under a type of its own.
        lines.append(f"Diagnostic-Code: {'smtp' if r.lastFromPeer and not withheld else 'X-jsmail'}; {_oneLine(shown)}")
    elif action is Action.FAILED:
        lines.append("Diagnostic-Code: X-jsmail; delivery failed")
    if action is Action.DELAYED and retryUntil:
        lines.append(f"Will-Retry-Until: {_date(retryUntil)}")
    return "\n".join(lines)


def _withCRLF(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """What ``read`` gives, every line end made CR LF (a CR LF split between two reads
    stays one line end)."""
    carry = b""
    while chunk := read(_CHUNK):
        chunk = carry + chunk
        carry = b"\r" if chunk.endswith(b"\r") else b""
        yield _LINE_END.sub(b"\r\n", chunk[:-1] if carry else chunk)
    if carry:
        yield b"\r\n"


class _Checked:
    """Passes data on to ``write`` once it is known to hold no bare CR or LF, counting
    a CR at the end of one piece and an LF at the start of the next as one line end."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._cr = False  # the last piece ended with a CR

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        probe = (b"\r" if self._cr else b"-") + data
        inner = probe[:-1] if probe.endswith(b"\r") else probe
        if _BARE_LF.search(probe) or _BARE_CR.search(inner):
            raise BareLineEnd("a delivery status notification would hold a bare CR or LF")
        self._cr = data.endswith(b"\r")
        self._write(data)

    def close(self) -> None:
        if self._cr:
            raise BareLineEnd("a delivery status notification would end with a bare CR")

"""The envelope of a message, and its versioned on-disk form.

An envelope is what SMTP carried beside the message: the reverse-path, the recipients,
their ESMTP parameters and who sent it.  The queue keeps it next to the message bytes as
one JSON object, so an operator can read it with ``head -1`` (see ``docs/queue.rst``).
Per-recipient delivery state lives in :class:`Recipient`, so a message to several
recipients is retried only for those still pending.

Format versions: 2 keeps each recipient's last reply as text (``lastReply``, what a
bounce shows) with its enhanced status code (``lastStatus``) and whether a remote
server said it (``lastFromPeer``), so a bounce needs no parsing.  Version 1 had the
text only; it is still read, and each of its replies gets the status and the
``smtp`` label the bounce of that version would have given it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

FORMAT_VERSION = 2
_VERSION_1_STATUS = re.compile(r"\b([45]\.\d{1,3}\.\d{1,3})\b")  # as version 1's bounces found it


class EnvelopeFormatError(ValueError):
    """The bytes are not an envelope this version of jsmail can read."""


class RecipientState(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient and where its delivery stands."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)
    state: RecipientState = RecipientState.PENDING
    lastReply: str | None = None  # the last delivery reply, as a bounce may show it
    lastStatus: str | None = None  # its enhanced status code (RFC 3463)
    lastFromPeer: bool = False  # whether a remote server said it (a bounce's smtp;) or jsmail (X-jsmail;)
    remoteMTA: str | None = None

    @property
    def isDone(self) -> bool:
        return self.state is not RecipientState.PENDING


@dataclass(frozen=True)
class Envelope:
    """Sender, recipients and how the message arrived.

    ``sender`` is ``""`` for the null reverse-path (a bounce).  ``mailParams`` are the
    MAIL FROM parameters (SIZE, BODY, SMTPUTF8, ...).  ``attempts`` and ``nextAttempt``
    belong to the scheduler; the queue only stores them.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    mailParams: dict[str, str | None] = field(default_factory=dict)
    arrival: float = 0.0
    clientAddress: str = ""
    helo: str = ""
    protocol: str = "ESMTP"
    attempts: int = 0
    nextAttempt: float = 0.0

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if not r.isDone)

    @property
    def isBounce(self) -> bool:
        return self.sender == ""

    def toBytes(self) -> bytes:
        """One line of JSON (no newline inside), starting with the format version."""
        data: dict[str, Any] = {"version": FORMAT_VERSION, **asdict(self)}
        data["recipients"] = [
            {**asdict(r), "state": r.state.value} for r in self.recipients
        ]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def fromBytes(cls, raw: bytes) -> Envelope:
        try:
            data = json.loads(raw)
            version = data.pop("version")
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise EnvelopeFormatError(f"not a jsmail envelope: {e}") from None
        if version not in (1, FORMAT_VERSION):
            raise EnvelopeFormatError(f"envelope format version {version!r} is not {FORMAT_VERSION}")
        try:
            recipients = tuple(
                Recipient(**{**(_fromVersion1(r) if version == 1 else r), "state": RecipientState(r["state"])})
                for r in data.pop("recipients")
            )
            return cls(recipients=recipients, **data)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise EnvelopeFormatError(f"bad envelope field: {e}") from None


def _fromVersion1(recipient: dict[str, Any]) -> dict[str, Any]:
    """A version-1 recipient as version 2: its bounce says what version 1's would have
    (the first enhanced code in the text, else 5.0.0; every reply labelled ``smtp``)."""
    text = recipient.get("lastReply")
    if text is None:
        return recipient
    match = _VERSION_1_STATUS.search(text)
    return {**recipient, "lastStatus": match.group(1) if match else "5.0.0", "lastFromPeer": True}

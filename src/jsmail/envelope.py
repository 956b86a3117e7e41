"""The envelope of a message, and its versioned on-disk form.

An envelope is what SMTP carried beside the message: the reverse-path, the recipients,
their ESMTP parameters and who sent it.  The queue keeps it next to the message bytes as
one JSON object, so an operator can read it with ``head -1`` (see ``docs/queue.rst``).
Per-recipient delivery state lives in :class:`Recipient`, so a message to several
recipients is retried only for those still pending.

Format versions: 3 records, per recipient, whether its end has been reported
(``reported``: the delivery status notification it was owed is queued, so a
permanent failure is reported at once, not when the message's last recipient is
done) and whether its last reply is private (``lastPrivate``: see
:class:`jsmail.reply.Reply`); per message, whether the delay warning went
(``delayWarned``) and whether the sender was authenticated or trusted (``trusted``:
only then may its notices return the whole message and private replies).  2 keeps
each recipient's last reply as text (``lastReply``, what a bounce shows) with its
enhanced status code (``lastStatus``) and whether a remote server said it
(``lastFromPeer``), so a bounce needs no parsing.  Versions 1 and 2 are still read:
their failed recipients are still owed their bounce (their versions bounced at the
message's end), their delivered ones nothing; version 1's replies get the status
and the ``smtp`` label the bounce of that version would have given them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)
DOUBLE_BOUNCE = "double-bounce"  # the protocol of a bounce about a bounce, kept through forwards
_VERSION_1_STATUS = re.compile(r"\b([45]\.\d{1,3}\.\d{1,3})\b")  # as version 1's bounces found it


#: A JSON escape of a UTF-16 surrogate (U+D800 to U+DFFF).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # made once, not each call


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
    reported: bool = False  # its end (delivered or failed) has had the notice it was owed
    lastPrivate: bool = False  # lastReply and remoteMTA are for trusted senders only (Reply.private)

    @property
    def isDone(self) -> bool:
        return self.state is not RecipientState.PENDING


@dataclass(frozen=True)
class Envelope:
    """Sender, recipients and how the message arrived.

    ``sender`` is ``""`` for the null reverse-path (a bounce).  ``mailParams`` are the
    MAIL FROM parameters (SIZE, BODY, SMTPUTF8, ...).  ``attempts`` and ``nextAttempt``
    belong to the scheduler; the queue only stores them.  ``trusted``: the message
    came from an authenticated client, a client in ``trusted_networks`` or a program
    on this host (sendmail, ``submit()``), so its delivery notices may return the whole
    message (RET=FULL) and every reply's text; anyone else could make jsmail reflect
    content of their choosing to an address they forged (security review M-1, I-5).
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
    delayWarned: bool = False  # the one delay warning (RFC 3464 action "delayed") has gone
    trusted: bool = False  # from an authenticated or trusted client, or a local program

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if not r.isDone)

    @property
    def isBounce(self) -> bool:
        return self.sender == ""

    @property
    def isDoubleBounce(self) -> bool:
        """A bounce about a bounce, sent to the postmaster: if it fails too, it is
        dropped (qmail's rule).  The mark is the protocol, which local forwards keep, so
        an alias of the postmaster that fails cannot start a loop."""
        return self.protocol == DOUBLE_BOUNCE

    def toBytes(self) -> bytes:
        """One line of JSON (no newline inside), starting with the format version.
        Written out field by field: ``dataclasses.asdict`` cost more than the rest of
        queueing a message on the reactor thread."""
        data = {
            "version": FORMAT_VERSION, "sender": self.sender,
            "recipients": [
                {"address": r.address, "params": r.params, "state": r.state.value, "lastReply": r.lastReply,
                 "lastStatus": r.lastStatus, "lastFromPeer": r.lastFromPeer, "remoteMTA": r.remoteMTA,
                 "reported": r.reported, "lastPrivate": r.lastPrivate}
                for r in self.recipients
            ],
            "mailParams": self.mailParams, "arrival": self.arrival, "clientAddress": self.clientAddress,
            "helo": self.helo, "protocol": self.protocol, "attempts": self.attempts, "nextAttempt": self.nextAttempt,
            "delayWarned": self.delayWarned, "trusted": self.trusted,
        }
        return _encode(data).encode("utf-8")

    @classmethod
    def fromBytes(cls, raw: bytes) -> Envelope:
        """Read an envelope line back, checking the type of every field: a queue file
        is input too (a disk error, a hand edit, an attacker with the jsmail uid), and
        one bad file must make an error here, never a crash in the scheduler later."""
        if len(raw) > MAX_ENVELOPE:
            raise EnvelopeFormatError(f"envelope of {len(raw)} octets is longer than {MAX_ENVELOPE}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise EnvelopeFormatError(f"not a jsmail envelope: {type(e).__name__}") from None
        if not isinstance(data, dict):
            raise EnvelopeFormatError("not a jsmail envelope: not a JSON object")
        if _SURROGATE_ESCAPE.search(raw):  # only a pair of them makes a character
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise EnvelopeFormatError("not a jsmail envelope: a lone surrogate in a string") from None
        version = data.pop("version", None)
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise EnvelopeFormatError(f"envelope format version {version!r} is not {FORMAT_VERSION}")
        _check(data, _ENVELOPE_FIELDS, "envelope")
        recipients = data.pop("recipients", None)
        if not isinstance(recipients, list) or not recipients:
            raise EnvelopeFormatError("bad envelope field: recipients must be a non-empty list")
        checked = []
        for r in recipients:
            if not isinstance(r, dict):
                raise EnvelopeFormatError("bad envelope field: a recipient is not an object")
            _check(r, _RECIPIENT_FIELDS, "recipient")  # first: the conversions read lastReply and state
            r = _fromVersion1(r) if version == 1 else r
            r = _fromVersion2(r) if version in (1, 2) else r
            try:
                checked.append(Recipient(**{**r, "state": RecipientState(r["state"])}))
            except (TypeError, ValueError, KeyError) as e:
                raise EnvelopeFormatError(f"bad recipient field: {e}") from None
        try:
            return cls(recipients=tuple(checked), **data)
        except TypeError as e:
            raise EnvelopeFormatError(f"bad envelope field: {e}") from None


MAX_ENVELOPE = 1024 * 1024  # octets: 100 recipients with long replies fit many times over


def _params(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and (v is None or isinstance(v, str))
                                           for k, v in value.items())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _TEXT(v: Any) -> bool:
    return isinstance(v, str)


def _OPTIONAL_TEXT(v: Any) -> bool:
    return v is None or isinstance(v, str)


_ENVELOPE_FIELDS: dict[str, Any] = {
    "sender": _TEXT, "recipients": lambda v: True, "mailParams": _params, "arrival": _number,
    "clientAddress": _TEXT, "helo": _TEXT, "protocol": _TEXT,
    "attempts": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "nextAttempt": _number,
    "delayWarned": lambda v: isinstance(v, bool), "trusted": lambda v: isinstance(v, bool),
}
_RECIPIENT_FIELDS: dict[str, Any] = {
    "address": _TEXT, "params": _params, "state": _TEXT, "lastReply": _OPTIONAL_TEXT,
    "lastStatus": _OPTIONAL_TEXT, "lastFromPeer": lambda v: isinstance(v, bool), "remoteMTA": _OPTIONAL_TEXT,
    "reported": lambda v: isinstance(v, bool), "lastPrivate": lambda v: isinstance(v, bool),
}


def _check(data: dict[str, Any], fields: dict[str, Any], what: str) -> None:
    for key, value in data.items():
        check = fields.get(key)
        if check is None:
            raise EnvelopeFormatError(f"bad {what} field: unknown field {key!r}")
        if not check(value):
            raise EnvelopeFormatError(f"bad {what} field: {key} has the wrong type")


def _fromVersion1(recipient: dict[str, Any]) -> dict[str, Any]:
    """A version-1 recipient as version 2: its bounce says what version 1's would have
    (the first enhanced code in the text, else 5.0.0; every reply labelled ``smtp``)."""
    text = recipient.get("lastReply")
    if text is None:
        return recipient
    match = _VERSION_1_STATUS.search(text)
    return {**recipient, "lastStatus": match.group(1) if match else "5.0.0", "lastFromPeer": True}


def _fromVersion2(recipient: dict[str, Any]) -> dict[str, Any]:
    """A version-1 or -2 recipient as version 3: versions before 3 sent no success
    notices and bounced failures at the message's end, so a delivered recipient is
    settled and a failed one still owed its bounce."""
    return {**recipient, "reported": recipient.get("state") == RecipientState.DELIVERED.value}

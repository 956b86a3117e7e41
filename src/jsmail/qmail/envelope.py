"""qmail-queue's envelope records (qmail-interfaces reference, section 3.1):
``F<sender>\\0``, then ``T<recipient>\\0`` for each recipient, then a final ``\\0``.

``jsmail-queue`` reads them; ``jsmail-sendmail`` and the queue back end that hands
mail to a qmail-queue program write them.  Both directions refuse what qmail-queue
refuses, with its exit code: an address over 1002 octets (11), an envelope that ends
before its final NUL (54), a malformed record (91); and an envelope over
:data:`MAX_ENVELOPE` octets, which jsmail-queue will not hold in memory (31).
"""

from __future__ import annotations

from typing import Sequence

MAX_ADDRESS = 1002  # octets, as qmail-queue
MAX_ENVELOPE = 4 * 1024 * 1024  # octets: some thousands of recipients

ADDRESS_TOO_LONG, REFUSED, READ_ERROR, BAD_ENVELOPE = 11, 31, 54, 91


class EnvelopeError(ValueError):
    """Not a usable envelope; ``code`` is qmail-queue's exit code saying why."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def encode(sender: str, recipients: Sequence[str]) -> bytes:
    """The records for ``sender`` and ``recipients``."""
    addresses = [a.encode("utf-8") for a in (sender, *recipients)]
    if not recipients:
        raise EnvelopeError(BAD_ENVELOPE, "the envelope has no recipients")
    if any(b"\0" in a for a in addresses):
        raise EnvelopeError(BAD_ENVELOPE, "an address holds a NUL")
    if any(len(a) > MAX_ADDRESS for a in addresses):
        raise EnvelopeError(ADDRESS_TOO_LONG, f"an address is longer than {MAX_ADDRESS} octets")
    data = b"F" + addresses[0] + b"\0" + b"".join(b"T" + a + b"\0" for a in addresses[1:]) + b"\0"
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(REFUSED, f"the envelope is longer than {MAX_ENVELOPE} octets")
    return data


def decode(data: bytes) -> tuple[str, list[str]]:
    """The sender and the recipients the records name."""
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(REFUSED, f"the envelope is longer than {MAX_ENVELOPE} octets")
    if not data.endswith(b"\0\0"):
        raise EnvelopeError(READ_ERROR, "the envelope ended before its final NUL")
    records = data[:-1].split(b"\0")[:-1]
    if not records or not records[0].startswith(b"F"):
        raise EnvelopeError(BAD_ENVELOPE, "the envelope does not start with an F record")
    if any(not r.startswith(b"T") for r in records[1:]):
        raise EnvelopeError(BAD_ENVELOPE, "a recipient record does not start with T")
    addresses = [r[1:] for r in records]
    if any(len(a) > MAX_ADDRESS for a in addresses):
        raise EnvelopeError(ADDRESS_TOO_LONG, f"an address is longer than {MAX_ADDRESS} octets")
    try:
        sender, *recipients = (a.decode("utf-8") for a in addresses)
    except UnicodeDecodeError:
        raise EnvelopeError(BAD_ENVELOPE, "an address is not UTF-8") from None
    if not recipients:
        raise EnvelopeError(BAD_ENVELOPE, "the envelope has no recipients")
    return sender, recipients

"""The EHLO keywords the server offers and the rules for the MAIL and RCPT parameters
they announce (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 DSN, RFC 4954
AUTH): pure functions, the rules raising :class:`~jsmail.error.SMTPReplyError` for a
parameter the server cannot take."""

from __future__ import annotations

import re
from typing import Iterable

from jsmail import reply
from jsmail.address import normaliseDomain
from jsmail.error import SMTPReplyError
from jsmail.reply import Reply

BODY_TYPES = ("7BIT", "8BITMIME")
MAIL_PARAMETERS = ("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID")
_DIGITS = re.compile(r"[0-9]{1,20}")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
#: RFC 6533 section 3: QCHAR (printable ASCII but "+", "=" and "\\"), non-ASCII only in
#: utf-8-addr-unitext (with SMTPUTF8), and "\\x{HEX}" for any character.
_UTF8_ADDR = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]|\\x\{[0-9A-F]{2,6}\})+")
_UTF8_ADDR_UNITEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\x\{[0-9A-F]{2,6}\})+")
_EMBEDDED = re.compile(r"\\x\{([0-9A-F]{2,6})\}")


def ehloKeywords(maxMessageSize: int, startTLS: bool, authMechanisms: Iterable[str]) -> list[str]:
    """What EHLO's reply offers: STARTTLS only where it may still be started, AUTH only
    with mechanisms (none once a client has logged in, or without TLS unless allowed)."""
    keywords = ["PIPELINING", f"SIZE {maxMessageSize}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING",
                "DSN"]
    if startTLS:
        keywords.append("STARTTLS")
    mechanisms = " ".join(authMechanisms)
    if mechanisms:
        keywords.append("AUTH " + mechanisms)
    return keywords


def octets(value: str | None) -> int | None:
    """A SIZE or BDAT octet count: ASCII digits only (``str.isdigit`` would take ``²``
    and ``١``, which ``int`` then refuses or misreads), at most 20 of them."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    return int(value)


def isXtext(value: str | None, limit: int) -> bool:
    """RFC 3461 section 4: printable ASCII but "+" and "=", or "+XX" hex escapes."""
    return bool(value) and len(value or "") <= limit and _XTEXT.fullmatch(value or "") is not None


def encodeXtext(text: str) -> str:
    """``text`` as xtext (RFC 3461 section 4): "+", "=" and every octet outside
    printable ASCII written ``+XX``."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode("utf-8"))
                   for c in text)


def decodeXtext(value: str) -> str | None:
    """The text an xtext value stands for, when it is printable ASCII (RFC 3461 section
    4: ENVID and an ORCPT address are printable); None when it is not, as when ``+0D``
    and ``+0A`` would put a line end into a DSN field."""
    if not _XTEXT.fullmatch(value):
        return None
    decoded = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)
    return decoded if decoded.isascii() and decoded.isprintable() else None


def decodeUtf8Address(value: str, utf8: bool) -> str | None:
    """An ORCPT ``utf-8`` address (RFC 6533 section 3: utf-8-addr-xtext, or with
    SMTPUTF8 utf-8-addr-unitext), decoded; None unless every character is a printable
    one (no controls, no line or paragraph separators, no surrogates)."""
    if not (_UTF8_ADDR_UNITEXT if utf8 else _UTF8_ADDR).fullmatch(value):
        return None
    points = [int(hexpoint, 16) for hexpoint in _EMBEDDED.findall(value)]
    if any(p > 0x10FFFF or 0xD800 <= p <= 0xDFFF for p in points):
        return None
    decoded = _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), value)
    return decoded if decoded.isprintable() else None


def _checkOrcpt(value: str | None, utf8: bool) -> None:
    """RFC 3461 section 4.2: ``addr-type ";" xtext``, the address decoding to printable
    text; RFC 6533's ``utf-8`` type has an encoding of its own."""
    addressType, semicolon, address = (value or "").partition(";")
    international = addressType.lower() == "utf-8"
    if not semicolon or not _ATOM.fullmatch(addressType) or not 0 < len(address) <= 500 or not (
            international or _XTEXT.fullmatch(address)):
        raise SMTPReplyError(reply.BAD_PARAMETER.withText("ORCPT must be addr-type;xtext"))
    if (decodeUtf8Address(address, utf8) if international else decodeXtext(address)) is None:
        raise SMTPReplyError(reply.BAD_PARAMETER.withText("ORCPT's address must decode to printable text"))


def tooBig(maxMessageSize: int) -> Reply:
    return reply.MESSAGE_TOO_BIG.format(maxMessageSize)


def checkMailParams(params: dict[str, str | None], esmtp: bool, maxMessageSize: int, authOffered: bool) -> None:
    """MAIL FROM's parameters; ``authOffered`` says whether AUTH= may be given."""
    for key, value in params.items():
        if key == "AUTH" and authOffered:
            continue  # RFC 4954 section 5: accepted; jsmail trusts no client's claim
        if not esmtp or key not in MAIL_PARAMETERS:
            raise SMTPReplyError(reply.UNKNOWN_PARAMETER.withText(f"Unsupported parameter {key}"))
        if key == "SIZE":
            size = octets(value)
            if size is None:
                raise SMTPReplyError(reply.BAD_PARAMETER.withText("SIZE needs a number of octets"))
            if size > maxMessageSize:
                raise SMTPReplyError(tooBig(maxMessageSize))
        elif key == "BODY" and (value or "").upper() not in BODY_TYPES:
            raise SMTPReplyError(reply.BAD_PARAMETER.withText("BODY must be 7BIT or 8BITMIME"))
        elif key == "SMTPUTF8" and value is not None:
            raise SMTPReplyError(reply.BAD_PARAMETER.withText("SMTPUTF8 takes no value"))
        elif key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
            raise SMTPReplyError(reply.BAD_PARAMETER.withText("RET must be FULL or HDRS (RFC 3461)"))
        elif key == "ENVID" and not isXtext(value, 100):
            raise SMTPReplyError(reply.BAD_PARAMETER.withText("ENVID must be xtext of at most 100 octets"))
        elif key == "ENVID" and decodeXtext(value or "") is None:
            raise SMTPReplyError(reply.BAD_PARAMETER.withText("ENVID must decode to printable ASCII (RFC 3461)"))


def checkRcptParams(params: dict[str, str | None], utf8: bool = False) -> None:
    """DSN's RCPT parameters (RFC 3461 section 4): NOTIFY and ORCPT (``utf8``: the
    transaction has SMTPUTF8, so ORCPT's ``utf-8`` address may be unitext)."""
    for key, value in params.items():
        if key == "NOTIFY":
            words = (value or "").upper().split(",")
            if not value or not (words == ["NEVER"] or set(words) <= {"SUCCESS", "FAILURE", "DELAY"}):
                raise SMTPReplyError(reply.BAD_PARAMETER.withText(
                    "NOTIFY must be NEVER, or one or more of SUCCESS, FAILURE, DELAY"))
        elif key == "ORCPT":
            _checkOrcpt(value, utf8)
        else:
            raise SMTPReplyError(reply.UNKNOWN_PARAMETER.withText(f"Unsupported parameter {key}"))


def isHeloName(name: str) -> bool:
    """Whether an EHLO/HELO argument is a domain or an address literal (RFC 5321 4.1.4)."""
    try:
        normaliseDomain(name)
    except SMTPReplyError:
        return False
    return True

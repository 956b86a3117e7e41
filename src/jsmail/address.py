"""The one parser of RFC 5321 paths and mailboxes.

Everything that takes an address off the wire (MAIL, RCPT, later the sendmail command)
goes through :func:`parsePath`, so the length limits of RFC 5321 section 4.5.3.1, the
SMTPUTF8 rules of RFC 6531 and the refusal of CR, LF and NUL (header injection) hold
everywhere.  Domains are kept in their ASCII (A-label) form, lower-cased, so routing
compares like with like; local parts are kept as given (they are case-sensitive on the
wire, RFC 5321 section 2.4), with quotes removed where they were not needed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from jsmail import reply
from jsmail.error import SMTPReplyError

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_ATEXT_UTF8 = r"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]|[^\x00-\x7f])"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_DOT_STRING_UTF8 = re.compile(rf"{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*\Z")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])*"\Z')
_LDH_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z|[^\x00-\x20=\x7f]+\Z")


def _refuse(text: str) -> SMTPReplyError:
    return SMTPReplyError(reply.BAD_ADDRESS_SYNTAX.withText(text))


@dataclass(frozen=True, order=True)
class Address:
    """A mailbox ``local@domain``; the null reverse-path ``<>`` has both parts empty."""

    local: str
    domain: str

    @property
    def isNull(self) -> bool:
        return not self.local and not self.domain

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if not self.isNull else ""

NULL = Address("", "")


def normaliseDomain(domain: str) -> str:
    """The domain's lower-case ASCII form, or :class:`SMTPReplyError` when it is not one."""
    if domain.startswith("[") and domain.endswith("]"):
        return _addressLiteral(domain)
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise _refuse(f"Bad internationalised domain name: {e}") from None
    if len(domain) > MAX_DOMAIN:
        raise _refuse(f"Domain longer than {MAX_DOMAIN} octets")
    labels = domain.split(".")
    if not all(_LDH_LABEL.match(label) for label in labels):
        raise _refuse(f"Bad domain name {domain!r}")
    return domain.lower()


def _addressLiteral(literal: str) -> str:
    inner = literal[1:-1]
    if "%" in inner or not inner.isascii() or any(c.isspace() for c in inner):
        raise _refuse(f"Bad address literal {literal!r}")  # no zone ids (RFC 5321 4.1.3 has none)
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise _refuse(f"Bad address literal {literal!r}") from None


def _localPart(local: str, utf8: bool) -> str:
    if not local:
        raise _refuse("Empty local part")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise _refuse(f"Local part longer than {MAX_LOCAL_PART} octets")
    dotString = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
    if dotString.match(local):
        return local
    if _QUOTED_STRING.match(local) and (utf8 or local.isascii()):
        unquoted = re.sub(r"\\(.)", r"\1", local[1:-1])
        # Keep the quotes only where the content needs them (RFC 5321 section 4.1.2).
        return unquoted if unquoted and dotString.match(unquoted) else local
    if not utf8 and not local.isascii():
        raise SMTPReplyError(reply.SMTPUTF8_REQUIRED)
    raise _refuse(f"Bad local part {local!r}")


def parseMailbox(text: str, *, utf8: bool) -> Address:
    """Parse ``local@domain``; ``utf8`` allows non-ASCII (the client said SMTPUTF8)."""
    if any(c in text for c in "\r\n\x00"):
        raise _refuse("Address contains CR, LF or NUL")
    if not utf8 and not text.isascii():
        raise SMTPReplyError(reply.SMTPUTF8_REQUIRED)
    local, at, domain = text.rpartition("@")
    if not at:
        raise _refuse(f"Address {text!r} has no domain")
    return Address(_localPart(local, utf8), normaliseDomain(domain))


def parsePath(
    argument: str, *, allowNull: bool, utf8: bool, postmasterDomain: str | None = None
) -> tuple[Address, dict[str, str | None]]:
    """Parse ``<path> [params]`` after ``MAIL FROM:`` or ``RCPT TO:`` (RFC 5321 4.1.2).

    Returns the address and the ESMTP parameters, keys upper-cased, a keyword without
    ``=`` mapped to ``None``.  ``<postmaster>`` without a domain means
    ``postmaster@postmasterDomain`` when that is given (RFC 5321 section 4.5.1).
    Bad syntax is 501 5.1.7 for a reverse-path (``allowNull``) and 501 5.1.3 for a
    forward-path, as RFC 3463 names the sender's and the recipient's address.
    """
    try:
        return _parsePath(argument, allowNull, utf8, postmasterDomain)
    except SMTPReplyError as e:
        if allowNull or e.reply.enhanced != reply.BAD_ADDRESS_SYNTAX.enhanced:
            raise
        raise SMTPReplyError(reply.BAD_RECIPIENT_ADDRESS.withText(e.reply.text)) from None


def _parsePath(argument: str, allowNull: bool, utf8: bool, postmasterDomain: str | None
               ) -> tuple[Address, dict[str, str | None]]:
    argument = argument.lstrip(" ")
    if not argument.startswith("<"):
        raise _refuse("Address must be in angle brackets: <user@domain>")
    end = _closingBracket(argument)
    if end < 0:
        raise _refuse("Missing closing '>'")
    if end + 1 > MAX_PATH:
        raise _refuse(f"Path longer than {MAX_PATH} octets")
    path, rest = argument[1:end], argument[end + 1 :]
    if rest and not rest.startswith(" "):
        raise _refuse("Text after '>' must be ESMTP parameters")
    params = parseParameters(rest)
    if path == "":
        if not allowNull:
            raise _refuse("The null path <> is not a valid recipient")
        return NULL, params
    if path.startswith("@"):
        # An obsolete source route (RFC 5321 section 4.1.2, C.): keep only the mailbox.
        _, colon, path = path.partition(":")
        if not colon:
            raise _refuse("Bad source route")
    if postmasterDomain is not None and path.lower() == "postmaster":
        return Address("postmaster", postmasterDomain), params
    address = parseMailbox(path, utf8=utf8)
    if len(str(address).encode("utf-8")) + 2 > MAX_PATH:  # in octets, and as it goes on: with A-labels
        raise _refuse(f"Path longer than {MAX_PATH} octets")
    return address, params


def _closingBracket(argument: str) -> int:
    """Index of the '>' that closes the path, skipping quoted strings."""
    quoted = escaped = False
    for i, c in enumerate(argument):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = quoted
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
    return -1


def parseParameters(text: str) -> dict[str, str | None]:
    """Parse ``KEY=VALUE KEY ...``: duplicated or malformed parameters are refused."""
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _PARAM_KEY.match(key) or (eq and not _PARAM_VALUE.match(value)):
            raise SMTPReplyError(reply.BAD_PARAMETER.withText(f"Malformed parameter {word!r}"))
        key = key.upper()
        if key in params:
            raise SMTPReplyError(reply.BAD_PARAMETER.withText(f"Parameter {key} given twice"))
        params[key] = value if eq else None
    return params


class BadMailbox(ValueError):
    """The local part cannot name a mailbox directory (it could escape the root)."""


def mailboxName(localPart: str) -> str:
    """The directory name for a local part: lower-cased, and never a path trick."""
    name = localPart.lower()
    if not name or name.startswith(".") or "/" in name or "\x00" in name:
        raise BadMailbox(f"{localPart!r} cannot be a mailbox name")
    return name


def hostPort(text: str, defaultPort: int = 25) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address, split."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else str(defaultPort)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(defaultPort)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST or HOST:PORT, got {text!r}")
    return host, int(port)

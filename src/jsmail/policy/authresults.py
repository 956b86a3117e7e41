"""The one Authentication-Results header field (RFC 8601) jsmail adds to a message.

Checks contribute result objects from the ``authres`` package (SPF, DKIM, DMARC, ARC);
smtpd joins them into one field under this host's authserv-id.  A field that arrives
from outside claiming that authserv-id is a forgery and is removed first (RFC 8601
section 5), so downstream readers can trust every field with it.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import authres

_NAME = re.compile(rb"(?i)^authentication-results[ \t]*:")  # obsolete space before the colon too
#: How far into a field's value the authserv-id is looked for.
ID_WINDOW = 8192
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_TOKEN = re.compile(rb'[^\s();"]+')


def authResultsField(authservId: str, results: Sequence[Any]) -> str:
    """``Authentication-Results: <authserv-id>; <result>; ...`` (one field, no CR LF)."""
    return str(authres.AuthenticationResultsHeader(authserv_id=authservId, results=list(results)))


def claimsAuthservId(field: bytes, authservId: str) -> bool:
    """Whether a raw header field is an Authentication-Results field for ``authservId``
    (compared without case, comments and the optional version, section 2.2).

    The authserv-id is the first token of the value after any comments and white space.
    One pass with a depth counter finds where it starts, looking at most
    :data:`ID_WINDOW` octets into the value: a field whose id does not start within
    them counts as claiming ``authservId``, so it is removed as a forgery (section 5).
    No host writes kilobytes of comments before its id, and a downstream reader that
    looked further must not find ours there."""
    name = _NAME.match(field)
    if name is None:
        return False
    value = field[name.end():name.end() + ID_WINDOW + len(authservId.encode("utf-8")) + 2]
    start = _idStart(value[:ID_WINDOW])
    if start is None:
        return True
    quoted = _QUOTED.match(value, start)
    if quoted is not None:
        found = re.sub(rb"\\(.)", rb"\1", quoted.group(1), flags=re.S)
    else:  # an unclosed quote is read as if closed, so a lenient reader's id is ours too
        token = _TOKEN.match(value, start + (value[start:start + 1] == b'"'))
        found = token.group() if token is not None else b""
    return found.decode("utf-8", "replace").lower() == authservId.lower()


def _idStart(value: bytes) -> int | None:
    """Where the first token outside comments starts (RFC 5322 section 3.2.2: comments
    nest, and a backslash quotes the next character), or None if there is none."""
    depth, index, end = 0, 0, len(value)
    while index < end:
        octet = value[index]
        if depth:
            if octet == 0x5C:  # quoted-pair
                index += 1
            elif octet == 0x28:
                depth += 1
            elif octet == 0x29:
                depth -= 1
        elif octet == 0x28:
            depth = 1
        elif octet not in b" \t\r\n":
            return index
        index += 1
    return None

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
_COMMENT = re.compile(r"\([^()]*\)")


def authResultsField(authservId: str, results: Sequence[Any]) -> str:
    """``Authentication-Results: <authserv-id>; <result>; ...`` (one field, no CR LF)."""
    return str(authres.AuthenticationResultsHeader(authserv_id=authservId, results=list(results)))


def claimsAuthservId(field: bytes, authservId: str) -> bool:
    """Whether a raw header field is an Authentication-Results field for ``authservId``
    (compared without case, comments and the optional version, section 2.2)."""
    name = _NAME.match(field)
    if name is None:
        return False
    value = field[name.end():].decode("utf-8", "replace").replace("\r\n", " ")
    while True:  # comments nest (RFC 5322 section 3.2.2)
        value, removed = _COMMENT.subn(" ", value)
        if not removed:
            break
    words = value.split(";", 1)[0].split()
    return bool(words) and words[0].strip('"').lower() == authservId.lower()

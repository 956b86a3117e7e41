"""SASL mechanisms for SMTP AUTH (RFC 4954): turn client lines into
:class:`~twisted.cred.credentials.UsernamePassword` credentials for the portal
(:mod:`jsmail.auth`).  :class:`PlainMechanism` is RFC 4616; :class:`LoginMechanism` the
widely used draft-murchison-sasl-login.
"""

from __future__ import annotations

import binascii

from twisted.cred import credentials

from jsmail import reply
from jsmail.error import SMTPReplyError


def _decode(line: str) -> bytes:
    if line.strip() == "*":
        raise SMTPReplyError(reply.AUTH_CANCELLED)
    try:
        return binascii.a2b_base64(line.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SMTPReplyError(reply.AUTH_BAD_BASE64) from None


def _text(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("Credentials are not UTF-8")) from None
    if any(c in text for c in "\r\n\x00"):
        raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("Credentials contain CR, LF or NUL"))
    return text


class PlainMechanism:
    """SASL PLAIN (RFC 4616): ``authzid NUL authcid NUL passwd`` in one response.

    The authorisation identity must be empty or equal the authentication identity
    unless ``allowProxy`` (acting for another user is not something jsmail grants).
    """

    name = "PLAIN"

    def __init__(self, allowProxy: bool = False) -> None:
        self.allowProxy = allowProxy

    def challenge(self) -> str:
        return ""

    def respond(self, line: str) -> credentials.UsernamePassword | str:
        parts = _decode(line).split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise SMTPReplyError(reply.AUTH_BAD_BASE64.withText("PLAIN needs authzid NUL authcid NUL password"))
        authzid, authcid, password = (_text(p) for p in parts)
        if authzid and authzid != authcid and not self.allowProxy:
            raise SMTPReplyError(reply.AUTH_BAD_CREDENTIALS, f"{authcid} asked to act as {authzid}")
        return credentials.UsernamePassword(authcid.encode("utf-8"), password.encode("utf-8"))


class LoginMechanism:
    """The LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def challenge(self) -> str:
        return "VXNlcm5hbWU6"  # "Username:"

    def respond(self, line: str) -> credentials.UsernamePassword | str:
        value = _text(_decode(line)).encode("utf-8")
        if self._username is None:
            self._username = value
            return "UGFzc3dvcmQ6"  # "Password:"
        return credentials.UsernamePassword(self._username, value)


MECHANISMS = {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism}

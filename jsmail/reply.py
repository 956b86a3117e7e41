"""The one table of SMTP replies jsmail sends.

Every reply carries a basic code (RFC 5321 section 4.2) and an enhanced status code
(RFC 3463, registry in RFC 5248), so ENHANCEDSTATUSCODES (RFC 2034) holds for all of
them.  Code that refuses something names a reply from this table, and may give it a
more specific text with :meth:`Reply.withText`; it never makes up codes of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: ``code`` (e.g. 550), ``enhanced`` (e.g. ``"5.7.1"``) and text.

    ``enhanced`` is empty only for the greeting and the HELO/EHLO replies, which RFC 2034
    section 3 exempts (an enhanced code there would read as an EHLO keyword).
    """

    code: int
    enhanced: str
    text: str

    def withText(self, text: str) -> Reply:
        """The same codes with another text."""
        return replace(self, text=text)

    def format(self, *values: object) -> Reply:
        """The same codes, with ``values`` filled into the text's ``{}`` places."""
        return replace(self, text=self.text.format(*values))

    def lines(self) -> list[bytes]:
        """The reply as wire lines (CRLF-terminated), multi-line when the text has newlines."""
        texts = self.text.split("\n")
        last = len(texts) - 1
        prefix = self.enhanced.encode() + b" " if self.enhanced else b""
        return [
            b"%d%s%s%s\r\n" % (self.code, b" " if i == last else b"-", prefix, t.encode("utf-8"))
            for i, t in enumerate(texts)
        ]

    def __str__(self) -> str:
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text) if part)


# Connection and session.
SERVICE_READY = Reply(220, "", "{} ESMTP jsmail ready")
GREETS = Reply(250, "", "{} greets {}")
CLOSING = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle for too long, closing connection")

# Generic successes.
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
QUEUED = Reply(250, "2.0.0", "Queued as {}")
CHUNK_OK = Reply(250, "2.0.0", "{} octets received")
CANNOT_VRFY = Reply(252, "2.1.5", "Cannot verify the user, but will accept the message and try")
START_DATA = Reply(354, "2.0.0", "End data with <CR><LF>.<CR><LF>")

# Syntax and sequence.
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command not recognised")
NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
BAD_SYNTAX = Reply(501, "5.5.2", "Syntax error")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.7", "Bad address syntax")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
HELO_FIRST = Reply(503, "5.5.1", "Send EHLO or HELO first")
MAIL_FIRST = Reply(503, "5.5.1", "Send MAIL first")
RCPT_FIRST = Reply(503, "5.5.1", "Send RCPT first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
BDAT_MIXED = Reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "RCPT cannot follow BDAT in one transaction")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid parameter value")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")

# Addresses, relay and limits.
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
BAD_MAILBOX = Reply(550, "5.1.1", "No such mailbox")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the fixed maximum of {} octets")
BARE_LINE_ENDING = Reply(
    550, "5.6.0", "Message has a bare CR or LF; lines must end with CR LF (see RFC 5321 section 2.3.8)"
)
TEXT_LINE_TOO_LONG = Reply(550, "5.6.0", "Message has a line longer than {} octets")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers; the message is looping")

# TLS and AUTH (RFC 3207, RFC 4954).
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = Reply(502, "5.5.1", "STARTTLS is not available")
TLS_ACTIVE = Reply(503, "5.5.1", "TLS is already active")
TLS_IN_TRANSACTION = Reply(503, "5.5.1", "STARTTLS is not allowed inside a mail transaction")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_CHALLENGE = Reply(334, "", "")
AUTH_UNAVAILABLE = Reply(502, "5.5.1", "AUTH is not available")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not allowed inside a mail transaction")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognised authentication mechanism")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response as base64")
AUTH_BAD_CREDENTIALS = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many authentication failures, closing connection")
SENDER_REFUSED = Reply(553, "5.7.1", "Sender address refused")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not allowed for this user")

# Local failures.
QUEUE_FAILED = Reply(451, "4.3.0", "Local error in processing; the message was not queued")
CHECK_FAILED = Reply(451, "4.3.0", "Temporary local problem, try again later")

ALL: tuple[Reply, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Reply))

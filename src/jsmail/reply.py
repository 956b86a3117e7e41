"""The one table of SMTP replies jsmail sends, or reports about a delivery.

Every reply carries a basic code (RFC 5321 section 4.2) and an enhanced status code
(RFC 3463, registry in RFC 5248), so ENHANCEDSTATUSCODES (RFC 2034) holds for all of
them.  Code that refuses something names a reply from this table, and may give it a
more specific text with :meth:`Reply.withText`; it never makes up codes of its own.
A reply read from another server is a :class:`PeerReply`, so a bounce can tell the
peer's words (``smtp;``) from jsmail's own (RFC 3464 section 2.3.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: ``code`` (e.g. 550), ``enhanced`` (e.g. ``"5.7.1"``) and text.

    ``enhanced`` is empty only for the greeting and the HELO/EHLO replies, which RFC 2034
    section 3 exempts (an enhanced code there would read as an EHLO keyword), and for a
    peer's reply that had none (:attr:`status` then gives the class's generic code).

    A ``private`` reply's text may say what a sender outside must not learn (a local
    program's output, the words of a relay host of the operator's own): a delivery
    notice to a sender who was neither authenticated nor trusted shows a generic text
    in its place (security review I-5).  It takes no part in comparisons, and is
    keyword-only, so a subclass may add positional fields (``smtp.pipeline.Reason``).
    """

    code: int
    enhanced: str
    text: str
    private: bool = field(default=False, compare=False, kw_only=True)

    def withText(self, text: str) -> Reply:
        """The same codes with another text."""
        return replace(self, text=text)

    def format(self, *values: object) -> Reply:
        """The same codes, with ``values`` filled into the text's ``{}`` places."""
        return self.withText(self.text.format(*values))

    def lines(self) -> list[bytes]:
        """The reply as wire lines (CRLF-terminated), multi-line when the text has newlines."""
        texts = self.text.split("\n")
        last = len(texts) - 1
        prefix = self.enhanced.encode() + b" " if self.enhanced else b""
        return [
            b"%d%s%s%s\r\n" % (self.code, b" " if i == last else b"-", prefix, t.encode("utf-8"))
            for i, t in enumerate(texts)
        ]

    @cached_property
    def wire(self) -> bytes:
        """:meth:`lines` joined, made once per reply: most replies are constants sent
        several times in every session."""
        return b"".join(self.lines())

    @property
    def status(self) -> str:
        """The enhanced status code, or for a reply without one the generic code of its
        class (RFC 3463 section 3.1: X.0.0)."""
        return self.enhanced or f"{self.code // 100}.0.0"

    def __str__(self) -> str:
        """One line: codes and text (the lines of a multi-line text joined by spaces)."""
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text.replace("\n", " ")) if part)


@dataclass(frozen=True)
class PeerReply(Reply):
    """A reply as another server sent it: its text lines, the first without the
    enhanced code that :attr:`enhanced` holds (RFC 2034 section 4)."""

    @classmethod
    def parse(cls, code: int, lines: list[str] | tuple[str, ...]) -> PeerReply:
        lines = list(lines) or [""]
        match = _ENHANCED.match(lines[0])
        enhanced = ""
        if match is not None and match.group(1) == str(code)[0]:
            enhanced = match.group(0).strip()
            lines[0] = lines[0][match.end():]
        return cls(code, enhanced, "\n".join(lines))


# Connection and session.
SERVICE_READY = Reply(220, "", "{} ESMTP jsmail ready")
OWN_GREETING = Reply(220, "", "{} ESMTP")  # qmail's smtpgreeting, or [smtp] greeting
GREETS = Reply(250, "", "{} greets {}")
CLOSING = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_ADDRESS = Reply(421, "4.7.0", "Too many connections from your address, try again later")
RECEIVERS_BUSY = Reply(421, "4.3.2", "Too busy to take a connection now, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle for too long, closing connection")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session lasted too long, closing connection")

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
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here: <{}>")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the fixed maximum of {} octets")
BARE_LINE_ENDING = Reply(
    550, "5.6.0", "Message has a bare CR or LF; lines must end with CR LF (see RFC 5321 section 2.3.8)"
)
TEXT_LINE_TOO_LONG = Reply(550, "5.6.0", "Message has a line longer than {} octets")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers; the message is looping")
NUL_IN_CONTENT = Reply(550, "5.6.0", "Message has NUL octets (see RFC 5322 section 2.3)")
ALREADY_DELIVERED = Reply(554, "5.4.6", "Mail loop: the message already has a Delivered-To line for <{}>")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
BAD_HELO_NAME = Reply(501, "5.5.4", "EHLO/HELO needs a domain name or an address literal")

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
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")  # RFC 4954 section 6
AUTH_BAD_CREDENTIALS = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many authentication failures, closing connection")
SENDER_REFUSED = Reply(553, "5.7.1", "Sender address refused")
SENDER_LITERAL_REFUSED = Reply(553, "5.7.1", "Sender address <{}> refused: an address literal is taken only from "
                               "authenticated or trusted clients")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not allowed for this user")
AUTHOR_NOT_OWNED = Reply(550, "5.7.1", "{} header address not allowed for this user")

# Local submission (jsmail.submit): the client is known by the socket's peer credentials.
TOO_MANY_FROM_USER = Reply(421, "4.7.0", "Too many connections from your user, try again later")
LOCAL_USER_UNKNOWN = Reply(554, "5.7.1", "Your uid {} has no user name on this host")
LOCAL_USER_LOOKUP_FAILED = Reply(421, "4.3.0", "Cannot look up your user name now, try again later")
LOCAL_NO_CREDENTIALS = Reply(421, "4.3.0", "Cannot tell which user you are, try again later")

# Policy checks (jsmail.policy).
CLIENT_DENIED = Reply(554, "5.7.1", "Access denied for {}")
HELO_DENIED = Reply(550, "5.7.1", "HELO name {} refused")
SENDER_DENIED = Reply(553, "5.7.1", "Sender address <{}> refused")
RECIPIENT_DENIED = Reply(550, "5.7.1", "Recipient address <{}> refused")
DNSBL_BLOCKED = Reply(554, "5.7.1", "{}")
DNSBL_LOOKUP_FAILED = Reply(451, "4.7.1", "Temporary DNS block list lookup error, try again later")
SPF_FAILED = Reply(550, "5.7.23", "SPF validation failed: {}")  # RFC 7372 section 3.2
SPF_TEMPORARY = Reply(451, "4.7.24", "SPF validation error, try again later: {}")
SPF_PERMERROR = Reply(550, "5.7.24", "SPF validation error: {}")
DMARC_REJECTED = Reply(550, "5.7.1", "Message rejected by the DMARC policy of {}")
PROGRAM_REJECTED = Reply(550, "5.7.1", "Refused by local policy")
RBL_REFUSED = Reply(553, "5.7.1", "{}")  # rblsmtpd's "-" texts
RBL_TEMPORARY = Reply(451, "4.7.1", "{}")

# A qmail-queue program's refusals (qmail-interfaces reference, section 3.2): its own
# text after exit code 82, else qmail_close's text for its exit code.
QQ_PERMANENT = Reply(554, "5.3.0", "{}")
QQ_TEMPORARY = Reply(451, "4.3.0", "{}")
QQ_EXEC_FAILED = Reply(451, "4.3.0", "unable to exec qq")
QQ_PERMANENT_PROBLEM = Reply(554, "5.3.0", "qq permanent problem")  # exit codes 11-40 not named below
QQ_TEMPORARY_PROBLEM = Reply(451, "4.3.0", "qq temporary problem")  # any other exit code not named below
QQ_ADDRESS_TOO_LONG = Reply(554, "5.1.3", "envelope address too long for qq")  # 11
QQ_REJECTED = Reply(554, "5.3.0", "mail server permanently rejected message")  # 31
QQ_OUT_OF_MEMORY = Reply(451, "4.3.0", "qq out of memory")  # 51
QQ_TIMEOUT = Reply(451, "4.3.0", "qq timeout")  # 52
QQ_WRITE_ERROR = Reply(451, "4.3.0", "qq write error or disk full")  # 53
QQ_READ_ERROR = Reply(451, "4.3.0", "qq read error")  # 54
QQ_CONFIGURATION = Reply(451, "4.3.0", "qq unable to read configuration")  # 55
QQ_NETWORK = Reply(451, "4.3.0", "qq trouble making network connection")  # 56
QQ_HOME_DIRECTORY = Reply(451, "4.3.0", "qq trouble in home directory")  # 61
QQ_QUEUE_FILES = Reply(451, "4.3.0", "qq trouble creating files in queue")  # 62-66
QQ_DEFERRED = Reply(451, "4.3.0", "mail server temporarily rejected message")  # 71
QQ_CONNECT_TIMEOUT = Reply(451, "4.4.1", "connection to mail server timed out")  # 72
QQ_CONNECT_REJECTED = Reply(451, "4.4.1", "connection to mail server rejected")  # 73
QQ_COMMUNICATION = Reply(451, "4.4.2", "communication with mail server failed")  # 74
QQ_BUG = Reply(451, "4.3.0", "qq internal bug")  # 81, 91

# Local failures.
QUEUE_FAILED = Reply(451, "4.3.0", "Local error in processing; the message was not queued")
CHECK_FAILED = Reply(451, "4.3.0", "Temporary local problem, try again later")
CHECKS_BUSY = Reply(451, "4.3.1", "Too much mail is being checked at once, try again later")

# Delivery outcomes jsmail reports itself (in the operator log and in bounces).  Their
# texts say what happened without naming internals; the private detail (paths, host
# names, exception texts) goes beside them to the log only.
DELIVERED = Reply(250, "2.0.0", "Delivered")
DELIVERY_ERROR = Reply(451, "4.3.0", "Temporary local delivery error")
CANNOT_READ_MESSAGE = Reply(451, "4.3.0", "Cannot read the queued message")
LOOPING = Reply(550, "5.4.6", "This message is looping: it already has my Delivered-To line")
TOO_MANY_DELIVERED_TO = Reply(554, "5.4.6", "This message is looping: it has been forwarded too many times")
BAD_LOCAL_MAILBOX = Reply(550, "5.1.3", "The local part cannot name a mailbox")
NO_SUCH_LOCAL_MAILBOX = Reply(550, "5.1.1", "Sorry, no mailbox here by that name")
BAD_FORWARD = Reply(550, "5.1.3", "Unable to forward: not a bare address")
INSTRUCTIONS_UNUSABLE = Reply(451, "4.2.1", "The mailbox's delivery instructions cannot be used now")
INSTRUCTIONS_UNSAFE = Reply(451, "4.7.0", "The mailbox's delivery instructions are not safe to follow")
MBOX_UNAVAILABLE = Reply(451, "4.2.1", "The mailbox file cannot be used now")
PROGRAM_FAILED = Reply(554, "5.3.0", "{}", private=True)  # a |program's own words (qmail-command's exit 100)
PROGRAM_DEFERRED = Reply(451, "4.3.0", "{}", private=True)
NO_ROUTE = Reply(554, "5.4.4", "No route to a non-local domain: remote delivery is not configured")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Domain {} does not exist")
NULL_MX = Reply(556, "5.1.10", "Domain {} accepts no mail (null MX, RFC 7505)")
DNS_FAILED = Reply(451, "4.4.3", "DNS lookup for {} failed")
LOOPS_BACK = Reply(550, "5.4.6", "Mail for {} loops back to myself")  # qmail's and Postfix's words
INTERNAL_DESTINATION = Reply(550, "5.4.4", "Mail for {} is not sent to internal addresses")
HOST_WITHOUT_ADDRESS = Reply(451, "4.4.4", "A mail exchanger of {} has no address")
NO_HOST_REACHED = Reply(451, "4.4.1", "No mail exchanger for {} could be reached")
CANNOT_CONNECT = Reply(451, "4.4.1", "Cannot connect to the mail exchanger")
HOST_BUSY = Reply(451, "4.4.5", "The mail exchanger is busy with other deliveries; trying later")
HOST_BACKED_OFF = Reply(451, "4.4.1", "The mail exchanger failed lately; not tried again yet")
MTA_STS_NO_HOST = Reply(451, "4.7.5", "No MX host of {} matches its MTA-STS policy")
PEER_REPLY_UNREADABLE = Reply(451, "4.5.0", "The mail exchanger's reply could not be read")
PEER_UNEXPECTED_REPLY = Reply(451, "4.5.0", "The mail exchanger replied when no reply was due")
PEER_TLS_FAILED = Reply(454, "4.7.5", "TLS with the mail exchanger failed")
PEER_CONNECTION_LOST = Reply(451, "4.4.2", "The connection to the mail exchanger was lost")
PEER_TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the mail exchanger")
PEER_SESSION_FAILED = Reply(451, "4.4.2", "The session with the mail exchanger could not be set up")
PEER_SESSION_ENDED = Reply(451, "4.4.2", "The session with the mail exchanger has ended")
PEER_NO_STARTTLS = Reply(454, "4.7.5", "TLS is required but the mail exchanger does not offer STARTTLS")
PEER_STARTTLS_REFUSED = Reply(454, "4.7.5", "TLS is required but the mail exchanger refused STARTTLS")
TLSA_LOOKUP_FAILED = Reply(451, "4.7.5", "The mail exchanger's TLSA records could not be looked up")
PEER_TLSA_MISMATCH = Reply(454, "4.7.5", "The mail exchanger's certificate does not match its TLSA records")
PEER_NO_AUTH = Reply(454, "4.7.0", "The relay does not offer AUTH PLAIN or LOGIN")
PEER_AUTH_WITHOUT_TLS = Reply(454, "4.7.0", "Not sending credentials without TLS")
PEER_AUTH_UNVERIFIED = Reply(454, "4.7.0", "Not sending credentials to a relay whose certificate was not verified")
BAD_SENDER_ADDRESS = Reply(501, "5.1.7", "Bad sender address")
BAD_RECIPIENT_ADDRESS = Reply(501, "5.1.3", "Bad recipient address")
PEER_SIZE_LIMIT = Reply(552, "5.3.4", "The message of {} octets exceeds the {} octets the mail exchanger accepts")
PEER_NO_SMTPUTF8 = Reply(553, "5.6.7", "The message needs SMTPUTF8, which the mail exchanger does not offer")
PEER_NO_8BITMIME = Reply(554, "5.6.3", "The message has 8-bit data and the mail exchanger does not offer 8BITMIME")

ALL: tuple[Reply, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Reply))

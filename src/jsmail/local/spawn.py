"""Delivering as the mailbox's owner: the protocol between the delivery process
(unprivileged) and the local spawner (root, :mod:`jsmail.local.spawner`), as
between qmail-send and qmail-lspawn.

The delivery process holds one end of a UNIX stream socket the gateway made for it;
the spawner holds the other.  Each request is one frame (a 4-octet big-endian length,
then that many octets of JSON, at most :data:`MAX_REQUEST`) sent together with one
file descriptor: the message, with LF line ends and nothing of the queue's envelope
(other recipients are none of the user's business).  Each answer is one frame
(at most :data:`MAX_ANSWER`) with the same ``id``: the exit status and output of the
process that ran as the user, or why none ran.

The spawner trusts nothing in a request but what :func:`readRequest` lets through:
the user must exist, have the uid the request names, not be root and have a uid of
at least ``[local] minimum_uid``; the home must be the user's own home or a directory
under the users directory; strings are bounded.  Everything else in a request only
shapes a delivery that is done with the user's own rights.  The answer is the user's
process's word, so the delivery process trusts it no more: :func:`readOutcome` takes
only replies of a known kind, a bounded list of forwards, and a sender of one of the
two kinds qmail-local may use.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from jsmail import reply
from jsmail.error import DeliveryError
from jsmail.local.follow import Followed
from jsmail.reply import Reply

_log = Logger()

MAX_REQUEST = 64 * 1024
MAX_ANSWER = 1024 * 1024
MAX_OUTPUT = 512 * 1024  # what a user's process may say on stdout (its result)
MAX_ERRORS = 4096  # ... and on stderr (why it failed)
MAX_FORWARDS = 1000
MAX_FIELD = 4096
MAX_USER = 32
#: Replies a user's process may give, by (code, enhanced); "{}" texts are its own.
ALLOWED_REPLIES = {(r.code, r.enhanced, r.text): r for r in (
    reply.DELIVERY_ERROR, reply.NO_SUCH_LOCAL_MAILBOX, reply.BAD_FORWARD, reply.INSTRUCTIONS_UNUSABLE,
    reply.INSTRUCTIONS_UNSAFE, reply.MBOX_UNAVAILABLE, reply.PROGRAM_FAILED, reply.PROGRAM_DEFERRED)}
_STRINGS = ("user", "home", "local", "domain", "mailboxUser", "dash", "ext", "sender", "recipient", "separators",
            "hostname", "ufline", "rpline", "dtline")


class BadRequest(ValueError):
    """A request the spawner will not act on; the message says why."""


@dataclass(frozen=True)
class Request:
    """One delivery as ``user`` (uid ``uid``) of the mailbox whose home is ``home``."""

    id: int
    user: str
    uid: int
    home: str
    local: str
    domain: str
    mailboxUser: str
    dash: str
    ext: str
    alias: bool
    sender: str
    recipient: str
    separators: str
    hostname: str
    ufline: str
    rpline: str
    dtline: str
    timeout: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8")


def _isUserName(name: str) -> bool:
    return (0 < len(name) <= MAX_USER and name.isascii() and name.isprintable() and not name.startswith("-")
            and not any(c in name for c in "/: \\"))


def readRequest(frame: bytes) -> Request:
    """Check a request's shape, with nothing else trusted; raises :class:`BadRequest`.
    (Whether the user may be acted for is the spawner's to decide, from the system's
    password database.)"""
    try:
        fields = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("not a JSON object") from None
    if not isinstance(fields, dict) or set(fields) != set(Request.__dataclass_fields__):
        raise BadRequest("not a request's fields")
    for name in _STRINGS:
        value = fields[name]
        if not isinstance(value, str) or len(value) > MAX_FIELD or "\x00" in value:
            raise BadRequest(f"{name}: not a string of at most {MAX_FIELD} characters without NUL")
    for name in ("id", "uid"):
        if type(fields[name]) is not int or not 0 <= fields[name] < 2**32:
            raise BadRequest(f"{name}: not a number")
    if type(fields["alias"]) is not bool:
        raise BadRequest("alias: not true or false")
    if type(fields["timeout"]) not in (int, float) or not 0 < fields["timeout"] <= 7 * 86400:
        raise BadRequest("timeout: not a number of seconds")
    if not _isUserName(fields["user"]):
        raise BadRequest(f"user: not a user name: {fields['user']!r}")
    home = fields["home"]
    if not os.path.isabs(home) or os.path.normpath(home) != home or home == "/":
        raise BadRequest(f"home: not an absolute, normal path: {home!r}")
    return Request(**fields)


def isUnder(path: str, directory: str) -> bool:
    """Whether the normal path ``path`` is below ``directory`` (not ``directory``)."""
    directory = os.path.normpath(directory)
    return bool(directory) and path.startswith(directory.rstrip("/") + "/") and path != directory


@dataclass(frozen=True)
class Outcome:
    """What a delivery as the user did: ``followed`` None means the user has no
    instructions (the default delivery applies); forwards go from ``newSender``."""

    followed: Followed | None
    newSender: str


def _trustedReply(code: Any, enhanced: Any, text: Any) -> Reply:
    for (allowedCode, allowedEnhanced, allowedText), allowed in ALLOWED_REPLIES.items():
        if (code, enhanced) == (allowedCode, allowedEnhanced):
            if allowedText == "{}" and isinstance(text, str):
                return allowed.format(text[:3000])
            if text == allowedText:
                return allowed
    return reply.DELIVERY_ERROR


def _strings(value: Any, limit: int, what: str) -> tuple[str, ...]:
    if (not isinstance(value, list) or len(value) > limit
            or not all(isinstance(v, str) and len(v) <= MAX_FIELD for v in value)):
        raise ValueError(f"{what}: not a list of at most {limit} strings")
    return tuple(value)


def readOutcome(output: bytes, request: Request) -> Outcome:
    """The user's process's result (its stdout, JSON), checked; a failure it reports
    is raised as :class:`DeliveryError`, and so is anything malformed."""
    try:
        result = json.loads(output.decode("utf-8"))
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
        if "failed" in result:
            failed = result["failed"]
            theReply = _trustedReply(failed.get("code"), failed.get("enhanced"), failed.get("text"))
            raise DeliveryError(theReply, theReply.code >= 500, str(failed.get("detail", ""))[:MAX_FIELD])
        owner = f"{request.local}-owner@{request.domain}"
        newSender = result.get("newSender", request.sender)
        if newSender not in (request.sender, owner):
            raise ValueError(f"newSender: {newSender!r} is neither the sender nor {owner}")
        if result.get("instructions") is False:
            return Outcome(None, newSender)
        forwards = _strings(result.get("forwards"), MAX_FORWARDS, "forwards")
        for address in forwards:
            if not address or any(c in address for c in " \t\r\n<>()\"\\,;\x00"):
                raise ValueError(f"forwards: not a bare address: {address!r}")
        files, programs = result.get("files"), result.get("programs")
        if not (type(files) is int and type(programs) is int and 0 <= files < 2**31 and 0 <= programs < 2**31):
            raise ValueError("files, programs: not numbers")
        outputs = _strings(result.get("outputs"), 10000, "outputs")
        return Outcome(Followed(files, programs, forwards, outputs), newSender)
    except (UnicodeDecodeError, ValueError, AttributeError) as e:
        raise DeliveryError(reply.DELIVERY_ERROR, False, f"delivery as {request.user}: a bad result: {e}") from None


@implementer(IFileDescriptorReceiver)
class SpawnClient(Int32StringReceiver):
    """The delivery process's end of the socket to the spawner."""

    MAX_LENGTH = MAX_ANSWER + 1024

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._ids = 0
        self._waiting: dict[int, tuple[defer.Deferred[dict[str, Any]], BinaryIO, Any]] = {}
        self.connected = False

    @classmethod
    def adopt(cls, reactor: Any, sock: socket.socket) -> SpawnClient:
        """Take over ``sock`` (the gateway's socket to the spawner; closed here)."""
        client = cls(reactor)
        sock.setblocking(False)
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, _One(client))
        sock.close()
        return client

    def connectionMade(self) -> None:
        self.connected = True

    def fileDescriptorReceived(self, descriptor: int) -> None:
        os.close(descriptor)  # the spawner sends none

    def deliver(self, request: Request, message: BinaryIO) -> defer.Deferred[dict[str, Any]]:
        """Ask for ``request`` (its id is set here), with ``message`` (kept open until
        the answer) as the user's process's input; fires with the spawner's answer."""
        if not self.connected:
            return defer.fail(DeliveryError(reply.DELIVERY_ERROR, False, "the local spawner is not running"))
        self._ids = (self._ids + 1) % 2**31
        request = Request(**{**asdict(request), "id": self._ids})
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        timer = self.clock.callLater(request.timeout + 120, self._late, request.id)
        self._waiting[request.id] = (d, message, timer)
        transport: Any = self.transport  # an IUNIXTransport: adopted from a UNIX socket
        transport.sendFileDescriptor(message.fileno())
        self.sendString(request.encode())
        return d

    def _late(self, requestId: int) -> None:
        d, _, _ = self._waiting.pop(requestId)
        d.errback(DeliveryError(reply.DELIVERY_ERROR, False, "the local spawner did not answer in time"))

    def stringReceived(self, frame: bytes) -> None:
        try:
            answer = json.loads(frame)
            requestId = answer["id"]
        except (ValueError, KeyError, TypeError):
            _log.error("The local spawner sent a frame that is no answer")
            self.close()
            return
        waiting = self._waiting.pop(requestId, None)
        if waiting is None:
            return
        d, _, timer = waiting
        timer.cancel()
        d.callback(answer)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        waiting, self._waiting = self._waiting, {}
        for d, _, timer in waiting.values():
            timer.cancel()
            d.errback(DeliveryError(reply.DELIVERY_ERROR, False, "the local spawner went away"))

    def close(self) -> None:
        """Close the connection (the spawner then forgets this delivery process)."""
        if self.transport is not None:
            self.transport.loseConnection()


class _One(protocol.Factory):
    """A factory for one adopted connection, with its protocol made beforehand."""

    def __init__(self, made: protocol.Protocol) -> None:
        self.made = made

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.made


def answerOutput(answer: dict[str, Any]) -> tuple[int | None, bytes, bytes, str]:
    """(exit status, stdout, stderr, why none ran) from a spawner's answer."""
    code = answer.get("code")
    try:
        output = base64.b64decode(answer.get("output", ""), validate=True)[:MAX_OUTPUT]
        errors = base64.b64decode(answer.get("errors", ""), validate=True)[:MAX_ERRORS]
    except (ValueError, TypeError):
        output, errors = b"", b""
    return code if type(code) is int else None, output, errors, str(answer.get("refused", ""))[:MAX_FIELD]

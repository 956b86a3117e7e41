"""Local delivery into Maildirs (qmail-local's job, for the simplest instruction).

Each local recipient ``local@domain`` owns the Maildir ``<root>/<domain>/<local>/``,
made on first delivery.  A delivery follows the Maildir protocol
(https://cr.yp.to/proto/maildir.html): write ``tmp/<unique>``, rename it into ``new/``,
and sync the file system (a group commit shared across deliveries and the queue, see
:mod:`jsmail._disk`) before saying "delivered", so the queue forgets a message only
once its copy is safe.

The delivered file starts with ``Return-Path:`` and ``Delivered-To:`` (RFC 5321
section 4.4; qmail-local's order) and has LF line ends, as Maildir readers (mutt,
Dovecot, Courier) and qmail-local and Postfix's local(8) write them.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import BinaryIO, Sequence

from twisted.internet import defer
from zope.interface import implementer

from jsmail._disk import GroupSync, RunInThread
from jsmail.envelope import Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, QueuedMessage

_COPY_CHUNK = 65536
_deliveries = itertools.count()


class BadMailbox(ValueError):
    """The local part cannot name a mailbox directory (it could escape the root)."""


def mailboxName(localPart: str) -> str:
    """The directory name for a local part: lower-cased, and never a path trick."""
    name = localPart.lower()
    if not name or name.startswith(".") or "/" in name or "\x00" in name:
        raise BadMailbox(f"{localPart!r} cannot be a mailbox name")
    return name


def _uniqueName(hostname: str) -> str:
    """A Maildir unique name: ``<seconds>.M<usec>P<pid>Q<n>.<host>`` (maildir spec)."""
    now = time.time()
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_deliveries)}.{host}"


def copyAsLF(source: BinaryIO, target: BinaryIO) -> None:
    """Copy CR LF text as LF text, in chunks (a CR LF may straddle two chunks)."""
    held = b""
    while chunk := source.read(_COPY_CHUNK):
        data = held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        target.write(data[: len(data) - len(held)].replace(b"\r\n", b"\n"))
    target.write(held)


def makeMaildir(maildir: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)


def writeMaildirMessage(maildir: str, headers: bytes, source: BinaryIO, hostname: str) -> str:
    """Deliver into an existing ``maildir``; return the path in ``new/``.  Blocking;
    durable only after a sync."""
    name = _uniqueName(hostname)
    tmpPath = os.path.join(maildir, "tmp", name)
    with open(tmpPath, "xb") as f:
        try:
            f.write(headers)
            copyAsLF(source, f)
        except BaseException:
            os.unlink(tmpPath)
            raise
    newPath = os.path.join(maildir, "new", name)
    os.rename(tmpPath, newPath)
    return newPath


@implementer(IDeliveryAgent)
class MaildirDelivery:
    """Delivers local recipients to ``<root>/<domain>/<local-part>/`` Maildirs."""

    def __init__(self, root: str, runInThread: RunInThread, hostname: str | None = None,
                 syncer: GroupSync | None = None) -> None:
        self.root = root
        self.runInThread = runInThread
        self.syncer = syncer if syncer is not None else GroupSync(runInThread)
        self._made: set[str] = set()  # Maildirs known to exist (one that is removed is made again on failure)
        self.hostname = hostname or socket.gethostname()

    def maildirFor(self, recipient: str) -> str:
        local, _, domain = recipient.rpartition("@")
        return os.path.join(self.root, domain.lower(), mailboxName(local))

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        return defer.gatherResults([self._deliverOne(message, r.address) for r in recipients])

    def _deliverOne(self, message: QueuedMessage, recipient: str) -> defer.Deferred[DeliveryResult]:
        try:
            maildir = self.maildirFor(recipient)
        except BadMailbox as e:
            return defer.succeed(DeliveryResult(recipient, DeliveryStatus.PERMANENT, f"550 5.1.3 {e}"))
        headers = (
            f"Return-Path: <{message.envelope.sender}>\nDelivered-To: {recipient}\n".encode("utf-8")
        )

        def write() -> str:
            if maildir not in self._made:
                makeMaildir(maildir)
                self._made.add(maildir)
            with message.open() as source:
                return writeMaildirMessage(maildir, headers, source, self.hostname)

        def written(path: str) -> defer.Deferred[DeliveryResult]:
            d = self.syncer.sync(os.path.dirname(path))
            return d.addCallback(
                lambda _: DeliveryResult(recipient, DeliveryStatus.DELIVERED, f"delivered to maildir {maildir}")
            )

        def failed(failure: object) -> DeliveryResult:
            self._made.discard(maildir)
            error = getattr(failure, "value", failure)
            return DeliveryResult(recipient, DeliveryStatus.TEMPORARY, f"451 4.3.0 maildir delivery failed: {error}")

        d: defer.Deferred[DeliveryResult] = self.runInThread(write).addCallback(written)
        return d.addErrback(failed)


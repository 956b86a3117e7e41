"""The operator's side of the queue (``jsmail queue``): blocking functions on the
directories, safe beside a running gateway, whose scheduler checks a message is still in
``active/`` before each attempt.  A held message waits in ``hold/`` (same layout) until
released."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import BinaryIO

from jsmail._disk import syncFileSystem, unlinkQuietly, writeAndRename
from jsmail.envelope import Envelope, EnvelopeFormatError
from jsmail.interfaces import NotQueued
from jsmail.queue.trigger import pull


@dataclass(frozen=True)
class QueueEntry:
    """What an operator sees of one queued message."""

    queueId: str
    envelope: Envelope
    size: int  # octets of the message, as queued
    held: bool = False


def listQueue(directory: str) -> list[QueueEntry]:
    """The messages queued (and held) under ``directory``, oldest first, read without
    changing anything.  Blocking."""
    entries = []
    for place in ("active", "hold"):
        folder = os.path.join(directory, place)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".env"):
                continue
            try:
                entries.append(readQueueEntry(directory, name))
            except (FileNotFoundError, EnvelopeFormatError):
                continue  # finished (or set aside) while we looked
    return sorted(entries, key=lambda e: e.queueId)


def _entryPlace(directory: str, queueId: str) -> str:
    """Where a message is: "active" or "hold" (NotQueued if nowhere, or not an id)."""
    if "/" in queueId or queueId.startswith(".") or queueId.endswith(".env"):
        raise NotQueued(queueId)
    for place in ("active", "hold"):
        if os.path.exists(os.path.join(directory, place, queueId)):
            return place
    raise NotQueued(queueId)


def readQueueEntry(directory: str, queueId: str) -> QueueEntry:
    """One queued (or held) message's envelope (the current one) and size.  Blocking."""
    place = _entryPlace(directory, queueId)
    path = os.path.join(directory, place, queueId)
    with open(path, "rb") as f:
        envelope = Envelope.fromBytes(f.readline())
        size = os.fstat(f.fileno()).st_size - f.tell()
    try:
        with open(path + ".env", "rb") as f:
            envelope = Envelope.fromBytes(f.read())
    except FileNotFoundError:
        pass
    return QueueEntry(queueId, envelope, size, held=place == "hold")


def wakeDelivery(directory: str, flush: bool = False) -> bool:
    """Tell the running delivery process to take up new or released mail (and with
    ``flush`` to retry everything now), through the trigger FIFO in ``directory``
    (:mod:`jsmail.queue.trigger`; no signal, so no pid to trust).  False when no
    delivery process is running."""
    return pull(directory, flush)


def requeueEntry(directory: str, queueId: str) -> None:
    """Start a queued message's retry schedule afresh: attempts 0, due now (recipient
    states are kept).  Blocking; the running gateway sees it at the next attempt."""
    entry = readQueueEntry(directory, queueId)
    if entry.held:
        return
    envelope = replace(entry.envelope, attempts=0, nextAttempt=0.0)
    writeAndRename(os.path.join(directory, "tmp", queueId + ".env"),
                   os.path.join(directory, "active", queueId + ".env"), envelope.toBytes())
    syncFileSystem(directory)


def openEntry(directory: str, queueId: str) -> BinaryIO:
    """A queued (or held) message's bytes, past its envelope line.  Blocking."""
    f = open(os.path.join(directory, _entryPlace(directory, queueId), queueId), "rb")
    f.readline()
    return f


def moveEntry(directory: str, queueId: str, to: str) -> None:
    """Move a message to "hold" or back to "active" (release), or "delete" it.  The
    message file goes first and its envelope after, so a crash in between leaves what
    recovery already handles (a lone .env is swept).  Blocking."""
    place = _entryPlace(directory, queueId)
    if place == to:
        return
    source = os.path.join(directory, place, queueId)
    if to == "delete":
        os.unlink(source)
        unlinkQuietly(source + ".env")
        return
    os.makedirs(os.path.join(directory, to), mode=0o700, exist_ok=True)
    target = os.path.join(directory, to, queueId)
    os.rename(source, target)
    if os.path.exists(source + ".env"):
        os.rename(source + ".env", target + ".env")
    syncFileSystem(directory)

"""Delivery during the SMTP session: a message for one recipient whose mail goes to its
own default Maildir is written straight into that Maildir as it arrives, and synced,
before the client hears 250, instead of being queued and copied there by the delivery
process afterwards (as an LMTP server, or twisted.mail's Maildir delivery, does).  One
file written, one look at the plan (some 60 microseconds: a few stats), one rename, one
sync: what queueing it would cost, and nothing after.

The guarantees are the queue's: 250 only once the file is in ``new/`` and a sync of
the file system that started after the rename has finished (a group commit of its
own: the messages that reach their final dot while a batch is placed are placed, and
synced with one ``syncfs``, in the next, all in one thread job);
nothing is lost, since the client retries after any refusal.  It is done only where
the queue gives the message nothing more:

- one recipient, local (:class:`jsmail.route.Router`), not rewritten by a virtual
  domain, and not asking for a success notice (NOTIFY=SUCCESS, which the scheduler
  writes);
- whose plan, looked at in a thread by :meth:`LocalDelivery.plainMaildir` no longer
  than :data:`PLAN_SECONDS` ago, is the default Maildir: no alias, no ``.qmail`` file,
  no home followed as its owner, and a Maildir already made.  A recipient with no plan
  known yet goes through the queue while its plan is looked at (at most ``[local]
  concurrency`` at a time), so the next one need not.  The plan is looked
  at again after the final dot, in the thread that renames the file into ``new/``
  (once for each recipient of a batch, whose messages all reached their final dot
  before it began): an alias or ``.qmail`` file made meanwhile gets the message 451
  (the client tries again, and is queued), never a delivery its instructions would
  not make;
- and that does not loop: a header with the recipient's own Delivered-To line, or
  :data:`MAX_DELIVERED_TO` of them, gets 5.4.6 at the end of DATA instead of a bounce.
  So does a message with that many for one local recipient that is queued, whatever
  its plan, so that the reply tells a client nothing of the recipient's instructions.

The file is one of the queue's spare files (made ahead by a thread, so no file is
created on the reactor thread), renamed from ``queue/tmp/`` into the Maildir; a
Maildir on another file system is left to the queue (checked with the plan), and one
on another mount of the same file system (a bind mount) is copied into.  It is
written as local delivery writes it: ``Return-Path:`` and ``Delivered-To:`` first, LF
line ends.
The operator log gets the lines a delivery from the queue gives (``attempt``,
``delivered``, ``removed``), after the ``queued`` line, through
:attr:`IIncomingMessage.deliveredInSession`.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from functools import partial
from typing import Any, BinaryIO, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import maillog, metrics, reply
from jsmail._bounded import LRU
from jsmail._disk import syncFileSystem, unlinkQuietly
from jsmail._threads import Batches, BatchNotFinished
from jsmail.envelope import Envelope, Recipient
from jsmail.error import SMTPReplyError
from jsmail.headers import FieldWatcher, fieldValue
from jsmail.interfaces import DeliveryResult, DeliveryStatus, Handoff, IIncomingMessage, IMessageSink
from jsmail.local.agent import MAX_DELIVERED_TO, LocalDelivery, headerLine
from jsmail.local.maildir import uniqueName, writeMaildirMessage
from jsmail.queue.store import MaildirQueue, newQueueId
from jsmail.route import Router
from jsmail.send.bounce import wantsNotice

_log = Logger()

#: The agent named in the operator log (and the delivery metrics) for these deliveries.
SESSION_AGENT = "session"
PLAN_SECONDS = 5.0  # how long a recipient's plan is trusted (as long as the recipients check's answers)


@implementer(IMessageSink)
class SessionDelivery:
    """A sink in front of ``queue``: a message it can deliver during the session (see
    the module docstring) goes into its recipient's Maildir, the rest into the queue."""

    def __init__(self, queue: MaildirQueue, local: LocalDelivery, router: Router, clock: Any) -> None:
        self.queue = queue
        self.local = local
        self.router = router
        self.clock = clock
        # The plans looked at again for the batch being placed (by its thread only): the
        # batch's messages all reached their final dot before it began, so one look at a
        # recipient's plan, made during the batch, is as fresh as each needs.
        self._batchPlans: dict[str, str | None] = {}
        # The renames into new/ (each with its plan looked at again), then one sync of
        # the file system they are on (the plans make sure it is the queue's), in one
        # thread job for each batch.
        self.placing = Batches(local.runInThread, self._sync, self._batchPlans.clear)
        # address -> (when, its Maildir or None), for as many as local delivery remembers Maildirs
        self._plans: LRU[str, tuple[float, str | None]] = LRU(local.settings.rememberedMailboxes)
        self._planning: set[str] = set()
        self._queueDevice: int | None = None  # the queue's file system, once looked at

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        if len(envelope.recipients) != 1 or self.router.agentFor(envelope.recipients[0].address) is not self.local:
            return self.queue.newMessage(envelope)
        maildir = self._maildirFor(envelope.recipients[0])
        if maildir is None:
            return _Counted(self.queue.newMessage(envelope))
        path, f = self.queue.spares.take()
        return _MaildirFile(self, envelope, maildir, path, f)

    def _maildirFor(self, recipient: Recipient) -> str | None:
        """The one local recipient's Maildir if the message may be delivered now, else
        None."""
        address = recipient.address
        if wantsNotice(recipient, "SUCCESS"):
            return None
        key = address.lower()
        known = self._plans.get(key)
        if known is not None and self.clock.seconds() - known[0] < PLAN_SECONDS:
            return known[1]
        # At most as many looks at once as local deliveries ([local] concurrency): a
        # flood of new recipients is queued, not looked at.
        if key not in self._planning and len(self._planning) < self.local.settings.concurrency:
            self._planning.add(key)
            started = self.clock.seconds()  # a plan is as old as the look that began then
            self.local.runInThread(self._plan, address).addBoth(self._planned, key, started)
        return None

    def _sync(self) -> None:
        started = time.monotonic()
        syncFileSystem(self.queue.tmpDir)
        metrics.committed(time.monotonic() - started)

    def _plan(self, address: str) -> str | None:
        """The Maildir to deliver ``address``'s mail into during the session, or None
        (blocking)."""
        if self.local.localAddress(address)[0] != address:
            return None  # a virtual domain's user: delivered under another name
        maildir = self.local.plainMaildir(address)
        if self._queueDevice is None:
            self._queueDevice = os.stat(self.queue.tmpDir).st_dev
        if maildir is not None and os.stat(os.path.join(maildir, "new")).st_dev != self._queueDevice:
            return None  # on another file system: a spare file cannot be renamed there
        return maildir

    def _planForBatch(self, address: str) -> str | None:
        """:meth:`_plan`, looked at once for each recipient of the batch being placed
        (blocking; in the batch's thread)."""
        try:
            return self._batchPlans[address]
        except KeyError:
            maildir = self._batchPlans[address] = self._plan(address)
            return maildir

    def _planned(self, outcome: str | None | Failure, key: str, started: float) -> None:
        self._planning.discard(key)
        if isinstance(outcome, Failure):
            _log.failure("Cannot look at the delivery plan of {address}", outcome, address=key)
            outcome = None
        self._remember(key, started, outcome)

    def _remember(self, key: str, started: float, maildir: str | None) -> None:
        """Keep the plan of a look begun at ``started``, unless one begun later is
        known: a slow look must not undo what the final dot found."""
        known = self._plans.get(key)
        if known is None or known[0] <= started:
            self._plans[key] = (started, maildir)


class _Replanned(Exception):
    """The recipient's plan, looked at again, is no longer this Maildir."""

    def __init__(self, maildir: str | None) -> None:
        super().__init__(f"its plan changed during the message: now {maildir or 'queued'}")
        self.maildir = maildir


@implementer(IIncomingMessage)
class _MaildirFile:
    """A message streaming into a spare file, to be renamed into ``maildir/new/``."""

    deliveredInSession: Callable[[], None] | None = None

    def __init__(self, sink: SessionDelivery, envelope: Envelope, maildir: str, path: str, f: BinaryIO) -> None:
        self._sink = sink
        self._maildir = maildir
        self._path = path
        self._file: BinaryIO | None = f
        self._address = envelope.recipients[0].address
        self._dtline = f"Delivered-To: {self._address}".encode("utf-8", "replace")
        self._cr = False  # the last octet written was a CR, held back
        self._header: FieldWatcher | None = _hops()
        self.queueId = newQueueId()
        self.size = 0
        f.write(headerLine(f"Return-Path: <{envelope.sender}>") + headerLine(f"Delivered-To: {self._address}"))

    def write(self, data: bytes) -> None:
        """CR LF made LF, as local delivery writes Maildir files (a CR LF may be split
        between two writes)."""
        assert self._file is not None, "write after commit or abort"
        self.size += len(data)
        if self._header is not None:
            self._header.feed(data)
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        self._file.write((data[:-1] if self._cr else data).replace(b"\r\n", b"\n"))

    def commit(self) -> defer.Deferred[str]:
        f, self._file = self._file, None
        assert f is not None, "commit after commit or abort"
        sink = self._sink
        started = sink.clock.seconds()
        try:
            header, self._header = self._header, None
            assert header is not None
            _refuseLoop(header, self._dtline)
            if self._cr:
                f.write(b"\r")
        except (SMTPReplyError, OSError):  # a loop; or a full disk, writing what was held back
            _discard(f, self._path)
            return defer.fail()

        def placed(final: str) -> str:
            result = DeliveryResult(self._address, DeliveryStatus.DELIVERED, reply.DELIVERED,
                                    f"maildir {self._maildir}", handoff=Handoff.DELIVERED)
            seconds = sink.clock.seconds() - started
            self.deliveredInSession = lambda: _report(self.queueId, seconds, result)
            return self.queueId

        def notPlaced(failure: Failure) -> Failure:
            if isinstance(failure.value, BatchNotFinished):
                unlinkQuietly(failure.value.result)  # not known to be on disk: the client will try again
                return failure.value.failure
            # The job took its file back when it failed; a batch that could not begin
            # (its prepare step failed) never ran it, so the spare file goes here.
            _discard(f, self._path)
            # The plan changed, or the Maildir went away: the next messages are queued
            # (and the plan looked at again once PLAN_SECONDS have passed).
            now = failure.value.maildir if isinstance(failure.value, _Replanned) else None
            sink._remember(self._address.lower(), started, now)
            why = f"maildir {self._maildir}: {failure.getErrorMessage()}"
            return Failure(SMTPReplyError(reply.DELIVERY_ERROR, why))

        d: defer.Deferred[str] = sink.placing.run(partial(self._place, f))
        return d.addCallbacks(placed, notPlaced)

    def _place(self, f: BinaryIO) -> str:
        """Close the file and rename it into ``new/``, once the plan, looked at again
        now, still names this Maildir: an alias or ``.qmail`` file made while the
        message came in (a DATA may last long) is followed.  Blocking; returns the
        path in ``new/``."""
        try:
            f.close()
            now = self._sink._planForBatch(self._address)
            if now != self._maildir:
                raise _Replanned(now)
            hostname = self._sink.local.hostname
            final = os.path.join(self._maildir, "new", uniqueName(hostname))
            try:
                os.rename(self._path, final)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                # Another mount of the same file system (a bind mount: the same st_dev,
                # yet no rename across it): copied in, as delivery from the queue would.
                with open(self._path, "rb") as source:
                    final = writeMaildirMessage(self._maildir, b"", source, hostname, copy=shutil.copyfileobj)
                os.unlink(self._path)
        except BaseException:
            unlinkQuietly(self._path)
            raise
        return final

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            unlinkQuietly(self._path)


def _discard(f: BinaryIO, path: str) -> None:
    """Close ``f`` (written to the page cache, not synced) and remove it."""
    try:
        f.close()
    except OSError:
        pass  # what it held is thrown away anyway
    unlinkQuietly(path)


@implementer(IIncomingMessage)
class _Counted:
    """A message for one local recipient that goes into the queue, refused at its end
    when local delivery would bounce it as looping (:data:`MAX_DELIVERED_TO`
    Delivered-To lines): so are those delivered during the session, and a reply that
    differed would tell a client which recipients have instructions."""

    deliveredInSession = None  # queued

    def __init__(self, message: IIncomingMessage) -> None:
        self._message = message
        self._header = _hops()
        self.queueId = message.queueId

    @property
    def size(self) -> int:
        return int(self._message.size)

    def write(self, data: bytes) -> None:
        self._header.feed(data)
        self._message.write(data)

    def commit(self) -> defer.Deferred[str]:
        try:
            _refuseLoop(self._header, None, overflow=False)  # past 64 KiB the queue counts on
        except SMTPReplyError:
            self._message.abort()
            return defer.fail()
        return self._message.commit()

    def abort(self) -> None:
        self._message.abort()


def _hops() -> FieldWatcher:
    """A watcher of the Delivered-To fields going by (all of them kept: at most
    :data:`MAX_DELIVERED_TO`, in 64 KiB)."""
    return FieldWatcher(("delivered-to",), limit=64 * 1024)


def _refuseLoop(header: FieldWatcher, dtline: bytes | None, overflow: bool = True) -> None:
    """Refuse what local delivery would fail as a loop (qmail-local, section 9.4):
    ``dtline`` among the Delivered-To fields (when known), or too many of them; and,
    with ``overflow``, Delivered-To fields past the 64 KiB kept (no mail has them)."""
    header.close()
    found = [fieldValue(field).strip() for field in header.kept]
    if (overflow and header.overflow) or len(found) >= MAX_DELIVERED_TO:
        raise SMTPReplyError(reply.TOO_MANY_DELIVERED_TO, f"{len(found)} Delivered-To lines")
    if dtline is not None and dtline.partition(b": ")[2] in found:
        raise SMTPReplyError(reply.LOOPING, dtline.decode("utf-8", "replace"))


def _report(queueId: str, seconds: float, result: DeliveryResult) -> None:
    """The operator log's lines for a delivery from the queue, after ``queued``."""
    maillog.attempt(queueId, SESSION_AGENT, seconds, [result])
    maillog.delivered(queueId, result)
    maillog.removed(queueId)

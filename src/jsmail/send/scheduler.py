"""The scheduler (qmail-send's job): when to try each queued message, and what then.

It keeps its plan in memory, rebuilt from the queue at start; the queue only stores.
Each attempt hands the message's pending recipients to the agent the router picks,
takes back one result per recipient (delivered, temporary or permanent failure) and
records them in the envelope, with the delivery status notifications they are owed
(:mod:`jsmail.send.bounce` says which): a failure is reported at once, not when the
message's last recipient is done.  A message leaves the queue when no recipient is
pending.  Temporary failures are retried after :func:`retryDelay`, until the message
is older than the give-up age.  Time comes from an injected clock, so tests can walk a
message through its whole life in an instant.

An operator may move a message away (``jsmail queue hold`` or ``delete``) and back
(``release``) while it is planned: before each attempt the envelope is read afresh,
and a message no longer there is dropped from the plan quietly (it has not left the
queue for good, so it is neither logged as removed nor kept from coming back).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail import maillog, reply
from jsmail._threads import RunInThread
from jsmail.envelope import DOUBLE_BOUNCE, Envelope, EnvelopeFormatError, Recipient, RecipientState
from jsmail.error import DeliveryError
from jsmail.interfaces import (
    DeliveryResult,
    DeliveryStatus,
    Handoff,
    IDeliveryAgent,
    IQueue,
    IRouter,
    NotQueued,
    QueuedMessage,
)
from jsmail.queue.funnel import Funnel
from jsmail.send.bounce import noticesOwed
from jsmail.send.dsn import Notice, isInternational, writeDSN
from jsmail.send.settings import QueueSettings

_log = Logger()

FINISHED_MEMORY = 100_000  # ids of removed messages kept, to ignore stale mentions
GAVE_UP = "gave up: in the queue for too long"


def retryDelay(attempts: int, settings: QueueSettings) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
    return float(min(settings.retryFirst * settings.retryFactor ** max(attempts - 1, 0), settings.retryMaximum))


class Scheduler(Service):
    """Delivers queued messages, at most ``concurrency`` at a time."""

    def __init__(
        self,
        queue: IQueue,
        router: IRouter,
        clock: IReactorTime,
        runInThread: RunInThread,
        hostname: str,
        settings: QueueSettings = QueueSettings(),
        postmaster: str = "",
    ) -> None:
        """``hostname`` names this host in bounces; ``postmaster`` gets the bounces that
        cannot be delivered (none when empty)."""
        self.queue = queue
        self.router = router
        self.clock = clock
        self.runInThread = runInThread
        self.hostname = hostname
        self.settings = settings
        self.postmaster = postmaster
        self.funnel = Funnel(queue, self.schedule)
        # One limit per agent, not one for all: remote attempts stuck on a slow host
        # must not stop local delivery (security review M-5).
        self._slots: dict[IDeliveryAgent, defer.DeferredSemaphore] = {}
        self._envelopes: dict[str, Envelope] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._attempting: set[str] = set()
        # Ids whose envelope was read from the queue for an attempt due at once: that
        # attempt uses it instead of reading it again a moment later.
        self._fresh: set[str] = set()
        self._inFlight: set[defer.Deferred[None]] = set()
        # Ids removed lately: recovery (or a late notice) may still name them.
        self._finished: dict[str, None] = {}
        self._rescans: task.LoopingCall | None = None

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        # As qmail-send: look at the whole queue now and then, so that no message can
        # stay unscheduled, whatever went wrong with the notice or an earlier pass.
        self._rescans = task.LoopingCall(self._rescanLogged)
        self._rescans.clock = self.clock
        self._rescans.start(self.settings.rescanInterval, now=False)
        return self.rescan()

    def _rescanLogged(self) -> defer.Deferred[None]:
        return self.rescan().addErrback(lambda f: _log.failure("Rescanning the queue failed", f))

    def rescan(self) -> defer.Deferred[None]:
        """Plan every message in the queue not yet planned: at start, and when another
        program (``jsmail-queue``) has queued mail and says so (the queue's trigger)."""

        def adopt(found: list[tuple[str, Envelope]]) -> None:
            new = [(queueId, envelope) for queueId, envelope in found
                   if queueId not in self._envelopes and queueId not in self._finished]
            if new:
                _log.info("Found {count} new message(s) in the queue", count=len(new))
            # Mail may have been queued, and even delivered, while the queue was being
            # listed: what the scheduler already knows of wins over the listing.
            for queueId, envelope in new:
                self._envelopes[queueId] = envelope
            adopted = {queueId for queueId, _ in new}
            for queueId, envelope in list(self._envelopes.items()):
                if self.running and queueId not in self._timers and queueId not in self._attempting:
                    self._plan(queueId, envelope, fresh=queueId in adopted)

        return self.queue.recover().addCallback(adopt)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self._rescans is not None and self._rescans.running:
            self._rescans.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._fresh.clear()
        return defer.DeferredList(list(self._inFlight))

    @property
    def queued(self) -> int:
        """How many messages the scheduler is looking after."""
        return len(self._envelopes)

    def schedule(self, queueId: str, envelope: Envelope, fresh: bool = False) -> None:
        """A message is in the queue: plan its first attempt (now, or at its
        ``nextAttempt``).  A message already planned is left as it is, so hearing of
        one twice (from recovery and from a notice) delivers it once.  ``fresh``: the
        envelope was just read from the queue, so an attempt due now need not read it
        again."""
        if queueId in self._envelopes or queueId in self._finished:
            return
        self._envelopes[queueId] = envelope
        if self.running:
            self._plan(queueId, envelope, fresh)

    def scheduleFromQueue(self, queueId: str) -> defer.Deferred[None]:
        """Like :meth:`schedule`, reading the envelope from the queue (a notice from
        another process names only the id).  A message gone meanwhile (a rescan found
        and delivered it first, or an operator removed it) is nothing to schedule."""
        if queueId in self._envelopes or queueId in self._finished:
            return defer.succeed(None)
        d = self.queue.loadEnvelope(queueId).addCallback(lambda envelope: self.schedule(queueId, envelope, True))
        return d.addErrback(lambda f: f.trap(NotQueued) and None)

    def flush(self) -> None:
        """Make every planned attempt due now (``jsmail queue flush`` through the
        queue's trigger, or an operator's SIGALRM, as qmail-send takes it)."""
        for timer in list(self._timers.values()):
            timer.reset(0)
        _log.info("Flush: {count} message(s) due now", count=len(self._timers))

    def _plan(self, queueId: str, envelope: Envelope, fresh: bool = False) -> None:
        self._envelopes[queueId] = envelope
        delay = max(0.0, envelope.nextAttempt - self.clock.seconds())
        if fresh and delay == 0:
            self._fresh.add(queueId)
        else:
            self._fresh.discard(queueId)
        self._timers[queueId] = self.clock.callLater(delay, self._due, queueId)

    def _due(self, queueId: str) -> None:
        del self._timers[queueId]
        self._attempting.add(queueId)
        d = defer.maybeDeferred(self._attempt, queueId)
        d.addErrback(lambda f: _log.failure("Delivery attempt for {queueId} failed", f, queueId=queueId))
        self._inFlight.add(d)

        def ended(_: object) -> None:
            self._inFlight.discard(d)
            self._attempting.discard(queueId)

        d.addBoth(ended)

    def _attempt(self, queueId: str) -> defer.Deferred[None]:
        """One attempt at a message's pending recipients, through plain callbacks: the
        common attempt (one agent, nothing owed, nothing left) passes no generator."""
        # Read afresh (an operator may have held or deleted the message meanwhile),
        # unless it was read for this very attempt.
        if queueId in self._fresh:
            self._fresh.discard(queueId)
            return self._deliver(queueId, self._envelopes[queueId])
        d = self.queue.loadEnvelope(queueId)
        return d.addCallbacks(lambda envelope: self._deliver(queueId, envelope), self._unreadable,
                              errbackArgs=(queueId,))

    def _unreadable(self, failure: Failure, queueId: str) -> Failure | None:
        if failure.check(NotQueued):
            self._drop(queueId)
            return None
        if failure.check(EnvelopeFormatError):
            # Damaged since it was queued: the next rescan's recovery sets it aside.
            _log.error("Cannot read the envelope of {queueId}: {error}", queueId=queueId, error=failure.value)
            del self._envelopes[queueId]
            return None
        return failure

    def _deliver(self, queueId: str, envelope: Envelope) -> defer.Deferred[None]:
        message = QueuedMessage(queueId, envelope, lambda: self.queue.openMessage(queueId))
        byAgent: dict[Any, list[Recipient]] = {}
        for recipient in envelope.pending:
            byAgent.setdefault(self.router.agentFor(recipient.address), []).append(recipient)
        attempts = [self._slotsFor(agent).run(self._timed, agent, message, rcpts).addErrback(self._agentFailed, rcpts)
                    for agent, rcpts in byAgent.items()]

        def record(outcomes: list[list[DeliveryResult]]) -> defer.Deferred[None]:
            results = {result.recipient: result for agentResults in outcomes for result in agentResults}
            return self._record(queueId, envelope, results)

        if len(attempts) == 1:
            return attempts[0].addCallback(lambda results: record([results]))
        return defer.gatherResults(attempts).addCallback(record)

    def _timed(self, agent: IDeliveryAgent, message: QueuedMessage,
               recipients: list[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        """``agent.deliver``, logged as an ``attempt`` with the time it took."""
        started, name = self.clock.seconds(), type(agent).__name__.removesuffix("Delivery").lower()

        def done(results: list[DeliveryResult]) -> list[DeliveryResult]:
            maillog.attempt(message.queueId, name, self.clock.seconds() - started, results)
            return results

        return agent.deliver(message, recipients).addCallback(done)

    def _slotsFor(self, agent: IDeliveryAgent) -> defer.DeferredSemaphore:
        """At most ``concurrency`` deliveries at once per agent."""
        slots = self._slots.get(agent)
        if slots is None:
            slots = self._slots[agent] = defer.DeferredSemaphore(self.settings.concurrency)
        return slots

    def _agentFailed(self, failure: Any, recipients: list[Recipient]) -> list[DeliveryResult]:
        """An agent must report, not fail; if it fails anyway, nothing is lost: retry."""
        _log.failure("Delivery agent failed", failure)
        return DeliveryResult.forAll(recipients, DeliveryError(reply.DELIVERY_ERROR, False, failure.getErrorMessage()))

    def _record(self, queueId: str, envelope: Envelope, results: dict[str, DeliveryResult]) -> defer.Deferred[None]:
        now = self.clock.seconds()
        attempts = envelope.attempts + 1
        retryIn = retryDelay(attempts, self.settings)
        givingUp = now + retryIn > envelope.arrival + self.settings.giveUp
        recipients = []
        handoffs: dict[str, Handoff] = {}
        for r in envelope.recipients:
            result = results.get(r.address)
            if r.isDone or result is None:
                recipients.append(r)
                continue
            result = replace(result, recipient=r.address)
            shown = str(result.reply)
            if result.status is DeliveryStatus.DELIVERED:
                maillog.delivered(queueId, result)
                state = RecipientState.DELIVERED
                handoffs[r.address] = result.handoff
            elif result.status is DeliveryStatus.PERMANENT:
                maillog.failed(queueId, result)
                state = RecipientState.FAILED
            elif givingUp:
                maillog.failed(queueId, replace(result, detail="; ".join(filter(None, (result.detail, GAVE_UP)))))
                state = RecipientState.FAILED
                shown += f" ({GAVE_UP})"
            else:
                maillog.deferred(queueId, result, retryIn)
                state = RecipientState.PENDING
            recipients.append(replace(r, state=state, lastReply=shown, lastStatus=result.reply.status,
                                      lastFromPeer=result.fromPeer, remoteMTA=result.remoteMTA or None,
                                      lastPrivate=result.reply.private))
        envelope = replace(envelope, recipients=tuple(recipients), attempts=attempts, nextAttempt=now + retryIn)
        notices, envelope = noticesOwed(envelope, handoffs, now, self.settings.delayWarning)
        if notices or envelope.pending:
            return self._finish(queueId, envelope, notices)
        return self._remove(queueId)

    @defer.inlineCallbacks
    def _finish(self, queueId: str, envelope: Envelope, notices: list[Notice]) -> Any:
        """Queue the notices owed, then record the attempt or remove the message."""
        if notices:
            # Queued before the envelope says so: a crash may send one twice, never lose it.
            yield self._notify(queueId, envelope, notices)
        if envelope.pending:
            try:
                yield self.queue.update(queueId, envelope)
            except NotQueued:
                self._drop(queueId)  # held or deleted during the attempt
                return
            except Exception:
                # A full disk, say: the queue keeps the old envelope, so the worst is
                # a recipient delivered (or reported) twice.  The message stays planned.
                _log.failure("Cannot record the attempt on {queueId}; retrying later", queueId=queueId)
            if self.running:
                self._plan(queueId, envelope)
            else:
                self._envelopes[queueId] = envelope
            return
        yield self._remove(queueId)

    def _remove(self, queueId: str) -> defer.Deferred[None]:
        def gone(failure: Failure) -> None:
            failure.trap(NotQueued)
            self._drop(queueId)  # held during the attempt: a release delivers what is left again

        return self.queue.remove(queueId).addCallbacks(lambda _: self._forget(queueId), gone)

    def _drop(self, queueId: str) -> None:
        """An operator held or deleted the message: leave it out of the plan, but not for
        good (a ``release`` brings it back), and do not log it as removed."""
        _log.info("{queueId} is no longer in the queue (held or deleted); dropped from the plan", queueId=queueId)
        self._envelopes.pop(queueId, None)

    def _forget(self, queueId: str) -> None:
        """The message has left the queue: drop it from the plan, and remember the id
        for a while so a stale listing or notice cannot bring it back."""
        del self._envelopes[queueId]
        self._finished[queueId] = None
        if len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]
        maillog.removed(queueId)

    @defer.inlineCallbacks
    def _notify(self, queueId: str, envelope: Envelope, notices: list[Notice]) -> Any:
        """Queue one notice about ``notices``: to the sender; for a bounce, to the
        postmaster as a double bounce; for a double bounce, to no one (it is dropped
        and logged, as qmail does, so that no alias of the postmaster can loop)."""
        toPostmaster = envelope.isBounce
        if toPostmaster and (envelope.isDoubleBounce or not self.postmaster):
            _log.warn("Dropping the failed {what} {queueId} to {recipients}: no one left to tell",
                      what="double bounce" if envelope.isDoubleBounce else "bounce", queueId=queueId,
                      recipients=", ".join(f"<{n.recipient.address}>" for n in notices))
            return
        to = self.postmaster if toPostmaster else envelope.sender
        now = self.clock.seconds()
        # An internationalised notice needs SMTPUTF8 on its way, as its message did (RFC 6533).
        params: dict[str, str | None] = {"SMTPUTF8": None} if isInternational(envelope) else {}
        notice = Envelope(sender="", recipients=(Recipient(to),), mailParams=params, arrival=now,
                          clientAddress="127.0.0.1", helo=self.hostname,
                          protocol=DOUBLE_BOUNCE if toPostmaster else "local")
        incoming = self.funnel.newMessage(notice)

        def write() -> None:
            with self.queue.openMessage(queueId) as original:
                writeDSN(incoming.write, original, queueId, envelope, notices, self.hostname, now,
                         toPostmaster=toPostmaster, fromLocal=self.settings.bounceFrom,
                         retryUntil=envelope.arrival + self.settings.giveUp)

        try:
            yield self.runInThread(write)
        except Exception:
            incoming.abort()
            raise
        noticeId = yield incoming.commit()
        maillog.bounced(queueId, to, noticeId, ",".join(sorted({n.action.value for n in notices})))

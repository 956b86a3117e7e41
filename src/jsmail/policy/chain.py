"""Each listener's chain of checks: the plugins found, built in the configured order,
and :class:`PhaseRunner`, which runs one SMTP phase's checks for smtpd and keeps what
they add in the session's :class:`Additions`.

Plugins are found with ``twisted.plugin`` in the :mod:`jsmail.plugins` package (see
:mod:`jsmail.policy.plugin` for what a plugin is); this module is the only one that
imports that package, so the built-in plugins may import the plugin API freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet import defer
from twisted.plugin import getPlugins
from twisted.python.failure import Failure

import jsmail.plugins
from jsmail import maillog, metrics
from jsmail.error import SMTPReplyError
from jsmail.interfaces import IMessagePolicy, IModifier, IPolicy, ISession
from jsmail.policy.plugin import IPolicyPlugin, PluginError, PolicyContext
from jsmail.policy.verdict import Verdict, asVerdict


def availablePlugins() -> dict[str, IPolicyPlugin]:
    """Every policy plugin installed, by name."""
    return {plugin.name: plugin for plugin in getPlugins(IPolicyPlugin, jsmail.plugins)}


@dataclass(frozen=True)
class Chain:
    """One listener's checks and modifiers, in the configured order."""

    policies: tuple[Any, ...] = ()
    modifiers: tuple[Any, ...] = ()


def buildChain(names: Sequence[str], options: Mapping[str, Mapping[str, Any]], context: PolicyContext,
               plugins: Mapping[str, IPolicyPlugin] | None = None) -> Chain:
    """Build the named checks in order; a plugin enabled on several listeners is built
    once per listener, so each listener may be given other options in a later version
    without sharing state by accident."""
    plugins = availablePlugins() if plugins is None else plugins
    policies: list[Any] = []
    modifiers: list[Any] = []
    for name in names:
        plugin = plugins.get(name)
        if plugin is None:
            known = ", ".join(sorted(plugins)) or "none"
            raise PluginError("policy", f"no policy plugin named {name!r} (known: {known})")
        try:
            built = plugin.build(options.get(name, {}), context)
        except ValueError as e:
            raise PluginError(f"plugins.{name}", str(e)) from None
        if IModifier.providedBy(built):
            modifiers.append(built)
        if IPolicy.providedBy(built) or IMessagePolicy.providedBy(built):
            policies.append(built)
        if not (IModifier.providedBy(built) or IPolicy.providedBy(built) or IMessagePolicy.providedBy(built)):
            raise PluginError(f"plugins.{name}", f"plugin {name!r} built {built!r}, which is no check")
    return Chain(tuple(policies), tuple(modifiers))


#: The SMTP phases in order, and those whose additions belong to one message.
TRANSACTION_PHASES = ("checkSender", "checkRecipient", "checkMessage")
PHASES = ("checkConnect", "checkHelo", *TRANSACTION_PHASES)


class Additions:
    """What one session's accepting verdicts add (header fields, Authentication-Results
    entries), by phase, so the message gets them in phase order whichever check ran
    last: HELO's are replaced at each EHLO, the transaction's are dropped when it ends."""

    def __init__(self) -> None:
        self._byPhase: dict[str, list[Verdict]] = {}

    def keep(self, phase: str, verdicts: list[Verdict]) -> None:
        if phase == "checkHelo":
            self._byPhase[phase] = verdicts
        elif verdicts:
            self._byPhase[phase] = self._byPhase.get(phase, []) + verdicts

    def forgetTransaction(self) -> None:
        for phase in TRANSACTION_PHASES:
            self._byPhase.pop(phase, None)

    def inOrder(self) -> list[Verdict]:
        """Every verdict kept, in phase order."""
        return [v for phase in PHASES for v in self._byPhase.get(phase, ())]


class PhaseRunner:
    """Runs the checks of one SMTP phase, in order, then the phase's own ``accept``.

    Checks that answer at once decide at once; a Deferred makes the reply wait, and
    smtpd holds later pipelined commands meanwhile, so replies stay in order.  The first
    refusal wins (raised as :class:`~jsmail.error.SMTPReplyError`); any other exception
    propagates for smtpd to answer 451.  What accepting verdicts add goes into the
    session's :class:`Additions` only once the whole phase has said yes.

    Each check's answer that says something (a refusal, or an accept with a reason or
    with something to add) goes to the operator log (``check``), named by its class; a
    bare accept only with ``logAccepts`` (``[log] checks = "all"``), since it was most of
    the log's lines and a sixth of the receiving process's CPU.  Every answer is
    counted in the metrics.
    """

    def __init__(self, checks: Iterable[object], inFlight: InFlight | None = None, logAccepts: bool = False) -> None:
        checks = tuple(checks)
        self.policies = tuple(c for c in checks if IPolicy.providedBy(c))
        self.messagePolicies = tuple(c for c in checks if IMessagePolicy.providedBy(c))
        self.inFlight = inFlight
        self.logAccepts = logAccepts

    def run(self, phase: str, session: ISession, additions: Additions, accept: Callable[[], Any], *args: Any) -> Any:
        """``accept()``'s result once every check of ``phase`` has said yes, now or
        through a Deferred."""
        checks = self.messagePolicies if phase == "checkMessage" else self.policies
        return self._next(checks, 0, [], (session, *args), phase, additions, accept)

    def _next(self, checks: tuple[object, ...], index: int, kept: list[Verdict], args: tuple[Any, ...], phase: str,
              additions: Additions, accept: Callable[[], Any], granted: bool = False) -> Any:
        inFlight = self.inFlight
        while index < len(checks):
            turn = inFlight.turn(args[0]) if inFlight is not None and not granted else None
            if turn is not None:  # this client has its fill of checks waiting on something
                return turn.addCallback(self._resume, checks, index, kept, args, phase, additions, accept, True)
            granted = False
            check = checks[index]
            index += 1
            try:
                answer = getattr(check, phase)(*args)
            except SMTPReplyError as e:
                self._logRefusal(e, check, args, phase)
                raise
            if isinstance(answer, defer.Deferred):
                if inFlight is not None:
                    answer = inFlight.started(args[0], answer)
                answer.addErrback(self._logFailure, check, args, phase)
                return answer.addCallback(self._keep, kept, check, args, phase).addCallback(
                    self._resume, checks, index, kept, args, phase, additions, accept)
            self._keep(answer, kept, check, args, phase)
        additions.keep(phase, kept)
        return accept()

    def _resume(self, _: object, *state: Any) -> Any:
        """Go on with the phase's checks once the one that waited is done."""
        return self._next(*state)

    def _keep(self, answer: object, kept: list[Verdict], check: object, args: tuple[Any, ...], phase: str) -> None:
        verdict = asVerdict(answer)
        self._log(verdict, check, args, phase)
        verdict.raiseIfRefused()
        if verdict.headers or verdict.results:
            kept.append(verdict)

    def _log(self, verdict: Verdict, check: object, args: tuple[Any, ...], phase: str) -> None:
        """Count the answer; log it if it says something, or if every answer is logged."""
        refusal, name = verdict.refusal, type(check).__name__
        outcome = "accept" if refusal is None else "tempfail" if refusal.code < 500 else "reject"
        metrics.checked(name, outcome)
        if refusal is None and not (self.logAccepts or verdict.reason or verdict.headers or verdict.results):
            return
        session = args[0]
        about = args[1] if len(args) > 1 and phase != "checkMessage" else ""
        maillog.check(getattr(session, "sessionId", "-"), _PHASES.get(phase, phase), name, outcome,
                      "" if about is None else str(about), refusal or "", verdict.reason,
                      getattr(session, "queueId", "-"))

    def _logRefusal(self, error: SMTPReplyError, check: object, args: tuple[Any, ...], phase: str) -> None:
        """A check that raised its refusal instead of answering it."""
        reply = error.reply
        verdict = Verdict(reply, error.reason) if reply.code >= 400 else Verdict(reason=error.reason)
        self._log(verdict, check, args, phase)

    def _logFailure(self, failure: Failure, check: object, args: tuple[Any, ...], phase: str) -> Failure:
        if isinstance(failure.value, SMTPReplyError):
            self._logRefusal(failure.value, check, args, phase)
        return failure


class InFlight:
    """The checks of one client's sessions that wait on something (DNS, a program, a
    thread), at most ``limit`` at once; a session whose check would be one more waits
    its turn, in order (security review M-4: one client's many sessions must not take
    every worker the checks share).  ``keyOf`` says which sessions are one client.
    Only clients with checks in flight or waiting have entries."""

    def __init__(self, limit: int, keyOf: Callable[[Any], str]) -> None:
        self.limit, self.keyOf = limit, keyOf
        self._running: dict[str, int] = {}
        self._waiting: dict[str, list[defer.Deferred[None]]] = {}

    def turn(self, session: Any) -> defer.Deferred[None] | None:
        """None when the session's client may start a check now, else a Deferred that
        fires when it may: then it goes ahead without asking again."""
        if not self._running and not self._waiting:  # none in flight or waiting: no need to know who this is
            return None
        key = self.keyOf(session)
        if self._running.get(key, 0) < self.limit and key not in self._waiting:
            return None
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting.setdefault(key, []).append(waiting)
        return waiting

    def started(self, session: Any, answer: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Count ``answer`` in flight until it fires; then waiters go, as many as fit."""
        key = self.keyOf(session)
        self._running[key] = self._running.get(key, 0) + 1

        def ended(result: object) -> object:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            self._wake(key)
            return result

        return answer.addBoth(ended)

    def _wake(self, key: str) -> None:
        # A waiter whose check answers at once takes no place, so the next goes too.
        while self._running.get(key, 0) < self.limit and self._waiting.get(key):
            waiters = self._waiting[key]
            waiter = waiters.pop(0)
            if not waiters:
                del self._waiting[key]
            waiter.callback(None)


#: The operator log's names for the phases.
_PHASES = {"checkConnect": "connect", "checkHelo": "helo", "checkSender": "mail", "checkRecipient": "rcpt",
           "checkMessage": "data"}

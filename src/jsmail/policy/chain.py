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
from jsmail import maillog
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
        earlier = [] if phase == "checkHelo" else self._byPhase.get(phase, [])
        self._byPhase[phase] = earlier + verdicts

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
    Each check's answer goes to the operator log (``check``), named by its class.
    """

    def __init__(self, checks: Iterable[object], inFlight: InFlight | None = None) -> None:
        checks = tuple(checks)
        self.policies = tuple(c for c in checks if IPolicy.providedBy(c))
        self.messagePolicies = tuple(c for c in checks if IMessagePolicy.providedBy(c))
        self.inFlight = inFlight

    def run(self, phase: str, session: ISession, additions: Additions, accept: Callable[[], Any], *args: Any) -> Any:
        """``accept()``'s result once every check of ``phase`` has said yes, now or
        through a Deferred."""
        checks = self.messagePolicies if phase == "checkMessage" else self.policies
        kept: list[Verdict] = []

        def accepted() -> Any:
            additions.keep(phase, kept)
            return accept()

        return self._next([(c, getattr(c, phase)) for c in checks], kept, accepted, (session, *args),
                          _PHASES.get(phase, phase))

    def _next(self, pending: list[tuple[object, Callable[..., Any]]], kept: list[Verdict], accept: Callable[[], Any],
              args: tuple[Any, ...], phase: str, granted: bool = False) -> Any:
        while pending:
            turn = self.inFlight.turn(args[0]) if self.inFlight is not None and not granted else None
            if turn is not None:  # this client has its fill of checks waiting on something
                return turn.addCallback(lambda _: self._next(pending, kept, accept, args, phase, True))
            granted = False
            check, method = pending.pop(0)
            logged = (args[0], phase, type(check).__name__, args[1] if len(args) > 1 and phase != "data" else "")
            try:
                answer = method(*args)
            except SMTPReplyError as e:
                _logRefusal(e, logged)
                raise
            if isinstance(answer, defer.Deferred):
                if self.inFlight is not None:
                    answer = self.inFlight.started(args[0], answer)
                answer.addErrback(_logFailure, logged)
                return answer.addCallback(_keep, kept, logged).addCallback(
                    lambda _: self._next(pending, kept, accept, args, phase))
            _keep(answer, kept, logged)
        return accept()


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


#: What a check's answer is logged with: the session, the phase, the check's name and
#: what the phase is about (the HELO name, the sender or the recipient).
_Logged = tuple[Any, str, str, object]


def _log(logged: _Logged, verdict: Verdict) -> None:
    session, phase, name, about = logged
    refusal = verdict.refusal
    outcome = "accept" if refusal is None else "tempfail" if refusal.code < 500 else "reject"
    maillog.check(getattr(session, "sessionId", "-"), phase, name, outcome, "" if about is None else str(about),
                  refusal or "", verdict.reason, getattr(session, "queueId", "-"))


def _logRefusal(error: SMTPReplyError, logged: _Logged) -> None:
    """A check that raised its refusal instead of answering it."""
    reply = error.reply
    _log(logged, Verdict(reply, error.reason) if reply.code >= 400 else Verdict(reason=error.reason))


def _logFailure(failure: Failure, logged: _Logged) -> Failure:
    if isinstance(failure.value, SMTPReplyError):
        _logRefusal(failure.value, logged)
    return failure


def _keep(answer: object, kept: list[Verdict], logged: _Logged) -> None:
    verdict = asVerdict(answer)
    _log(logged, verdict)
    verdict.raiseIfRefused()
    if verdict.headers or verdict.results:
        kept.append(verdict)

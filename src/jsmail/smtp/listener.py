"""What one SMTP listener is: everything its sessions share (:class:`Listener`), built
once by the gateway and given to each session; its limits are
:class:`~jsmail.smtp.settings.ServerSettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime

from jsmail import reply
from jsmail._threads import RunInThread, runNow
from jsmail.interfaces import IMessageSink, IModifier
from jsmail.policy.chain import InFlight, PhaseRunner
from jsmail.queue.funnel import NOTHING, Owed
from jsmail.reply import Reply
from jsmail.smtp.assembly import Assembler, MemoryBudget
from jsmail.smtp.limits import clientKey
from jsmail.smtp.sasl import FailureCounter
from jsmail.smtp.settings import ServerSettings


@dataclass(frozen=True)
class Listener:
    """One listener's sessions' shared parts.

    ``name`` goes into the operator log ("smtp", "submission", "smtps", ...);
    ``checks`` are its policies in order (:class:`~jsmail.interfaces.IPolicy`,
    :class:`~jsmail.interfaces.IMessagePolicy` or both); ``tls`` a server context
    factory enables STARTTLS, or with ``implicitTLS`` says the transport is TLS from
    the first byte (port 465); ``portal`` enables AUTH; blocking work (reading a
    spooled message back) goes through ``runInThread``.
    """

    settings: ServerSettings
    sink: IMessageSink
    clock: IReactorTime
    name: str = "smtp"
    checks: Sequence[object] = ()
    modifiers: Sequence[IModifier] = ()
    tls: Any = None
    portal: Portal | None = None
    implicitTLS: bool = False
    runInThread: RunInThread = runNow
    roomFor: Callable[[int], bool] | None = None
    authFailures: FailureCounter = field(default_factory=FailureCounter)  # shared by a gateway's listeners
    owed: Owed = NOTHING  # what the sink adds to each message (see Assembler)

    @cached_property
    def phases(self) -> PhaseRunner:
        settings = self.settings

        def client(session: Any) -> str:
            return clientKey(session.clientAddress, settings.clientPrefix6)

        return PhaseRunner(self.checks, InFlight(settings.maxChecksPerClient, client), settings.logAccepts)

    @cached_property
    def greeting(self) -> Reply:
        """The 220 every session starts with, made (and its wire form) once."""
        if self.settings.greeting:
            return reply.OWN_GREETING.format(self.settings.greeting)
        return reply.SERVICE_READY.format(self.settings.hostname)

    @cached_property
    def assembler(self) -> Assembler:
        settings = self.settings
        return Assembler(settings.hostname, settings.authservId, settings.showAuthInReceived, self.modifiers,
                         bool(self.phases.messagePolicies), self.clock, self.runInThread, self.owed,
                         MemoryBudget(settings.maxCheckMemory))

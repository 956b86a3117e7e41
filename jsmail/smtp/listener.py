"""What one SMTP listener is: its limits (:class:`ServerSettings`) and everything its
sessions share (:class:`Listener`), built once by the gateway and given to each
session."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime

from jsmail._threads import RunInThread, runNow
from jsmail.interfaces import IMessageSink, IModifier
from jsmail.policy.chain import PhaseRunner
from jsmail.smtp.assembly import Assembler


@dataclass(frozen=True)
class ServerSettings:
    """What one SMTP listener enforces.  Every limit is here, so every limit is
    configurable (see ``etc/jsmail.toml`` for each one's meaning)."""

    hostname: str = "localhost"
    greeting: str = ""  # the 220 text before " ESMTP" (qmail's smtpgreeting); empty: jsmail's own
    maxMessageSize: int = 25 * 1024 * 1024
    maxCommandLine: int = 512  # RFC 5321 4.5.3.1.4, including CR LF
    maxTextLine: int = 1000  # RFC 5321 4.5.3.1.6, including CR LF
    maxRecipients: int = 100  # RFC 5321 4.5.3.1.8 says at least 100
    maxErrors: int = 20
    idleTimeout: float = 300.0  # RFC 5321 4.5.3.2.7
    maxConnections: int = 1000
    maxConnectionsPerClient: int = 20
    normaliseLineEndings: bool = False
    maxReceivedHeaders: int = 100  # loop detection, RFC 5321 6.3
    requireTLS: bool = False  # submission (RFC 6409 + RFC 3207): STARTTLS before AUTH and MAIL
    requireAuth: bool = False  # submission: AUTH before MAIL
    allowPlaintextAuth: bool = False  # offer AUTH without TLS (RFC 4954 section 4 advises not to)
    allowProxyAuth: bool = False  # PLAIN authzid may differ from authcid
    maxAuthFailures: int = 3  # failures answered with 535; the next one closes with 421
    authFailureDelay: float = 1.0  # seconds before the first 535, doubling each time
    showAuthInReceived: bool = False
    authservId: str = ""  # Authentication-Results authserv-id (RFC 8601 section 2.5); empty: hostname


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

    @cached_property
    def phases(self) -> PhaseRunner:
        return PhaseRunner(self.checks)

    @cached_property
    def assembler(self) -> Assembler:
        settings = self.settings
        return Assembler(settings.hostname, settings.authservId, settings.showAuthInReceived, self.modifiers,
                         bool(self.phases.messagePolicies), self.clock, self.runInThread)

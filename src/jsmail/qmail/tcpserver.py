"""``jsmail-smtpd``: jsmail's ESMTP server on stdin/stdout under tcpserver (UCSPI), to
drop in for qmail-smtpd in an existing run script::

    tcpserver -v -R -x tcp.cdb 0 25 jsmail-smtpd --config /etc/jsmail.toml

It reads tcpserver's environment (qmail-interfaces reference, sections 11.1 and 13):
``TCPREMOTEIP`` and ``TCPREMOTEPORT`` name the client, and ``TCPREMOTEHOST`` (its
name, if tcpserver looked it up or a tcprules line set it) goes into the Received
header as ``from <helo> (<host> [<ip>])``, sanitised as qmail-smtpd does (section
11.5: letters, digits and ``. @ % + / = : - [ ]``; anything else becomes ``?``); ``RELAYCLIENT``, if set (even
empty), lets the client relay and is appended to every RCPT address (qmail-smtpd's
suffix rule); ``RBLSMTPD``, if set and not empty, refuses every recipient with its text
(553 if it starts with "-", else 451, as rblsmtpd).  Everything else is the daemon's:
the listener named by ``--listener`` (``smtp``, the default, or ``submission``) gets
the same built-in checks (relay control unless RELAYCLIENT is set, unknown local
recipients, badmailfrom), the same ``[policy]`` checks and modifiers, STARTTLS with the
same certificate and AUTH with the same users; a configuration it cannot use gets
``421`` and a reason on stderr, never a session that skips them.  The daemon's log
lines go to stderr, for multilog.  Accepted mail goes through the funnel to the program
``QMAILQUEUE`` names (any qmail-queue-compatible program), else into jsmail's queue,
whose running gateway is woken to deliver it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable

from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from jsmail import reply
from jsmail.address import Address
from jsmail.datadir import dataDirectory
from jsmail.error import SMTPReplyError
from jsmail.policy.base import Policy
from jsmail.smtp.server import ESMTPServer


class RBLRefusal(Policy):
    """rblsmtpd's answer: every recipient refused with the list's text."""

    def __init__(self, text: str) -> None:
        permanent = text.startswith("-")
        clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text.lstrip("-"))[:200]
        self.refusal = (reply.RBL_REFUSED if permanent else reply.RBL_TEMPORARY).format(clean)

    def checkRecipient(self, session: object, address: Address, params: dict) -> None:
        raise SMTPReplyError(self.refusal, "RBLSMTPD is set")


def remoteHostName(name: str) -> str:
    """TCPREMOTEHOST made safe for a header, as qmail-smtpd does (section 11.5)."""
    return re.sub(r"[^A-Za-z0-9.@%+/=:\[\]-]", "?", name[:255])


class UCSPISession(ESMTPServer):
    """A session whose client is the one tcpserver names, with RELAYCLIENT's suffix."""

    relaySuffix: str | None = None

    def clientOf(self, transport: Any) -> tuple[str, int]:
        port = os.environ.get("TCPREMOTEPORT", "0")
        return os.environ.get("TCPREMOTEIP", "unknown"), int(port) if port.isdigit() else 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.session.clientHost = remoteHostName(os.environ.get("TCPREMOTEHOST", ""))

    def smtp_RCPT(self, argument: str) -> Any:
        if self.relaySuffix:
            argument = re.sub(r">", lambda _: self.relaySuffix + ">", argument, count=1)  # type: ignore[operator]
        return super().smtp_RCPT(argument)


class _StdioTransport:
    """The stdin/stdout transport as the session sees it, with the ``startTLS`` a pipe
    lacks: it hands the switch to :class:`SessionOnStdio`."""

    def __init__(self, transport: Any, startTLS: Callable[[Any], None]) -> None:
        self._transport = transport
        self.startTLS = startTLS

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SessionOnStdio(Protocol):
    """Gives stdin/stdout (:class:`twisted.internet.stdio.StandardIO`) to ``session``
    and calls ``ended`` once the connection is gone: the session only ends itself, and
    the ``main()`` that owns the process and its reactor says what follows (it passes
    :func:`reactorStopper`).  STARTTLS puts a TLS layer (Twisted's memory-BIO TLS,
    as the daemon's implicit TLS uses) between the pipes and the session."""

    def __init__(self, session: Protocol, ended: Callable[[], object]) -> None:
        self.session = session
        self.ended = ended
        self._stdio: Any = None
        self._tls: TLSMemoryBIOProtocol | None = None

    def makeConnection(self, transport: Any) -> None:
        self._stdio = transport
        self.session.makeConnection(_StdioTransport(transport, self._startTLS))

    def _startTLS(self, contextFactory: Any) -> None:
        # no wrapped factory: the TLS protocol is built by hand around the session
        tls = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(contextFactory, False, None),  # type: ignore[arg-type]
                                   self.session,
                                   _connectWrapped=False)
        tls.makeConnection(self._stdio)
        self.session.transport = tls
        self._tls = tls

    def dataReceived(self, data: bytes) -> None:
        (self._tls or self.session).dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            (self._tls or self.session).connectionLost(reason)
        finally:
            self.ended()


def reactorStopper(reactor: Any) -> Callable[[], None]:
    """A callback that stops ``reactor``, unless it is stopping already (the connection
    may end because it is)."""

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    return stop


def logToStderr() -> None:
    """The daemon's log lines (connect, check, reject, queued, ...) on stderr, where
    tcpserver's users collect qmail-smtpd's with multilog; stdout is the SMTP channel."""
    from twisted.logger import FilteringLogObserver, globalLogBeginner, textFileLogObserver

    from jsmail.ops.logformat import notChatter

    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [notChatter])  # type: ignore[list-item]
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import maybeDeferred

    from jsmail._threads import reactorThreads
    from jsmail.config import ConfigError, loadConfig
    from jsmail.qmail.queuesink import ProgramQueue
    from jsmail.queue.admin import wakeDelivery
    from jsmail.queue.funnel import Funnel
    from jsmail.queue.store import MaildirQueue
    from jsmail.service import builtInChecks, makeListener, makePortal, makeTLS, policyChains
    from jsmail.smtp.tls import TLSError

    parser = argparse.ArgumentParser(
        prog="jsmail-smtpd", description="jsmail's SMTP server under tcpserver: the same checks, TLS and AUTH "
        "as the daemon's listener of that kind, from the same configuration.")
    parser.add_argument("--config", help="TOML configuration (domains, limits, data directory)")
    parser.add_argument("--data", help="data directory [default: $JSMAIL_DATA or the configuration's]")
    parser.add_argument("--listener", choices=("smtp", "submission"), default="smtp",
                        help="whose rules and [policy] checks to apply [default: smtp, port 25's]")
    arguments = parser.parse_args(argv)
    logToStderr()
    overrides: dict[str, Any] = {}
    dataDir = dataDirectory(arguments.data, default="")  # none given: the configuration's
    if dataDir:
        overrides["server.data"] = dataDir
    runInThread = reactorThreads(reactor)
    kind = arguments.listener
    relayClient = os.environ.get("RELAYCLIENT")
    try:
        config = loadConfig(arguments.config, overrides)
        chain = policyChains(config, reactor, runInThread)[kind]
        tls = makeTLS(config)
        portal = makePortal(config, (), runInThread)
    except (ConfigError, TLSError, OSError) as e:
        # qmail-smtpd's answer when it cannot read its controls: the client retries later.
        sys.stdout.write("421 4.3.0 Temporary local problem, try again later\r\n")
        sys.stdout.flush()
        print(f"jsmail-smtpd: cannot start: {e}", file=sys.stderr)
        return 111
    policies: list[Any] = []
    if os.environ.get("RBLSMTPD"):
        policies.append(RBLRefusal(os.environ["RBLSMTPD"]))
    policies += builtInChecks(config, runInThread, relayControl=relayClient is None)
    queueDir = os.path.join(config.server.dataDir, "queue")
    funnel: Funnel
    queue = None
    if os.environ.get("QMAILQUEUE"):
        funnel = Funnel(ProgramQueue(os.environ["QMAILQUEUE"], reactor), lambda queueId, envelope: None)
    else:
        queue = MaildirQueue(queueDir, maybeDeferred, sweep=False, spares=0)
        funnel = Funnel(queue, lambda queueId, envelope: wakeDelivery(queueDir))
    listener = makeListener(config, kind, funnel, reactor, (*policies, *chain.policies), chain.modifiers, tls,
                            portal, runInThread)
    session = UCSPISession(listener)
    session.relaySuffix = relayClient
    stdio.StandardIO(SessionOnStdio(session, reactorStopper(reactor)))
    reactor.run()
    if queue is not None:
        queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

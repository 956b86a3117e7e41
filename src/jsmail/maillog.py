"""The operator log: a short, fixed set of events, each keyed by queue id.

Every event is one line through :mod:`twisted.logger` in the ``jsmail.maillog``
namespace, written as ``event key=value ...`` so that ``grep id=QUEUEID`` follows one
message from arrival to its end.  Debug detail belongs elsewhere, not here.  Each event
also carries its name and fields as keys (``event``, ``queueId``, ``recipient``,
``detail``; a delivery outcome also ``code``, ``enhanced``, ``text`` and ``peer``, its
reply's parts, and ``reason``, the private detail), so a program can watch them too
(see :class:`jsmail.service.Outcomes`).

Events of an SMTP session carry ``session``, a short id made at ``connect``, so a
session's checks and refusals can be followed before a queue id exists; ``queued``
joins the two.  New fields are only ever appended to a line's text.  A line shows
what others chose (addresses, replies, names) with its unprintable characters escaped
(:func:`shown`), so one event is always one line; the event's fields keep the values.
Every event and field is listed in ``docs/operations.rst``.
"""

from __future__ import annotations

import functools
import secrets
import string
import time
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

if TYPE_CHECKING:
    from jsmail.interfaces import DeliveryResult

_log = Logger(namespace="jsmail.maillog")
_FORMATTER = string.Formatter()


def shown(text: str) -> str:
    """``text`` safe for one line of a log or a terminal: each character that is not
    printable (C0 and C1 controls such as ESC and CSI, U+0085, line and paragraph
    separators, format characters) escaped as in Python's repr, so an address cannot
    end a log line, forge the next one or drive a terminal (security review L-7).
    Printable text comes back as it was, and escaping twice changes nothing."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@functools.lru_cache(maxsize=64)
def _plainFields(format: str) -> frozenset[str]:
    """The fields ``format`` shows without a conversion: parsed once per format (the
    formats are this module's own, a few dozen)."""
    return frozenset(name for _, name, _, conversion in _FORMATTER.parse(format) if name and conversion is None)


def _info(format: str, **fields: Any) -> None:
    """Log one event: its line shows the text fields through :func:`shown` (those
    given with ``!r`` are escaped by repr), while the event keeps every value as it
    is, for programs (JSON logs, :class:`jsmail.service.Outcomes`)."""
    plain = _plainFields(format)
    line = format.format(**{k: shown(v) if k in plain and isinstance(v, str) else v for k, v in fields.items()})
    if "{" in line or "}" in line:
        line = line.replace("{", "{{").replace("}", "}}")
    # Logger.info's event, made here: Logger.emit first looks for the level among
    # LogLevel's constants, sorted anew each time, a sixth of the cost of an event.
    fields.update(log_logger=_log, log_level=LogLevel.info, log_namespace=_log.namespace, log_source=_log.source,
                  log_format=line, log_time=time.time())
    _log.observer(fields)


def newSessionId() -> str:
    """A short id for one SMTP session: 48 random bits, unique enough within a log."""
    return secrets.token_hex(6)


def connect(client: str, listener: str, session: str = "-") -> None:
    _info("connect client={client} listener={listener} session={session}", client=client, listener=listener,
          session=session, event="connect")


def tls(client: str, info: str, session: str = "-") -> None:
    _info("tls client={client} {info} session={session}", client=client, info=info, session=session,
          event="tls")


def tlsFailed(client: str, error: str, session: str = "-") -> None:
    _info("tls-failed client={client} error={error!r} session={session}", client=client, error=error,
          session=session, event="tls-failed")


def auth(client: str, user: str, outcome: str, session: str = "-") -> None:
    """An AUTH attempt: the identity goes to the log, not into message headers."""
    _info("auth client={client} user={user!r} outcome={outcome} session={session}", client=client, user=user,
          outcome=outcome, session=session, event="auth")


def check(session: str, phase: str, name: str, verdict: str, argument: str = "", reply: object = "",
          reason: str = "", queueId: str = "-") -> None:
    """One check's answer in one SMTP phase: ``verdict`` is accept, reject or tempfail;
    ``argument`` what the phase was about (the HELO name, the sender, the recipient)."""
    _info("check id={queueId} session={session} phase={phase} check={check} verdict={verdict} "
          "argument={argument!r} reply={reply!r} reason={reason!r}", queueId=queueId, session=session,
          phase=phase, check=name, verdict=verdict, argument=argument, reply=str(reply), reason=reason,
          event="check")


def reject(client: str, command: str, reply: object, reason: str, queueId: str = "-", session: str = "-",
           listener: str = "-") -> None:
    """A refusal: ``reply`` is what the client saw, ``reason`` the private why."""
    _info(
        "reject id={queueId} client={client} command={command!r} reply={reply!r} reason={reason!r} "
        "session={session} listener={listener}",
        queueId=queueId, client=client, command=command, reply=str(reply), reason=reason, session=session,
        listener=listener, event="reject")


def queued(queueId: str, sender: str, recipients: int, size: int, client: str, session: str = "-",
           listener: str = "-", messageId: str = "") -> None:
    _info(
        "queued id={queueId} from=<{sender}> nrcpt={recipients} size={size} client={client} session={session} "
        "listener={listener} message_id={messageId!r}",
        queueId=queueId, sender=sender, recipients=recipients, size=size, client=client, session=session,
        listener=listener, messageId=messageId, event="queued")


def remote(queueId: str, host: str, address: str, port: int, mode: str, tls: str, outcome: str) -> None:
    """A session with a remote server for a delivery: ``mode`` is the TLS mode asked
    for (``dane`` with TLSA records), ``tls`` what was agreed, ``outcome`` one of
    ``tls``, ``plaintext``, ``reused`` or ``failed``."""
    _info("remote id={queueId} host={host} address={address} port={port} mode={mode} tls={tls!r} "
          "outcome={outcome}", queueId=queueId, host=host, address=address, port=port, mode=mode, tls=tls,
          outcome=outcome, event="remote")


def attempt(queueId: str, agent: str, seconds: float, results: list[DeliveryResult]) -> None:
    """One agent's attempt at some of a message's recipients, and how long it took."""
    counts = {"delivered": 0, "temporary": 0, "permanent": 0}
    for result in results:
        counts[result.status.value] = counts.get(result.status.value, 0) + 1
    _info("attempt id={queueId} agent={agent} seconds={seconds:.3f} delivered={delivered} "
          "temporary={temporary} permanent={permanent}", queueId=queueId, agent=agent, seconds=seconds,
          event="attempt", **counts)


def _outcome(result: DeliveryResult) -> dict[str, object]:
    """A delivery result's fields: ``detail`` for people (one line: a local delivery's
    report has a line per step), the reply's parts for programs, and ``relay``, the
    server a remote delivery talked to."""
    reply = result.reply
    detail = "; ".join(line.strip() for line in result.describe().splitlines() if line.strip())
    return {"recipient": result.recipient, "detail": detail, "code": reply.code,
            "enhanced": reply.enhanced, "text": reply.text, "peer": result.fromPeer, "reason": result.detail,
            "remoteMTA": result.remoteMTA, "relay": result.remoteMTA.partition("; ")[2]}


def _to(result: DeliveryResult) -> str:
    """The recipient, and the relay when a remote server was talked to."""
    return "to=<{recipient}> relay={relay}" if result.remoteMTA else "to=<{recipient}>"


def delivered(queueId: str, result: DeliveryResult) -> None:
    _info("delivered id={queueId} " + _to(result) + " detail={detail!r}",
          queueId=queueId, event="delivered", **_outcome(result))


def deferred(queueId: str, result: DeliveryResult, retryIn: float) -> None:
    _info("deferred id={queueId} " + _to(result) + " detail={detail!r} retry_in={retryIn:.0f}s",
          queueId=queueId, retryIn=retryIn, event="deferred", **_outcome(result))


def failed(queueId: str, result: DeliveryResult) -> None:
    _info("failed id={queueId} " + _to(result) + " detail={detail!r}",
          queueId=queueId, event="failed", **_outcome(result))


def bounced(queueId: str, sender: str, bounceId: str, actions: str = "failed") -> None:
    """A delivery status notification was queued: ``actions`` are the RFC 3464 actions
    it reports (failed, delayed, delivered, relayed, expanded), comma-separated."""
    _info("bounced id={queueId} to=<{sender}> bounce_id={bounceId} actions={actions}",
          queueId=queueId, sender=sender, bounceId=bounceId, actions=actions, event="bounced")


def removed(queueId: str) -> None:
    _info("removed id={queueId}", queueId=queueId, event="removed")

"""The operator log: a short, fixed set of events, each keyed by queue id.

Every event is one line through :mod:`twisted.logger` in the ``jsmail.maillog``
namespace, written as ``event key=value ...`` so that ``grep id=QUEUEID`` follows one
message from arrival to its end.  Debug detail belongs elsewhere, not here.  Each event
also carries its name and fields as keys (``event``, ``queueId``, ``recipient``,
``detail``; a delivery outcome also ``code``, ``enhanced``, ``text`` and ``peer``, its
reply's parts, and ``reason``, the private detail), so a program can watch them too
(see :class:`jsmail.service.Outcomes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from jsmail.interfaces import DeliveryResult

_log = Logger(namespace="jsmail.maillog")


def connect(client: str, listener: str) -> None:
    _log.info("connect client={client} listener={listener}", client=client, listener=listener, event="connect")


def tls(client: str, info: str) -> None:
    _log.info("tls client={client} {info}", client=client, info=info, event="tls")


def tlsFailed(client: str, error: str) -> None:
    _log.info("tls-failed client={client} error={error!r}", client=client, error=error, event="tls-failed")


def auth(client: str, user: str, outcome: str) -> None:
    """An AUTH attempt: the identity goes to the log, not into message headers."""
    _log.info("auth client={client} user={user!r} outcome={outcome}", client=client, user=user, outcome=outcome,
              event="auth")


def reject(client: str, command: str, reply: object, reason: str, queueId: str = "-") -> None:
    """A refusal: ``reply`` is what the client saw, ``reason`` the private why."""
    _log.info(
        "reject id={queueId} client={client} command={command!r} reply={reply!r} reason={reason!r}",
        queueId=queueId, client=client, command=command, reply=str(reply), reason=reason, event="reject")


def queued(queueId: str, sender: str, recipients: int, size: int, client: str) -> None:
    _log.info(
        "queued id={queueId} from=<{sender}> nrcpt={recipients} size={size} client={client}",
        queueId=queueId, sender=sender, recipients=recipients, size=size, client=client, event="queued")


def _outcome(result: DeliveryResult) -> dict[str, object]:
    """A delivery result's fields: ``detail`` for people, the reply's parts for programs."""
    reply = result.reply
    return {"recipient": result.recipient, "detail": result.describe(), "code": reply.code,
            "enhanced": reply.enhanced, "text": reply.text, "peer": result.fromPeer, "reason": result.detail}


def delivered(queueId: str, result: DeliveryResult) -> None:
    _log.info("delivered id={queueId} to=<{recipient}> detail={detail!r}",
              queueId=queueId, event="delivered", **_outcome(result))


def deferred(queueId: str, result: DeliveryResult, retryIn: float) -> None:
    _log.info("deferred id={queueId} to=<{recipient}> detail={detail!r} retry_in={retryIn:.0f}s",
              queueId=queueId, retryIn=retryIn, event="deferred", **_outcome(result))


def failed(queueId: str, result: DeliveryResult) -> None:
    _log.info("failed id={queueId} to=<{recipient}> detail={detail!r}",
              queueId=queueId, event="failed", **_outcome(result))


def bounced(queueId: str, sender: str, bounceId: str, actions: str = "failed") -> None:
    """A delivery status notification was queued: ``actions`` are the RFC 3464 actions
    it reports (failed, delayed, delivered, relayed, expanded), comma-separated."""
    _log.info("bounced id={queueId} to=<{sender}> bounce_id={bounceId} actions={actions}",
              queueId=queueId, sender=sender, bounceId=bounceId, actions=actions, event="bounced")


def removed(queueId: str) -> None:
    _log.info("removed id={queueId}", queueId=queueId, event="removed")

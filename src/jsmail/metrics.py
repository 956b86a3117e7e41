"""The gateway's Prometheus series, and the few hooks where no log event says enough.

Most series are counted from the operator log (:mod:`jsmail.ops.observer` watches the
``jsmail.maillog`` events, the delivery process's included).  Four things have no
event, so the code calls a hook here: :func:`replySent` (each SMTP reply),
:func:`checked` (each policy check's answer: an accept is not logged by default),
:func:`committed` (a group commit's latency) and :func:`resolved` (a DNS lookup's).
A hook costs one call and one test while metrics are off.

Any module may import this one: it imports nothing of jsmail, and imports
``prometheus_client`` only when a :class:`Metrics` is made, because that import costs
about 90 ms and ``jsmail-queue`` and ``jsmail-sendmail`` start once per message.

In the delivery process the hooks go to a :class:`Forwarder`, which writes each
measurement as a silent log event (no text) that reaches the parent with the rest of
the child's log; the parent's observer counts it there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: The namespace of the silent events that carry measurements across processes.
NAMESPACE = "jsmail.metrics"

#: Commands counted by name; anything else a client says counts as "other", so a
#: client cannot grow the series without bound.
COMMANDS = frozenset({"CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH", "RSET",
                      "NOOP", "VRFY", "HELP", "QUIT", "EXPN", "TURN", "ETRN"})

DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Label sets a child process's counts may add (see :meth:`Metrics.counted`).
MOST_FORWARDED_SERIES = 10_000
_ENHANCED = re.compile(r"(?:[245]\.\d{1,3}\.\d{1,3})?", re.ASCII)

DNS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Recorder(Protocol):
    """What the hooks call: a :class:`Metrics`, or a :class:`Forwarder` in the delivery process."""

    def reply(self, command: str, code: int, enhanced: str) -> None: ...

    def verdict(self, check: str, verdict: str) -> None: ...

    def commit(self, seconds: float) -> None: ...

    def dns(self, seconds: float) -> None: ...


_recorder: Recorder | None = None


def install(recorder: Recorder | None) -> Recorder | None:
    """Send the hooks to ``recorder`` (None: nowhere); gives the one it replaces."""
    global _recorder
    previous, _recorder = _recorder, recorder
    return previous


def replySent(command: str, code: int, enhanced: str) -> None:
    """smtpd sent a reply to ``command`` ("CONNECT" for the greeting)."""
    if _recorder is not None:
        _recorder.reply(command, code, enhanced)


def checked(check: str, verdict: str) -> None:
    """A policy check (named by its class) answered accept, reject or tempfail."""
    if _recorder is not None:
        _recorder.verdict(check, verdict)


def committed(seconds: float) -> None:
    """A group commit (one ``syncfs``) took ``seconds``."""
    if _recorder is not None:
        _recorder.commit(seconds)


def resolved(seconds: float) -> None:
    """A DNS lookup took ``seconds`` (answered or not)."""
    if _recorder is not None:
        _recorder.dns(seconds)


class Forwarder:
    """The recorder of a child process (delivery, or receiving with ``[smtp]
    processes``): each measurement becomes a log event without text, which the parent
    republishes and counts.  Replies and check answers, several per message, are
    counted here and sent as one event of counts at most once a second (``flush``,
    called by whoever made this with a reactor)."""

    def __init__(self) -> None:
        self._log = Logger(namespace=NAMESPACE)
        self._counts: dict[tuple[str, ...], int] = {}

    def reply(self, command: str, code: int, enhanced: str) -> None:
        key = ("reply", command if command in COMMANDS else "other", str(code), enhanced)
        self._counts[key] = self._counts.get(key, 0) + 1

    def verdict(self, check: str, verdict: str) -> None:
        key = ("verdict", check, verdict)
        self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self) -> None:
        """Send what was counted since the last flush, as one event."""
        if self._counts:
            counts, self._counts = self._counts, {}
            self._log.info(None, metric="counts", counts=[[*key, n] for key, n in counts.items()])

    def commit(self, seconds: float) -> None:
        self._log.info(None, metric="commit", seconds=seconds)

    def dns(self, seconds: float) -> None:
        self._log.info(None, metric="dns", seconds=seconds)


class Metrics:
    """Every series, on a registry of its own (so that two gateways in one process, as
    in tests, count apart).  Label children are cached, so counting an event is one
    dictionary lookup and one increment."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Counter("jsmail_smtpd_connections_total", "SMTP sessions accepted, by listener",
                                   ["listener"], registry=r)
        self.replies = Counter("jsmail_smtpd_replies_total", "SMTP replies sent, by command and reply code",
                               ["command", "code", "enhanced"], registry=r)
        self.messages = Counter("jsmail_smtpd_messages_total",
                                "Messages received: queued, or refused (rejected, tempfailed) once their content came",
                                ["listener", "outcome"], registry=r)
        self.tls = Counter("jsmail_smtpd_tls_total", "TLS handshakes with SMTP clients, by protocol version "
                           "(\"failed\" for handshakes that failed)", ["version"], registry=r)
        self.authFailures = Counter("jsmail_auth_failures_total", "Failed or refused AUTH attempts", registry=r)
        self.verdicts = Counter("jsmail_policy_verdicts_total", "Policy check answers, by check and verdict",
                                ["check", "verdict"], registry=r)
        self.attempts = Counter("jsmail_delivery_attempts_total", "Delivery results per recipient, by agent and "
                                "result (delivered, temporary, permanent)", ["agent", "result"], registry=r)
        self.deliverySeconds = Histogram("jsmail_delivery_seconds", "Time one agent took over one delivery attempt",
                                         ["agent"], buckets=DELIVERY_BUCKETS, registry=r)
        self.commitSeconds = Histogram("jsmail_commit_seconds", "Group commit (syncfs) latency",
                                       buckets=COMMIT_BUCKETS, registry=r)
        self.dnsSeconds = Histogram("jsmail_dns_seconds", "DNS lookup latency", buckets=DNS_BUCKETS, registry=r)
        self.remoteTLS = Counter("jsmail_remote_tls_total", "Sessions with remote servers, by TLS mode asked for "
                                 "and what came of it (tls, plaintext, failed)", ["mode", "outcome"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, series: Any, *labels: str) -> Any:
        """``series.labels(*labels)``, made once."""
        key = (id(series), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = series.labels(*labels)
        return child

    def reply(self, command: str, code: int, enhanced: str) -> None:
        key = ("reply", command if command in COMMANDS else "other", code, enhanced)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.replies.labels(key[1], str(code), enhanced or "")
        child.inc()

    def verdict(self, check: str, verdict: str) -> None:
        self.child(self.verdicts, check, verdict).inc()

    def counted(self, counts: list[list[Any]]) -> None:
        """A child's :meth:`Forwarder.flush`: replies and verdicts, each with how many.
        A child is trusted no further than its labels' shapes: a reply code of three
        digits, an enhanced code of RFC 3463's form, names of at most 64 characters,
        and no new series past :data:`MOST_FORWARDED_SERIES`, so no child can grow the
        registry without bound."""
        for *key, n in counts:
            if not isinstance(n, int) or n < 1 or not all(isinstance(k, str) and len(k) <= 64 for k in key):
                continue
            if key[:1] == ["reply"] and len(key) == 4 and len(key[2]) == 3 and key[2].isdigit() \
                    and _ENHANCED.fullmatch(key[3]):
                labels: tuple[Any, ...] = (self.replies, key[1] if key[1] in COMMANDS else "other", key[2], key[3])
            elif key[:1] == ["verdict"] and len(key) == 3:
                labels = (self.verdicts, key[1], key[2])
            else:
                continue
            if (id(labels[0]), *labels[1:]) in self._children or len(self._children) < MOST_FORWARDED_SERIES:
                self.child(*labels).inc(n)

    def commit(self, seconds: float) -> None:
        self.commitSeconds.observe(seconds)

    def dns(self, seconds: float) -> None:
        self.dnsSeconds.observe(seconds)

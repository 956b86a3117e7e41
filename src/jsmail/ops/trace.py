"""``jsmail trace``: what happened to one message, in order, from the operator log.

It reads twistd's log, text or JSON lines (``--log-format json``), each file with its
rotated predecessors (``twistd.log.2``, ``twistd.log.1``, then ``twistd.log``), keeps
the ``jsmail.maillog`` events, and follows a message: its SMTP session (client, TLS,
AUTH, the checks' lines, refusals) through the session id, then its queue id
(each delivery attempt, the remote host and TLS, each recipient's reply, retries,
bounces) to its end.  A message is found by queue id, session id, Message-ID or
recipient.

A check's accept has a line only when it says something (a reason, something added)
or under ``[log] checks = "all"``; the trace shows the lines there are, and needs none
of them to join a session to its message (``queued`` names both).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Iterable, Iterator, TextIO

from jsmail.maillog import shown

_TEXT_LINE = re.compile(r"^(\S+) \[jsmail\.maillog#\w+\] ([\w-]+)(?: (.*))?$")
_FIELD = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|<[^>]*>|\S*)""")
#: Text field names that differ from the event's keys.
_KEYS = {"id": "queueId", "from": "sender", "to": "recipient", "nrcpt": "recipients", "retry_in": "retryIn",
         "bounce_id": "bounceId", "message_id": "messageId"}
_SESSION_EVENTS = ("connect", "tls", "tls-failed", "auth", "check", "reject", "queued")
_QUEUE_EVENTS = ("check", "attempt", "remote", "delivered", "deferred", "failed", "bounced", "removed")


@dataclass
class Event:
    """One operator-log event: its name, when (as logged), its fields and its place."""

    name: str
    when: str
    fields: dict[str, Any]
    position: int = 0

    def get(self, key: str, default: Any = "") -> Any:
        return self.fields.get(key, default)


def _value(raw: str) -> Any:
    if raw[:1] in ("'", '"'):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw[1:-1]
    if raw.startswith("<") and raw.endswith(">"):
        return raw[1:-1]
    return raw


def parseText(line: str) -> Event | None:
    """An operator-log event from a text log line (``event key=value ...``), or None."""
    match = _TEXT_LINE.match(line.rstrip("\n"))
    if match is None:
        return None
    when, name, rest = match.group(1), match.group(2), match.group(3) or ""
    fields: dict[str, Any] = {}
    words, last = [], 0
    for found in _FIELD.finditer(rest):
        words.append(rest[last:found.start()].strip())
        fields[_KEYS.get(found.group(1), found.group(1))] = _value(found.group(2))
        last = found.end()
    words.append(rest[last:].strip())
    if name == "tls":
        fields["info"] = " ".join(w for w in words if w)  # "TLSv1.3 with cipher ..." stands bare
    return Event(name, when, fields)


def parseJSON(line: str) -> Event | None:
    """An operator-log event from a JSON log line, or None."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("log_namespace") != "jsmail.maillog" or "event" not in event:
        return None
    when = datetime.fromtimestamp(float(event.get("log_time", 0)), UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
    return Event(str(event["event"]), when, event)


def logFiles(path: str) -> list[str]:
    """``path`` with its rotated predecessors, oldest first."""
    rotated = [p for p in glob.glob(glob.escape(path) + ".*") if p.rsplit(".", 1)[1].isdigit()]
    return sorted(rotated, key=lambda p: -int(p.rsplit(".", 1)[1])) + ([path] if os.path.exists(path) else [])


def readEvents(files: Iterable[TextIO]) -> list[Event]:
    """Every operator-log event in the files, in order."""
    events: list[Event] = []
    for f in files:
        for line in f:
            event = parseJSON(line) if line.startswith("{") else parseText(line)
            if event is not None:
                event.position = len(events)
                events.append(event)
    return events


@dataclass
class Selection:
    """What to trace: any of a queue or session id, a Message-ID, a recipient."""

    ident: str = ""
    messageId: str = ""
    recipient: str = ""


@dataclass
class Trace:
    """The events of one message (or of one session that queued nothing)."""

    queueId: str
    session: str
    events: list[Event] = field(default_factory=list)


def _bare(messageId: str) -> str:
    return messageId.strip().removeprefix("<").removesuffix(">")


def _targets(events: list[Event], selection: Selection) -> tuple[list[str], list[str]]:
    """The queue ids, and the session ids of sessions that queued nothing, asked for."""
    queueIds: list[str] = []
    sessions: list[str] = []
    recipient = selection.recipient.lower()
    for e in events:
        queueId, session = e.get("queueId", "-"), e.get("session", "-")
        if selection.ident and queueId == selection.ident:
            queueIds.append(queueId)
        if e.name == "queued" and selection.ident and session == selection.ident:
            queueIds.append(queueId)
        if e.name == "queued" and selection.messageId and _bare(e.get("messageId")) == _bare(selection.messageId):
            queueIds.append(queueId)
        if recipient and e.name in ("delivered", "deferred", "failed") and e.get("recipient").lower() == recipient:
            queueIds.append(queueId)
        if recipient and e.name == "check" and e.get("phase") == "rcpt" and e.get("argument").lower() == recipient:
            sessions.append(session)
    if selection.ident and not queueIds and any(e.get("session") == selection.ident for e in events):
        sessions.append(selection.ident)
    return list(dict.fromkeys(queueIds)), list(dict.fromkeys(sessions))


def _sessionPart(events: list[Event], session: str, upTo: int) -> list[Event]:
    """The session's events that concern the message queued at ``upTo``: the session's
    own (connect, TLS, AUTH, HELO checks) and those since its previous message."""
    mine = [e for e in events if e.get("session") == session and e.name in _SESSION_EVENTS and e.position <= upTo]
    previous = max((e.position for e in mine if e.name == "queued" and e.position < upTo), default=-1)
    return [e for e in mine if e.position > previous or e.name in ("connect", "tls", "tls-failed", "auth")
            or (e.name == "check" and e.get("phase") in ("connect", "helo"))]


def trace(events: list[Event], selection: Selection) -> list[Trace]:
    """The traces asked for, in the order their messages or sessions appear."""
    queueIds, sessions = _targets(events, selection)
    traces = []
    for queueId in queueIds:
        queued = next((e for e in events if e.name == "queued" and e.get("queueId") == queueId), None)
        session = queued.get("session", "-") if queued is not None else "-"
        chosen = {e.position: e for e in events if e.get("queueId") == queueId and e.name in _QUEUE_EVENTS}
        if queued is not None and session != "-":
            chosen.update((e.position, e) for e in _sessionPart(events, session, queued.position))
        elif queued is not None:
            chosen[queued.position] = queued
        traces.append(Trace(queueId, session, [chosen[p] for p in sorted(chosen)]))
    for session in sessions:
        if any(t.session == session for t in traces):
            continue
        traces.append(Trace("-", session, [e for e in events if e.get("session") == session]))
    return traces


def _describe(e: Event) -> str:
    """One line for one event."""
    g = e.get
    if e.name == "connect":
        return f"session {g('session')}: {g('client')} connected to the {g('listener')} listener"
    if e.name == "tls":
        return f"  TLS: {g('info')}"
    if e.name == "tls-failed":
        return f"  TLS handshake failed: {g('error')}"
    if e.name == "auth":
        return f"  AUTH as {g('user')!r}: {g('outcome')}"
    if e.name == "check":
        about = f" {g('argument')}" if g("argument") else ""
        if g("verdict") != "accept":
            why = f": {g('reply')} ({g('reason')})"
        else:
            why = f" ({g('reason')})" if g("reason") else ""
        return f"  check {g('check')} at {g('phase').upper()}{about}: {g('verdict')}{why}"
    if e.name == "reject":
        return f"  refused {g('command')}: {g('reply')} ({g('reason')})"
    if e.name == "queued":
        messageId = f", Message-ID {g('messageId')}" if g("messageId") else ""
        return (f"queued as {g('queueId')}: from <{g('sender')}>, {g('recipients')} recipient(s), "
                f"{g('size')} octets{messageId}")
    if e.name == "attempt" and g("agent") == "session":
        return (f"delivered during the SMTP session, before its 250 ({float(g('seconds', 0)):.3f} s from the "
                f"final dot): never waited in the queue")
    if e.name == "attempt":
        return (f"attempt by the {g('agent')} agent ({float(g('seconds', 0)):.3f} s): {g('delivered')} delivered, "
                f"{g('temporary')} temporary failure(s), {g('permanent')} permanent failure(s)")
    if e.name == "remote":
        tls = f", {g('tls')}" if g("tls") else ""
        return f"  remote {g('host')} [{g('address')}]:{g('port')}, TLS mode {g('mode')}: {g('outcome')}{tls}"
    if e.name == "deferred":
        retry = float(str(g("retryIn", 0)).rstrip("s"))  # the text says "300s"
        return f"  deferred <{g('recipient')}>: {g('detail')}; retry in {retry:.0f} s"
    if e.name in ("delivered", "failed"):
        return f"  {e.name} <{g('recipient')}>: {g('detail')}"
    if e.name == "bounced":
        return f"bounce to <{g('sender')}> queued as {g('bounceId')}"
    if e.name == "removed":
        return "removed from the queue"
    return f"{e.name} {g('detail')}"


def _outcome(t: Trace) -> str:
    last: dict[str, str] = {}
    for e in t.events:
        if e.name in ("delivered", "deferred", "failed"):
            last[e.get("recipient")] = e.name
    if t.queueId == "-":
        return "outcome: nothing queued in this session"
    if not last:
        return "outcome: no delivery attempt logged yet"
    ended = "left the queue" if any(e.name == "removed" for e in t.events) else "still queued"
    states = ", ".join(f"<{r}> {s}" for r, s in last.items())
    return f"outcome: {ended}; {states}"


def run(selection: Selection, paths: list[str], out: TextIO) -> int:
    """``jsmail trace``: print the traces; 1 when nothing matched, 2 when no log could be read."""
    files = [name for path in paths for name in logFiles(path)]
    if not files:
        print(f"jsmail trace: no log file {', '.join(paths)}", file=out)
        return 2
    opened = [open(name, encoding="utf-8", errors="replace") for name in files]
    try:
        traces = trace(readEvents(opened), selection)
    finally:
        for f in opened:
            f.close()
    if not traces:
        print(f"jsmail trace: nothing about {selection.ident or selection.messageId or selection.recipient} "
              f"in {', '.join(files)}", file=out)
        return 1
    for line in render(traces):
        print(shown(line), file=out)  # JSON logs keep addresses and replies as they came
    return 0


def render(traces: list[Trace]) -> Iterator[str]:
    """The lines ``jsmail trace`` prints."""
    for number, t in enumerate(traces):
        if number:
            yield ""
        yield f"== message {t.queueId}" if t.queueId != "-" else f"== session {t.session}"
        for e in t.events:
            yield f"{e.when}  {_describe(e)}"
        yield _outcome(t)

"""The status page: one plain HTML page, read-only, with inline SVG charts (nothing to
build, nothing fetched from elsewhere).  It shows what an operator asks first: the
queue by state and age, the last deliveries and refusals, throughput and delivery
latency over the last hour, the listeners and when the TLS certificate expires.

No secrets: no settings are shown, and of deliveries and refusals only the public
replies, not the private reasons the operator log keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, Sequence

from jsmail.ops.certinfo import Certificate
from jsmail.ops.observer import MaillogObserver, Minute
from jsmail.ops.queuestate import AGES, STATES, QueueState

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.warn { color: #a60; } .bad { color: #b00; font-weight: bold; }
svg { background: #fafafa; border: 1px solid #ddd; } .legend span { margin-right: 1em; }
"""


@dataclass
class StatusInfo:
    """Everything one rendering of the page shows."""

    hostname: str
    version: str
    started: float
    queue: QueueState
    observer: MaillogObserver
    listeners: Sequence[tuple[str, str, str]] = ()  # kind, endpoint description, bound address
    certificate: Certificate | None = None
    now: float = field(default_factory=time.time)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def chart(title: str, series: Sequence[tuple[str, str, Sequence[float]]], unit: str, ident: str,
          width: int = 600, height: int = 140) -> str:
    """A line chart as inline SVG: each series is (name, colour, values), drawn over the
    same x axis (the last hour, one point a minute)."""
    top = max([v for _, _, values in series for v in values] + [0.0]) or 1.0
    pad, inner = 30, height - 40
    lines = []
    for name, colour, values in series:
        step = (width - 2 * pad) / max(len(values) - 1, 1)
        points = " ".join(f"{pad + i * step:.1f},{10 + inner - v / top * inner:.1f}" for i, v in enumerate(values))
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
                     f"<title>{escape(name)}</title></polyline>")
    legend = "".join(f'<span style="color:{colour}">&#9632; {escape(name)}</span>' for name, colour, _ in series)
    return (f'<figure id="{ident}"><figcaption>{escape(title)}</figcaption>'
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<line x1="{pad}" y1="{10 + inner}" x2="{width - pad}" y2="{10 + inner}" stroke="#999"/>'
            f'<text x="{pad}" y="{height - 8}" font-size="11">-60 min</text>'
            f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">now</text>'
            f'<text x="{pad + 4}" y="20" font-size="11">{top:.3g} {escape(unit)}</text>'
            + "".join(lines) + f'</svg><div class="legend">{legend}</div></figure>')


def _queueTable(queue: QueueState) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for _, label in AGES)
    rows = "".join(f"<tr><td>{state}</td><td class=n>{queue.counts[state]}</td>"
                   + "".join(f"<td class=n>{n}</td>" for n in queue.byAge[state]) + "</tr>" for state in STATES)
    return (f'<table id="queue"><tr><th>state</th><th>messages</th>{head}</tr>{rows}'
            f"<tr><th>all</th><td class=n>{queue.total}</td><td colspan={len(AGES)}>oldest: "
            f"{_age(queue.oldest) if queue.total else '-'}</td></tr></table>")


def _rows(entries: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not entries:
        return f"<tr><td colspan={len(columns) + 1}>none yet</td></tr>"
    return "".join("<tr><td>" + _when(e["time"]) + "</td>" + "".join(f"<td>{escape(str(e.get(c, '')))}</td>"
                                                                       for c in columns) + "</tr>"
                   for e in reversed(entries))


def _certificate(certificate: Certificate | None, now: float) -> str:
    if certificate is None:
        return "<p>No TLS certificate.</p>"
    if certificate.notAfter is None:
        return f'<p class="bad">TLS certificate {escape(certificate.path)}: {escape(certificate.problem)}</p>'
    days = (certificate.notAfter - now) / 86400
    level = "bad" if days < 7 else "warn" if days < 21 else "ok"
    return (f'<p id="certificate" class="{level}">TLS certificate for {escape(certificate.subject)} '
            f"({escape(certificate.path)}) expires {_when(certificate.notAfter)} UTC: "
            f"{'expired' if days < 0 else f'in {days:.0f} days'}.</p>")


def renderStatus(info: StatusInfo) -> bytes:
    """The whole page."""
    observer, now = info.observer, info.now
    hour: list[Minute] = observer.history.lastHour(now)
    throughput = chart("Throughput over the last hour, per minute",
                       [("messages queued", "#1f6fb4", [m.queued for m in hour]),
                        ("recipients delivered", "#2a9d3a", [m.delivered for m in hour]),
                        ("recipients deferred or failed", "#c0392b", [m.failed for m in hour])],
                       "per min", "throughput")
    latency = chart("Delivery latency over the last hour (one agent's attempt)",
                    [("mean", "#1f6fb4", [m.latencyMean for m in hour]),
                     ("max", "#e67e22", [m.latencyMax for m in hour])], "s", "latency")
    listeners = "".join(f"<tr><td>{escape(k)}</td><td>{escape(d)}</td><td>{escape(w)}</td></tr>"
                        for k, d, w in info.listeners)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>jsmail on {escape(info.hostname)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body><h1>jsmail {escape(info.version)} on {escape(info.hostname)}</h1>
<p>As of {_when(now)} UTC; up {_age(now - info.started)}.  Metrics for Prometheus: <a href="metrics">/metrics</a>.</p>
<h2>Queue</h2>{_queueTable(info.queue)}
<h2>Last hour</h2>{throughput}{latency}
<h2>Recent deliveries</h2>
<table id="deliveries"><tr><th>time (UTC)</th><th>queue id</th><th>outcome</th><th>recipient</th><th>code</th>
<th>status</th><th>reply</th><th>remote</th></tr>
{_rows(list(observer.deliveries), ("queueId", "event", "recipient", "code", "enhanced", "text", "remoteMTA"))}</table>
<h2>Recent refusals</h2>
<table id="refusals"><tr><th>time (UTC)</th><th>client</th><th>listener</th><th>command</th><th>reply</th></tr>
{_rows(list(observer.refusals), ("client", "listener", "command", "reply"))}</table>
<h2>Listeners</h2>
<table id="listeners"><tr><th>kind</th><th>endpoint</th><th>listening on</th></tr>{listeners}</table>
{_certificate(info.certificate, now)}
</body></html>
"""
    return page.encode("utf-8")

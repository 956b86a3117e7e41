"""Plain-text tables of the benchmark's results."""

from __future__ import annotations

from collections.abc import Collection

from memory import MemoryResult

Cell = tuple[int, int]
"""(message payload size in bytes, concurrent sessions)."""

Rates = dict[str, dict[Cell, float | None]]
"""Server name -> cell -> median messages per second (None: no good run)."""

REFERENCE = "jsmail"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])]
                     + [line(row) for row in rows])


def size_label(size: int) -> str:
    """1024 -> '1 KiB'."""
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or value <= 0:
        return "-"
    ratio = reference / value
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.1g}"


def _peers(names: list[str]) -> list[str]:
    return [n for n in names if n != REFERENCE] if REFERENCE in names else []


def rate_table(rates: Rates, cells: list[Cell], marked: Collection[str] = ()) -> str:
    """Messages/s per cell and server, then jsmail/peer ratios.

    Servers in ``marked`` get a ``*`` after their name.
    """
    names = list(rates)
    peers = _peers(names)
    headers = (["size", "sessions"] + [n + ("*" if n in marked else "") for n in names]
               + [f"{REFERENCE}/{p}" for p in peers])
    rows = []
    for size, sessions in cells:
        row = [size_label(size), str(sessions)]
        row += [_number(rates[n].get((size, sessions))) for n in names]
        row += [_ratio(rates[p].get((size, sessions)), rates[REFERENCE].get((size, sessions)))
                for p in peers]
        rows.append(row)
    return table(headers, rows)


def memory_table(results: dict[str, MemoryResult]) -> str:
    """Memory before/after and per idle session, per server."""
    reference = results.get(REFERENCE)
    headers = ["server", "sessions", "RSS before MiB", "RSS after MiB",
               "RSS KiB/session", "PSS KiB/session"]
    if reference:
        headers.append(f"{REFERENCE}/server (RSS)")
    rows = []
    for name, r in results.items():
        row = [name, str(r.sessions), _number(r.rss_before / 1024, 1),
               _number(r.rss_after / 1024, 1), _number(r.rss_per_session, 1),
               _number(r.pss_per_session, 1)]
        if reference:
            row.append("-" if name == REFERENCE
                       else _ratio(r.rss_per_session, reference.rss_per_session))
        rows.append(row)
    return table(headers, rows)

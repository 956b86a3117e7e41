"""A qmail control directory read into jsmail's configuration.

The files that apply to jsmail are read with qmail's rules (qmail-interfaces
reference, section 2.1): single-value files use their first line with trailing white
space stripped; number files keep the default unless the first line starts with a
digit; list files skip empty lines and ``#`` comments.  Each file maps onto one
:class:`jsmail.config.Config` field:

================  ===========================  =========================================
file              setting                      how
================  ===========================  =========================================
me                server.hostname              the host name (and the default of locals)
locals            server.domains               domains delivered here (default: me)
databytes         smtp.max_message_size        0 means no limit of qmail's own: jsmail's
                                               default stays
timeoutsmtpd      smtp.idle_timeout            seconds (values below 1 become 1)
timeoutconnect    remote.connect_timeout       seconds
queuelifetime     queue.give_up                seconds
concurrencyremote queue.concurrency            deliveries at once
smtproutes        remote.routes / smarthost    ``domain:relay[:port]``; an empty domain is
                                               the smarthost
================  ===========================  =========================================

Other qmail control files (rcpthosts, virtualdomains, badmailfrom, ...) have no jsmail
setting yet and are ignored.  A setting given both here and in the TOML file is an
error naming both places.
"""

from __future__ import annotations

import os
from typing import Any

from jsmail.route import Route


def _lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip(" \t\r\n") for line in f]
    except FileNotFoundError:
        return None


def readLine(directory: str, name: str) -> str | None:
    """First line, trailing white space stripped; None when the file is absent."""
    lines = _lines(os.path.join(directory, name))
    return None if lines is None else (lines[0] if lines else "")


def readInt(directory: str, name: str) -> int | None:
    """Leading digits of the first line; None (the default stays) otherwise."""
    line = readLine(directory, name)
    digits = ""
    for c in line or "":
        if not c.isdigit():
            break
        digits += c
    return int(digits) if digits else None


def readList(directory: str, name: str) -> list[str] | None:
    lines = _lines(os.path.join(directory, name))
    return None if lines is None else [line for line in lines if line and not line.startswith("#")]


def readControlDirectory(directory: str) -> dict[str, tuple[Any, str]]:
    """Config field -> (value, the file it came from), for the files present."""
    found: dict[str, tuple[Any, str]] = {}

    def put(field: str, value: Any, name: str) -> None:
        if value is not None:
            found[field] = (value, os.path.join(directory, name))

    me = readLine(directory, "me")
    put("hostname", me, "me")
    locals_ = readList(directory, "locals")
    put("domains", locals_ if locals_ is not None else ([me] if me else None), "locals" if locals_ is not None else "me")
    databytes = readInt(directory, "databytes")
    put("maxMessageSize", databytes or None, "databytes")
    timeout = readInt(directory, "timeoutsmtpd")
    put("idleTimeout", None if timeout is None else float(max(timeout, 1)), "timeoutsmtpd")
    connect = readInt(directory, "timeoutconnect")
    put("connectTimeout", None if connect is None else float(max(connect, 1)), "timeoutconnect")
    lifetime = readInt(directory, "queuelifetime")
    put("giveUp", None if lifetime is None else float(max(lifetime, 1)), "queuelifetime")
    concurrency = readInt(directory, "concurrencyremote")
    put("deliveryConcurrency", concurrency or None, "concurrencyremote")
    routes = readList(directory, "smtproutes")
    if routes is not None:
        byDomain: dict[str, Route] = {}
        for line in routes:
            domain, colon, relay = line.partition(":")
            if not colon:
                continue  # qmail ignores lines without a colon
            host, _, port = relay.partition(":")
            byDomain[domain.lower()] = Route(host=host, port=int(port) if port.isdigit() else 25, domain=domain.lower())
        smarthost = byDomain.pop("", None)
        if smarthost is not None and smarthost.host:
            put("smarthost", f"{smarthost.host}:{smarthost.port}", "smtproutes")
        put("routes", [{"domain": r.domain, "host": r.host, "port": r.port} for r in byDomain.values() if r.host],
            "smtproutes")
    return found

"""A qmail control directory read into jsmail's configuration.

The files that apply to jsmail are read with qmail's rules (qmail-interfaces
reference, section 2.1): single-value files use their first line with trailing white
space stripped; number files keep the default unless the first line starts with a
digit; list files skip empty lines and ``#`` comments.  Each file maps onto one
setting of :mod:`jsmail.config`, named as in TOML:

=================  ============================  =====================================
file               setting                       how
=================  ============================  =====================================
me                 server.hostname               the host name (and the default of the
                                                 host-name files below)
locals             server.domains                domains delivered here (default: me)
rcpthosts          smtp.rcpt_hosts               more domains taken at RCPT (an entry
                                                 ``.d`` takes every subdomain of d)
morercpthosts.cdb  smtp.more_rcpt_hosts          the same, from the CDB qmail-newmrh
                                                 makes; only read if rcpthosts exists
badmailfrom        smtp.bad_mail_from            senders refused (``@domain`` kept)
smtpgreeting       smtp.greeting                 the 220 greeting's text
databytes          smtp.max_message_size         0 means no limit of qmail's own:
                                                 jsmail's default stays
timeoutsmtpd       smtp.idle_timeout             seconds (values below 1 become 1)
helohost           remote.helo_host              the EHLO name (default: me)
timeoutconnect     remote.connect_timeout        seconds
timeoutremote      remote.reply_timeout          seconds to wait for each reply
smtproutes         remote.routes / smarthost     ``domain:relay[:port]``; an empty
                                                 domain is the smarthost
queuelifetime      queue.give_up                 seconds
concurrencyremote  queue.concurrency             deliveries at once
concurrencylocal   local.concurrency             local deliveries at once (0, qmail's
                                                 "hold", is not supported: ignored)
bouncefrom         queue.bounce_from             local part of the bounce From:
bouncehost         queue.bounce_host             host of the bounce From: (default: me)
doublebounceto,    server.postmaster             ``<doublebounceto>@<doublebouncehost>``
doublebouncehost                                 (defaults postmaster, me)
virtualdomains     local.virtual_domains         ``domain:prepend``: user@domain is
                                                 delivered as local ``prepend-user``
envnoathost        local.noathost                host added to forward and alias
                                                 targets without ``@`` (default: the
                                                 first of locals, me without it)
=================  ============================  =====================================

Not read: ``percenthack`` (jsmail never routes ``user%host@domain`` anywhere but the
local mailbox it names) and qmail-inject's ``defaultdomain``, ``defaulthost``,
``plusdomain`` and ``idhost`` (jsmail-sendmail completes headers with the host name).

A host-name file that is absent falls back to ``me`` where qmail's does, which here
means the setting keeps its default (which is the host name).  A setting given both
here and in the TOML file is an error naming both places.
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
    """``"section.key"`` -> (value, the file it came from), for the files present."""
    found: dict[str, tuple[Any, str]] = {}

    def put(setting: str, value: Any, name: str) -> None:
        if value is not None:
            found[setting] = (value, os.path.join(directory, name))

    me = readLine(directory, "me")
    put("server.hostname", me, "me")
    locals_ = readList(directory, "locals")
    put("server.domains", locals_ if locals_ is not None else ([me] if me else None),
        "locals" if locals_ is not None else "me")
    databytes = readInt(directory, "databytes")
    put("smtp.max_message_size", databytes or None, "databytes")
    timeout = readInt(directory, "timeoutsmtpd")
    put("smtp.idle_timeout", None if timeout is None else float(max(timeout, 1)), "timeoutsmtpd")
    connect = readInt(directory, "timeoutconnect")
    put("remote.connect_timeout", None if connect is None else float(max(connect, 1)), "timeoutconnect")
    lifetime = readInt(directory, "queuelifetime")
    put("queue.give_up", None if lifetime is None else float(max(lifetime, 1)), "queuelifetime")
    concurrency = readInt(directory, "concurrencyremote")
    put("queue.concurrency", concurrency or None, "concurrencyremote")
    for name, fieldName in (("smtpgreeting", "smtp.greeting"), ("helohost", "remote.helo_host"),
                            ("bouncefrom", "queue.bounce_from"), ("bouncehost", "queue.bounce_host"),
                            ("envnoathost", "local.noathost")):
        put(fieldName, readLine(directory, name) or None, name)
    for name, fieldName in (("badmailfrom", "smtp.bad_mail_from"), ("virtualdomains", "local.virtual_domains")):
        entries = readList(directory, name)
        if name == "virtualdomains" and entries is not None:
            entries = [line for line in entries if ":" in line]  # qmail ignores lines without a colon
        put(fieldName, entries, name)
    rcpthosts = readList(directory, "rcpthosts")
    put("smtp.rcpt_hosts", rcpthosts, "rcpthosts")
    if rcpthosts is not None and os.path.exists(os.path.join(directory, "morercpthosts.cdb")):
        put("smtp.more_rcpt_hosts", os.path.join(directory, "morercpthosts.cdb"), "morercpthosts.cdb")
    remote = readInt(directory, "timeoutremote")
    put("remote.reply_timeout", None if remote is None else float(max(remote, 1)), "timeoutremote")
    local = readInt(directory, "concurrencylocal")
    put("local.concurrency", local or None, "concurrencylocal")
    bounceTo, bounceHost = readLine(directory, "doublebounceto"), readLine(directory, "doublebouncehost")
    if bounceTo or bounceHost:
        put("server.postmaster", f"{bounceTo or 'postmaster'}@{bounceHost or me or 'localhost'}",
            "doublebounceto" if bounceTo else "doublebouncehost")
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
            put("remote.smarthost", f"{smarthost.host}:{smarthost.port}", "smtproutes")
        put("remote.routes",
            [{"domain": r.domain, "host": r.host, "port": r.port} for r in byDomain.values() if r.host], "smtproutes")
    return found

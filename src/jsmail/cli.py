"""The ``jsmail`` command: administration beside the daemon.

- ``jsmail passwd USER`` adds or changes an AUTH user in the hashed password file
  (``DATA/passwd`` by default, which the running daemon re-reads when it changes).
- ``jsmail queue list`` shows each queued message like ``mailq``: id, age, size,
  sender, and each recipient with its state and last error; ``jsmail queue show ID``
  adds the header section; ``--json`` gives the same as JSON.
- ``jsmail queue flush`` asks the running delivery process to retry everything now,
  through its wake-up FIFO ``DATA/queue/trigger`` (:mod:`jsmail.queue.trigger`).
- ``jsmail queue hold|release|delete ID`` move a message to ``queue/hold/`` and back,
  or remove it; the scheduler reads each message afresh before every attempt.
- ``jsmail queue requeue [ID...]`` starts the retry schedule of messages afresh (all,
  by default) and flushes.
- ``jsmail dkim keygen --domain D --selector S`` writes a new DKIM private key
  (``DIR/D.S.key``, mode 0600) and prints the TXT record that publishes it.
- ``jsmail trace ID`` (or ``--message-id``, ``--recipient``) tells from the log what
  happened to a message (:mod:`jsmail.ops.trace`).
- ``jsmail check`` checks a configuration and what it needs, for monitoring
  (:mod:`jsmail.ops.check`).

The data directory (and the password file) come from the gateway's configuration
(``--config``, ``$JSMAIL_CONFIG`` or ``/etc/jsmail/jsmail.toml``, as jsmail-sendmail
finds it), with ``--data`` or ``$JSMAIL_DATA`` taking the data directory's place; with
neither, ``./jsmail-data``.  ``--json`` makes every queue command print
JSON.  A directory that holds no queue, or one this user may not read, is an error
(exit 1) with a one-line reason, never an empty list.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time

from jsmail import __version__
from jsmail.address import normaliseDomain
from jsmail.auth import removeUser, setPassword
from jsmail.config import ConfigError, loadConfig
from jsmail.datadir import DEFAULT_CONFIG, dataDirectory
from jsmail.error import SMTPReplyError
from jsmail.headers import readHeader
from jsmail.interfaces import NotQueued
from jsmail.maillog import shown
from jsmail.policy.dkim import keyRecord, writeNewKey, zoneEntry
from jsmail.queue.admin import QueueEntry, listQueue, moveEntry, openEntry, readQueueEntry, requeueEntry, wakeDelivery
from jsmail.send.dsn import MAX_RETURNED_HEADERS


def _readPassword(prompt: bool) -> str:
    if not prompt:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("jsmail passwd: the passwords differ; nothing changed")
    return first


class Refused(Exception):
    """What a command cannot do, said in one line (exit status 1)."""


def _settings(arguments: argparse.Namespace) -> tuple[str, str]:
    """The data directory and the password file the gateway uses, found as
    jsmail-sendmail finds them: the configuration from ``--config``, else
    ``$JSMAIL_CONFIG``, else :data:`~jsmail.datadir.DEFAULT_CONFIG` if this user
    may read it; the data directory from ``--data`` or ``$JSMAIL_DATA`` over the
    configuration's; with neither, ``./jsmail-data``."""
    path = arguments.config or os.environ.get("JSMAIL_CONFIG")
    if not path and os.access(DEFAULT_CONFIG, os.R_OK):
        path = DEFAULT_CONFIG
    data = arguments.data or os.environ.get("JSMAIL_DATA")
    if path:
        config = loadConfig(path, {"server.data": data} if data else {})
        return config.server.dataDir, config.auth.passwordFile
    data = dataDirectory(data)
    return data, os.path.join(data, "passwd")


def _queue(arguments: argparse.Namespace) -> str:
    """The queue directory; a directory without one is refused (a wrong ``--data``
    must not look like an empty queue)."""
    directory = os.path.join(_settings(arguments)[0], "queue")
    active = os.path.join(directory, "active")
    try:
        os.stat(active)
        readable = os.access(active, os.R_OK | os.X_OK)
    except PermissionError:
        readable = False
    except FileNotFoundError:
        raise Refused(f"no queue in {directory} (give the gateway's --config, or --data)") from None
    if not readable:
        raise Refused(f"cannot read the queue {directory}: permission denied (run as the gateway's user)")
    return directory


def _say(arguments: argparse.Namespace, text: str, **fields: object) -> None:
    """One result, as a line of text or (``--json``) as a JSON object."""
    print(json.dumps(fields) if getattr(arguments, "json", False) else text)


def passwd(arguments: argparse.Namespace) -> int:
    path = arguments.file or _settings(arguments)[1]
    if arguments.delete:
        try:
            removed = removeUser(path, arguments.user)
        except OSError as e:
            raise Refused(f"{path}: {e.strerror}; nothing changed") from None
        if not removed:
            raise Refused(f"no user {arguments.user} in {path}; nothing changed")
        print(f"jsmail passwd: {arguments.user} deleted from {path}")
        return 0
    password = _readPassword(sys.stdin.isatty())
    if not password:
        print("jsmail passwd: empty password; nothing changed", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        setPassword(path, arguments.user, password)
    except (ValueError, OSError) as e:
        print(f"jsmail passwd: {e}", file=sys.stderr)
        return 1
    print(f"jsmail passwd: {arguments.user} set in {path}")
    return 0


def _entryAsDict(entry: QueueEntry, now: float) -> dict[str, object]:
    envelope = entry.envelope
    return {
        "id": entry.queueId,
        "arrival": envelope.arrival,
        "age": round(now - envelope.arrival, 1),
        "size": entry.size,
        "sender": envelope.sender,
        "attempts": envelope.attempts,
        "held": entry.held,
        "nextAttempt": envelope.nextAttempt or None,
        "recipients": [{"address": r.address, "state": r.state.value, "lastReply": r.lastReply}
                       for r in envelope.recipients],
    }


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _printEntry(entry: QueueEntry, now: float) -> None:
    """Addresses and replies come from others: their controls are shown escaped."""
    envelope = entry.envelope
    held = "  (held)" if entry.held else ""
    print(f"{entry.queueId}  {_age(now - envelope.arrival):>4}  {entry.size:>8}  <{shown(envelope.sender)}>{held}")
    for r in envelope.recipients:
        print(f"    {r.state.value:<9} <{shown(r.address)}>" + (f"  {shown(r.lastReply)}" if r.lastReply else ""))


def queueList(arguments: argparse.Namespace) -> int:
    now = time.time()
    entries = listQueue(_queue(arguments))
    if arguments.json:
        print(json.dumps([_entryAsDict(e, now) for e in entries], indent=2, ensure_ascii=False))
        return 0
    for entry in entries:
        _printEntry(entry, now)
    print(f"-- {len(entries)} message(s) in the queue")
    return 0


def queueShow(arguments: argparse.Namespace) -> int:
    directory = _queue(arguments)
    try:
        entry = readQueueEntry(directory, arguments.id)
        with openEntry(directory, entry.queueId) as f:
            headers = readHeader(f, MAX_RETURNED_HEADERS).header.decode("utf-8", "replace")
    except (NotQueued, FileNotFoundError, ValueError):
        print(f"jsmail queue: no message {arguments.id} in {directory}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps({**_entryAsDict(entry, time.time()), "headers": headers}, indent=2, ensure_ascii=False))
    else:
        _printEntry(entry, time.time())
        print()
        lines = headers.split("\r\n")
        for line in lines[:-1] if lines[-1] == "" else lines:  # a message's header: its controls escaped
            print("\t".join(shown(part) for part in line.split("\t")))
    return 0


def queueMove(arguments: argparse.Namespace) -> int:
    """delete, hold and release: then wake the gateway with a flush, so that a released
    message is taken up at once and a deleted or held one leaves the plan now (its
    attempt, made due, finds it gone)."""
    directory = _queue(arguments)
    to = {"delete": "delete", "hold": "hold", "release": "active"}[arguments.action]
    try:
        moveEntry(directory, arguments.id, to)
    except (NotQueued, FileNotFoundError):
        print(f"jsmail queue: no message {arguments.id} in {directory}", file=sys.stderr)
        return 1
    done = {"delete": "deleted", "hold": "held", "release": "released"}[arguments.action]
    _say(arguments, f"jsmail queue: {arguments.id} {done}", id=arguments.id, done=done)
    wakeDelivery(directory, flush=True)
    return 0


def queueRequeue(arguments: argparse.Namespace) -> int:
    """Start the retry schedule of the given messages (or all) afresh, then flush."""
    directory = _queue(arguments)
    ids = arguments.ids or [entry.queueId for entry in listQueue(directory) if not entry.held]
    for queueId in ids:
        try:
            requeueEntry(directory, queueId)
        except (NotQueued, FileNotFoundError):
            print(f"jsmail queue: no message {queueId} in {directory}", file=sys.stderr)
            return 1
    _say(arguments, f"jsmail queue: {len(ids)} message(s) requeued", requeued=ids)
    wakeDelivery(directory, flush=True)
    return 0


def queueFlush(arguments: argparse.Namespace) -> int:
    directory = _queue(arguments)
    if not wakeDelivery(directory, flush=True):
        print(f"jsmail queue flush: no running delivery process (nothing reads {directory}/trigger)", file=sys.stderr)
        return 1
    _say(arguments, "jsmail queue flush: asked the delivery process to retry every queued message now", flushed=True)
    return 0


def dkimKeygen(arguments: argparse.Namespace) -> int:
    """Write a new private key (never over an existing file) and print its key record
    as a zone file line (RFC 6376 section 3.6.2.1).  The domain and the selector are
    DNS names (section 3.1): anything else would name a file outside ``--out`` and
    publish a record no verifier can look up."""
    try:
        domain = normaliseDomain(arguments.domain.rstrip("."))
    except SMTPReplyError as e:
        print(f"jsmail dkim keygen: --domain {arguments.domain!r}: {e.reply.text}; no key written", file=sys.stderr)
        return 2
    if domain.startswith("[") or not _SELECTOR.fullmatch(arguments.selector):
        what = f"--domain {arguments.domain!r}" if domain.startswith("[") else f"--selector {arguments.selector!r}"
        print(f"jsmail dkim keygen: {what}: expected DNS labels (letters, digits, hyphens) separated by dots "
              "(RFC 6376 section 3.1); no key written", file=sys.stderr)
        return 2
    path = os.path.join(arguments.out, f"{domain}.{arguments.selector}.key")
    try:
        key = writeNewKey(path, arguments.type, arguments.bits)
    except ValueError as e:
        print(f"jsmail dkim keygen: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"jsmail dkim keygen: {e.filename or arguments.out}: {e.strerror}; no key written", file=sys.stderr)
        return 1
    print(f"jsmail dkim keygen: private key written to {path}", file=sys.stderr)
    print(zoneEntry(arguments.selector, domain, keyRecord(key)))
    return 0


#: A selector: one or more DNS labels joined by dots (RFC 6376 section 3.1).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def traceMessage(arguments: argparse.Namespace) -> int:
    from jsmail.ops.trace import Selection, run

    if not (arguments.id or arguments.message_id or arguments.recipient):
        print("jsmail trace: give a queue or session id, --message-id or --recipient", file=sys.stderr)
        return 2
    return run(Selection(arguments.id or "", arguments.message_id or "", arguments.recipient or ""),
               arguments.log or ["twistd.log"], sys.stdout)


def checkGateway(arguments: argparse.Namespace) -> int:
    from jsmail.ops.check import run

    overrides = {"server.data": arguments.data} if arguments.data else {}
    return run(arguments.config, overrides, sys.stdout, arguments.dns_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jsmail", description="Administer a jsmail gateway.")
    parser.add_argument("--version", action="version", version=f"jsmail {__version__}")
    parser.add_argument("--config", "-c", help="the gateway's TOML configuration, for its data directory")
    parser.add_argument("--data", help="data directory [default: the configuration's, $JSMAIL_DATA or ./jsmail-data]")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("passwd", help="add or change an AUTH user (password from the terminal or stdin)")
    p.add_argument("user")
    p.add_argument("--delete", action="store_true", help="remove the user instead")
    p.add_argument("--file", help="password file [default: DATA/passwd]")
    p.add_argument("--data", default=argparse.SUPPRESS, help="data directory [default: $JSMAIL_DATA or ./jsmail-data]")
    p.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="the gateway's configuration, for its password file")
    p.set_defaults(run=passwd)
    queue = commands.add_parser("queue", help="look at the queue, or have it retried now").add_subparsers(
        dest="action", required=True)
    for name, run, help in (("list", queueList, "every queued message, like mailq"),
                            ("show", queueShow, "one message: envelope, recipients and headers"),
                            ("flush", queueFlush, "ask the running gateway to retry everything now"),
                            ("delete", queueMove, "remove a message from the queue, unsent"),
                            ("hold", queueMove, "keep a message from being delivered until released"),
                            ("release", queueMove, "let a held message be delivered again"),
                            ("requeue", queueRequeue, "start the retry schedule afresh, for IDs or all")):
        q = queue.add_parser(name, help=help)
        q.add_argument("--data", default=argparse.SUPPRESS,
                       help="data directory [default: $JSMAIL_DATA or ./jsmail-data]")
        q.add_argument("--config", "-c", default=argparse.SUPPRESS, help="the gateway's configuration, for its data")
        if name in ("show", "delete", "hold", "release"):
            q.add_argument("id")
        if name == "requeue":
            q.add_argument("ids", nargs="*", metavar="ID")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(run=run)
    dkim = commands.add_parser("dkim", help="DKIM keys").add_subparsers(dest="action", required=True)
    k = dkim.add_parser("keygen", help="make a signing key; print the DNS TXT record that publishes it")
    k.add_argument("--domain", required=True, help="the signing domain (d=)")
    k.add_argument("--selector", required=True, help="the selector (s=)")
    k.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type [default: rsa]")
    k.add_argument("--bits", type=int, default=2048, help="RSA key length, 1024 to 4096 [default: 2048]")
    k.add_argument("--out", default=".", help="directory for DOMAIN.SELECTOR.key [default: .]")
    k.set_defaults(run=dkimKeygen)
    t = commands.add_parser("trace", help="what happened to a message, from the log")
    t.add_argument("id", nargs="?", help="a queue id, or a session id")
    t.add_argument("--message-id", help="the message's Message-ID")
    t.add_argument("--recipient", help="a recipient's address")
    t.add_argument("--log", action="append", metavar="FILE",
                   help="twistd's log, text or JSON, with its rotated files (repeatable) [default: twistd.log]")
    t.set_defaults(run=traceMessage)
    c = commands.add_parser("check",
                            help="check the configuration and what it needs (exit 0 OK, 1 WARNING, 2 CRITICAL)")
    c.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="the TOML configuration file [default: built-in defaults]")
    c.add_argument("--data", default=argparse.SUPPRESS, help="data directory [default: the configuration's]")
    c.add_argument("--dns-timeout", type=float, default=3.0, help="seconds to wait for DNS [default: 3]")
    c.set_defaults(run=checkGateway)
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.run(arguments))
    except ConfigError as e:
        print(f"jsmail: configuration error: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"jsmail {arguments.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a queue file this user may not read
        print(f"jsmail {arguments.command}: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

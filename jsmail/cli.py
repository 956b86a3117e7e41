"""The ``jsmail`` command: administration beside the daemon.

``jsmail passwd USER`` adds or changes an AUTH user in the hashed password file
(``DATA/passwd`` by default, which the running daemon re-reads when it changes).
The data directory comes from ``--data``, else ``$JSMAIL_DATA``, else ``./jsmail-data``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from jsmail.auth import setPassword


def _dataDir(arguments: argparse.Namespace) -> str:
    return arguments.data or os.environ.get("JSMAIL_DATA") or "jsmail-data"


def _readPassword(prompt: bool) -> str:
    if not prompt:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("jsmail passwd: the passwords differ; nothing changed")
    return first


def passwd(arguments: argparse.Namespace) -> int:
    path = arguments.file or os.path.join(_dataDir(arguments), "passwd")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jsmail", description="Administer a jsmail gateway.")
    parser.add_argument("--data", help="data directory [default: $JSMAIL_DATA or ./jsmail-data]")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("passwd", help="add or change an AUTH user (password from the terminal or stdin)")
    p.add_argument("user")
    p.add_argument("--file", help="password file [default: DATA/passwd]")
    p.add_argument("--data", default=argparse.SUPPRESS, help="data directory [default: $JSMAIL_DATA or ./jsmail-data]")
    p.set_defaults(run=passwd)
    arguments = parser.parse_args(argv)
    return int(arguments.run(arguments))


if __name__ == "__main__":
    sys.exit(main())

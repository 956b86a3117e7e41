"""An aliases file in ``/etc/aliases`` syntax (aliases(5) of sendmail and Postfix).

::

    # comment
    postmaster: root
    staff:      alice@example.org, bob,
                "|/usr/local/bin/archive --list staff"
    log:        /var/mail/log, /srv/mail/log/Maildir/
    team:       :include:/etc/mail/team.list

A line ``name: target, target, ...`` defines an alias; a line starting with a space or
tab continues the one before; ``#`` lines and empty lines are ignored.  Names are
matched without regard to case.  Targets are separated by commas (a target in double
quotes may hold commas and spaces): ``|command`` runs a program, ``/path`` appends to
an mbox and ``/path/`` delivers into a Maildir, ``:include:/file`` reads more targets
from a file (one or more a line, the same syntax), anything else is an address to
forward to (one without ``@`` gets ``local.noathost`` added, as qmail's envnoathost
does: by default the first local domain, so that ``postmaster: root`` stays local).
Targets become the same instructions a ``.qmail`` line gives
(:mod:`jsmail.local.dotqmail`), so they are delivered the same way.

The aliases file is the operator's and is followed as jsmail's own user.  An
``:include:`` file that someone else owns (a list a user keeps) gives addresses only:
a program or file target in it would run with jsmail's rights, so the alias that
includes it fails (temporarily, saying why) and the other aliases work on.
"""

from __future__ import annotations

import os
from typing import Callable

from jsmail import reply
from jsmail.error import DeliveryError
from jsmail.local.dotqmail import Forward, Instruction, Maildir, Mbox, Program


class AliasesError(ValueError):
    """The file cannot be used: the message names the file, the line and the fault."""


class _Foreign(str):
    """The text of an ``:include:`` file owned by neither root nor jsmail's user."""


class _Unsafe(ValueError):
    """A program or file target from a :class:`_Foreign` file."""


def splitTargets(text: str) -> list[str]:
    """Comma-separated targets; double quotes keep commas and spaces together."""
    targets, current, quoted = [], "", False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            targets.append(current.strip())
            current = ""
            continue
        current += c
    if quoted:
        raise ValueError("a double quote is not closed")
    targets.append(current.strip())
    return [t for t in targets if t]


def targetInstruction(target: str, noAtHost: str) -> Instruction:
    """One target as a delivery instruction."""
    if target.startswith('"') and target.endswith('"') and len(target) >= 2:
        target = target[1:-1]
    if target.startswith("|"):
        return Program(target[1:].strip())
    if target.startswith("/"):
        return Maildir(target) if target.endswith("/") else Mbox(target)
    if any(c in " \t<>()\"\\;\x7f" or c < " " for c in target):  # NUL and the other controls too
        raise ValueError(f"{target!r} is not a bare address")
    return Forward(target if "@" in target else f"{target}@{noAtHost}")


def parseAliases(text: str, source: str, noAtHost: str,
                 readInclude: Callable[[str], str] | None = None) -> dict[str, tuple[Instruction, ...] | AliasesError]:
    """Alias name (lower case) -> its instructions, or why that alias cannot be
    followed.  ``readInclude`` reads an ``:include:`` file (None: ``:include:`` is
    refused)."""
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0] in " \t":
            if not entries:
                raise AliasesError(f"{source}:{number}: a continuation line with no alias before it")
            first, previous = entries[-1]
            entries[-1] = (first, previous + " " + line.strip())
        else:
            entries.append((number, line))
    aliases: dict[str, tuple[Instruction, ...] | AliasesError] = {}
    included = _Includes(readInclude) if readInclude is not None else None
    for number, entry in entries:
        name, colon, rest = entry.partition(":")
        name = name.strip().lower()
        if not colon or not name or any(c in name for c in " \t"):
            raise AliasesError(f"{source}:{number}: expected 'name: target, ...', got {entry!r}")
        try:
            expanded = _expand(splitTargets(rest), noAtHost, included, 0, source if isinstance(text, _Foreign) else "")
            aliases[name] = tuple(dict.fromkeys(expanded))
        except _Unsafe as e:
            aliases[name] = AliasesError(f"{source}:{number}: alias {name!r}: {e}")
            continue
        except (ValueError, OSError) as e:
            raise AliasesError(f"{source}:{number}: alias {name!r}: {e}") from None
        if not aliases[name]:
            raise AliasesError(f"{source}:{number}: alias {name!r} has no targets")
    return aliases


#: Targets and :include: files one alias may take: files that name the next file a few
#: times each multiply them level by level (six names over ten levels: 60 million).
MAX_EXPANSION = 10_000
#: Octets an aliases file or an included file may have: real ones have a few thousand.
MAX_FILE = 4 * 1024 * 1024


class _Includes:
    """The :include: files of one aliases file, each read once whatever names it, and
    expanded once per alias: a file named twice (or by a file it names) adds nothing
    new, so a chain of files naming the next ones many times costs one read each."""

    def __init__(self, read: Callable[[str], str]) -> None:
        self._read = read
        self._targets: dict[str, tuple[list[str], bool]] = {}
        self.expanded: set[str] = set()

    def targets(self, path: str) -> tuple[list[str], bool]:
        """The file's targets, and whether someone else owns it (:class:`_Foreign`)."""
        if path not in self._targets:
            text = self._read(path)
            lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
            self._targets[path] = (splitTargets(",".join(lines)), isinstance(text, _Foreign))
        return self._targets[path]


def _expand(targets: list[str], noAtHost: str, included: _Includes | None,
            depth: int, foreign: str = "", spent: list[int] | None = None) -> list[Instruction]:
    """``foreign``: the include file, owned by someone else, these targets came from."""
    if spent is None:  # one alias: its own count, and its own files expanded
        spent = [0]
        if included is not None:
            included.expanded.clear()
    out: list[Instruction] = []
    for target in targets:
        spent[0] += 1
        if spent[0] > MAX_EXPANSION:
            raise ValueError(f"more than {MAX_EXPANSION} targets and :include: files")
        if target.startswith(":include:"):
            path = target[len(":include:"):].strip()
            if included is None:
                raise ValueError(f":include: is not allowed here ({path})")
            if depth >= 10:
                raise ValueError(f":include: nested too deeply at {path}")
            if path in included.expanded:
                continue  # its targets are there already
            included.expanded.add(path)
            more, othersFile = included.targets(path)
            out += _expand(more, noAtHost, included, depth + 1, path if othersFile else foreign, spent)
        else:
            instruction = targetInstruction(target, noAtHost)
            if foreign and not isinstance(instruction, Forward):
                raise _Unsafe(f"{foreign} belongs to another user: only addresses are taken from it, not {target!r}")
            out.append(instruction)
    return out


def _readText(path: str) -> str:
    """The file's text, a :class:`_Foreign` one when someone else owns it; one over
    :data:`MAX_FILE` octets is refused, not read whole."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
        owner = os.fstat(f.fileno()).st_uid
    if len(data) > MAX_FILE:
        raise ValueError(f"{path} is larger than {MAX_FILE} octets")
    text = data.decode("utf-8", "replace")
    return text if owner in (0, os.geteuid()) else _Foreign(text)


class AliasesFile:
    """The aliases at ``path``, read again whenever the file changes (blocking: call
    :meth:`lookup` from a thread)."""

    def __init__(self, path: str, noAtHost: str, allowInclude: bool = True) -> None:
        self.path = path
        self.noAtHost = noAtHost
        self.allowInclude = allowInclude
        self._stamp: tuple[float, int, int] | None = None
        self._aliases: dict[str, tuple[Instruction, ...] | AliasesError] = {}

    def load(self) -> dict[str, tuple[Instruction, ...] | AliasesError]:
        """The current aliases; raises :class:`AliasesError` for a bad file."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise AliasesError(f"{self.path}: cannot read the aliases file: {e.strerror}") from None
        stamp = (st.st_mtime, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                text = _readText(self.path)
            except OSError as e:
                raise AliasesError(f"{self.path}: cannot read the aliases file: {e.strerror}") from None
            except ValueError as e:
                raise AliasesError(f"{self.path}: cannot use the aliases file: {e}") from None
            self._aliases = parseAliases(text, self.path, self.noAtHost, _readText if self.allowInclude else None)
            self._stamp = stamp
        return self._aliases

    def lookup(self, local: str, domain: str, separators: str) -> tuple[Instruction, ...] | None:
        """The instructions for ``local@domain``: the alias named by the whole address,
        else the local part, else the local part before its first separator (so
        ``staff+x`` reaches ``staff``); None if there is no such alias.  A bad file is
        a temporary failure (:class:`~jsmail.error.DeliveryError`), so no mail is lost while an
        operator fixes it."""
        try:
            aliases = self.load()
        except AliasesError as e:
            raise DeliveryError(reply.DELIVERY_ERROR, False, str(e)) from None
        base = next((local[:i] for i, c in enumerate(local) if c in separators and i), local)
        for key in (f"{local}@{domain}".lower(), local.lower(), base.lower()):
            if key in aliases:
                found = aliases[key]
                if isinstance(found, AliasesError):
                    raise DeliveryError(reply.INSTRUCTIONS_UNSAFE, False, str(found))
                return found
        return None

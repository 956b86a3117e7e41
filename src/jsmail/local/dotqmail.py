"""Finding and reading a local recipient's delivery instructions (qmail-getpw and the
first half of qmail-local).

Whose instructions (qmail-interfaces reference, section 8.1, with jsmail's places):

1. A **home directory** for the recipient, found the way qmail-getpw finds one: the
   local part is tried whole, then cut before each extension separator, longest first
   (``joe-list-x``, ``joe-list``, ``joe``).  Homes are looked for

   - under the virtual users directory, ``<users_dir>/<domain>/<user>/`` (jsmail's
     own, needing no system accounts), and
   - for system users, in ``getpwnam(user)``'s home when ``home_dotqmail`` is on (uid
     not 0 and at least ``minimum_uid``, home owned by the user), as qmail-getpw does.

   A home owned by anyone but root and jsmail's own user is that user's: everything
   in it is done as that user (:mod:`jsmail.local.spawn`), never as jsmail.
   The home's ``.qmail<dash><ext>`` files decide, with ``dash`` = the separator when
   an extension was cut off.
2. Otherwise the **domain directory** ``<users_dir>/<domain>/`` plays qmail's
   ``~alias``: its ``.qmail-<local>`` (and the ``.qmail-default`` chain) decide.
3. Otherwise the default delivery: jsmail's Maildir for the address.

Which file in a home (section 9.2): ``.qmail<dash><ext>`` (ext lower-cased, ``.`` as
``:``), then ``.qmail<dash><prefix>default`` for each prefix of ext ending just before a
separator, longest first, down to ``.qmail<dash>default``.  No file and an extension:
permanent ``550 5.1.1 Sorry, no mailbox here by that name``; no file and no extension,
or an empty file: the default delivery.  ``user+tag`` is an extension address too
when ``+`` is a separator (``plus_extensions``): ``.qmail-tag``, ``.qmail-default``.

The instruction syntax is section 9.3's, parsed by :func:`parseInstructions`.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from typing import Sequence

from jsmail import reply
from jsmail.error import DeliveryError


@dataclass(frozen=True)
class Program:
    """``|command``: run with ``/bin/sh -c`` in the home directory (section 9.5)."""

    command: str


@dataclass(frozen=True)
class Mbox:
    """``/path`` or ``./path``: append to an mbox file (section 9.7)."""

    path: str


@dataclass(frozen=True)
class Maildir:
    """``/path/`` or ``./path/``: deliver into an existing Maildir (section 9.6)."""

    path: str


@dataclass(frozen=True)
class Forward:
    """``&address`` or a bare address: forward a copy (section 9.4)."""

    address: str


Instruction = Program | Mbox | Maildir | Forward


@dataclass(frozen=True)
class Instructions:
    """What to do with a message, in order; ``forwardOnly`` refuses all but forwards
    (the file has the owner-execute bit, or says ``+list``)."""

    lines: tuple[Instruction, ...]
    forwardOnly: bool = False
    source: str = ""  # the file they came from, for messages


def parseLine(line: str) -> Instruction | None:
    """One instruction line (section 9.3); None for a comment or an empty line."""
    line = line.rstrip(" \t")
    if not line or line.startswith("#"):
        return None
    if line.startswith("|"):
        return Program(line[1:])
    if line[0] in "/.":
        return Maildir(line) if line.endswith("/") else Mbox(line)
    address = line[1:] if line.startswith("&") else line
    if not address or any(c in " \t<>()\"\\,;\x7f" or c < " " for c in address):  # CR, NUL: no address either
        raise DeliveryError(reply.BAD_FORWARD, True, f"cannot forward to {address!r}: not a bare address")
    return Forward(address)


def parseInstructions(text: str, source: str = "", forwardOnly: bool = False) -> Instructions:
    """A .qmail file's text (section 9.3).  An empty first line is a temporary error,
    as in qmail-local: a half-written file must not lose mail."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the final LF ends the last line; it does not start another
    if lines and not lines[0].rstrip(" \t"):
        raise DeliveryError(reply.INSTRUCTIONS_UNUSABLE, False, f"first line of {source or '.qmail file'} is blank")
    parsed: list[Instruction] = []
    for line in lines:
        if line.rstrip(" \t") == "+list":
            forwardOnly = True
        elif not line.startswith("+") and (instruction := parseLine(line)) is not None:
            parsed.append(instruction)
    return Instructions(tuple(parsed), forwardOnly, source)


def fileCandidates(dash: str, ext: str, separators: str = "-") -> list[tuple[str, str | None]]:
    """The .qmail file names to try, in order, each with what ``DEFAULT`` is set to
    when it matches (None: not a default file).  Section 9.2."""
    safe = ext.lower().replace(".", ":")
    names: list[tuple[str, str | None]] = [(f".qmail{dash}{safe}", None)]
    for p in range(len(safe), -1, -1):
        if p == 0 or safe[p - 1] in separators:
            names.append((f".qmail{dash}{safe[:p]}default", ext[p:]))
    return names


@dataclass(frozen=True)
class Mailbox:
    """Whose instructions apply: qmail-getpw's answer (section 8.1).  ``home`` is
    None for the default delivery (no instructions anywhere)."""

    local: str  # the whole local part, as addressed
    domain: str
    user: str
    home: str | None
    dash: str = ""
    ext: str = ""
    alias: bool = False  # the domain directory, not a user's home
    owner: int | None = None  # the uid owning ``home``: whom its instructions are followed as


def localCandidates(local: str, separators: str) -> list[tuple[str, str, str]]:
    """(user, dash, ext) for each way to cut ``local`` at a separator, longest user
    first; dash is ``-`` whenever something was cut off."""
    found = [(local, "", "")]
    for i in range(len(local) - 1, 0, -1):
        if local[i] in separators:
            found.append((local[:i], "-", local[i + 1:]))
    return found


def _directoryOwner(path: str) -> int | None:
    """The uid owning the directory ``path``; None if it is no directory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_uid if stat.S_ISDIR(st.st_mode) else None


def findMailbox(local: str, domain: str, usersDir: str, homeDotQmail: bool, separators: str,
                minimumUid: int = 1000) -> Mailbox:
    """Where ``local@domain``'s instructions live (blocking: it looks at the disk)."""
    domainDir = os.path.join(usersDir, domain.lower()) if usersDir else ""
    for user, dash, ext in localCandidates(local, separators):
        name = user.lower()
        if not name or name.startswith(".") or "/" in name or "\x00" in name:
            continue
        if domainDir and (owner := _directoryOwner(os.path.join(domainDir, name))) is not None:
            return Mailbox(local, domain, user, os.path.join(domainDir, name), dash, ext, owner=owner)
        if homeDotQmail and len(name) <= 31:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            if entry.pw_uid != 0 and entry.pw_uid >= minimumUid and _directoryOwner(entry.pw_dir) == entry.pw_uid:
                return Mailbox(local, domain, user, entry.pw_dir, dash, ext, owner=entry.pw_uid)
    if domainDir and (owner := _directoryOwner(domainDir)) is not None:
        return Mailbox(local, domain, local, domainDir, "-", local, alias=True, owner=owner)
    return Mailbox(local, domain, local, None)


@dataclass(frozen=True)
class Found:
    """The instruction file that matched, or none (``instructions`` None: use the
    default delivery)."""

    instructions: Instructions | None
    default: str | None = None  # the env DEFAULT: the part of ext a default file covered


def _checkWritable(path: str, st: os.stat_result, what: str) -> None:
    if st.st_mode & stat.S_IWOTH:
        raise DeliveryError(reply.INSTRUCTIONS_UNSAFE, False, f"{what} {path} is writable")


def readInstructions(mailbox: Mailbox, separators: str, owners: frozenset[int] | None = None) -> Found:
    """Find and parse the mailbox's .qmail file (sections 9.1 and 9.2; blocking).
    With ``owners``, a file owned by any other uid is refused: someone else put it
    in this home, and it would be followed with the home owner's rights."""
    if mailbox.home is None:
        return Found(None)
    try:
        home = os.stat(mailbox.home)
    except OSError as e:
        raise DeliveryError(reply.DELIVERY_ERROR, False, f"unable to switch to {mailbox.home}: {e.strerror}") from None
    _checkWritable(mailbox.home, home, "home directory")
    if home.st_mode & stat.S_ISVTX:
        raise DeliveryError(reply.INSTRUCTIONS_UNUSABLE, False,
                            f"home directory {mailbox.home} is sticky: the user is editing .qmail")
    for name, default in fileCandidates(mailbox.dash, mailbox.ext, separators):
        path = os.path.join(mailbox.home, name)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                text = f.read().decode("utf-8", "replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as e:
            raise DeliveryError(reply.INSTRUCTIONS_UNUSABLE, False, f"unable to open {path}: {e.strerror}") from None
        _checkWritable(path, st, ".qmail file")
        if owners is not None and st.st_uid not in owners:
            raise DeliveryError(reply.INSTRUCTIONS_UNSAFE, False,
                                f".qmail file {path} belongs to uid {st.st_uid}, not to the home's owner")
        if not text:
            return Found(None)
        return Found(parseInstructions(text, path, bool(st.st_mode & stat.S_IXUSR)), default)
    if mailbox.alias:
        return Found(None)  # jsmail's fallback: the address keeps its default Maildir
    if mailbox.dash:
        raise DeliveryError(reply.NO_SUCH_LOCAL_MAILBOX, True,
                            f"no .qmail{mailbox.dash}{mailbox.ext} file in {mailbox.home}")
    return Found(None)


def newSender(mailbox: Mailbox, sender: str) -> str:
    """The envelope sender of forwarded copies (section 9.4): the ``-owner`` address
    when ``.qmail<dash><ext>-owner`` exists, else the original sender.  jsmail has no
    VERP, so an ``-owner-default`` file does not turn it into a VERP sender."""
    if sender in ("", "#@[]") or mailbox.home is None:
        return sender
    owner = f".qmail{mailbox.dash}{mailbox.ext.lower().replace('.', ':')}-owner"
    if os.path.isfile(os.path.join(mailbox.home, owner)):
        return f"{mailbox.local}-owner@{mailbox.domain}"
    return sender


def hostParts(host: str) -> tuple[str, str, str]:
    """HOST2, HOST3, HOST4: the domain up to its last, second-to-last and
    third-to-last dot (section 9.5; the whole domain when it has fewer dots)."""
    parts = host.split(".")
    return tuple(".".join(parts[: max(len(parts) - n, 1)]) for n in (1, 2, 3))  # type: ignore[return-value]


def extParts(ext: str, separators: str) -> tuple[str, str, str]:
    """EXT2, EXT3, EXT4: the extension after its first, second and third separator."""
    out = []
    rest: str | None = ext
    for _ in range(3):
        cut = next((i for i, c in enumerate(rest or "") if c in separators), None)
        rest = None if rest is None or cut is None else rest[cut + 1:]
        out.append(rest or "")
    return tuple(out)  # type: ignore[return-value]


def commandEnvironment(mailbox: Mailbox, sender: str, newsender: str, recipient: str, default: str | None,
                       separators: str, lines: Sequence[bytes], base: dict[str, str]) -> dict[str, str]:
    """qmail-command's environment (section 9.5); ``lines`` = UFLINE, RPLINE, DTLINE."""
    host2, host3, host4 = hostParts(mailbox.domain)
    ext2, ext3, ext4 = extParts(mailbox.ext, separators)
    ufline, rpline, dtline = (line.decode("utf-8", "replace") for line in lines)
    env = dict(base)
    env.update(SENDER=sender, NEWSENDER=newsender, RECIPIENT=recipient, USER=mailbox.user,
               HOME=mailbox.home or "", HOST=mailbox.domain, HOST2=host2, HOST3=host3, HOST4=host4,
               LOCAL=mailbox.local, EXT=mailbox.ext, EXT2=ext2, EXT3=ext3, EXT4=ext4,
               UFLINE=ufline, RPLINE=rpline, DTLINE=dtline)
    env.pop("DEFAULT", None)
    if default is not None:
        env["DEFAULT"] = default
    return env

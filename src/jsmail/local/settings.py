"""Local delivery's settings: a value the configuration can name without importing
the delivery agent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalSettings:
    """Where instructions are looked for and how they run (``config.local``, the
    ``[local]`` section; ``localDomains`` and an empty ``noAtHost`` are filled in
    from ``[server]``)."""

    usersDir: str = ""  # <dir>/<domain>/<user>/.qmail...; empty: no virtual users
    homeDotQmail: bool = False  # system users' ~/.qmail files, followed as the user (needs jsmail started as root)
    separator: str = "-"  # between a user and an extension (qmail's conf-break)
    plusExtensions: bool = True  # "+" separates an extension too (user+tag)
    aliases: str = ""  # an /etc/aliases-style file; empty: none
    programTimeout: float = 3600.0  # seconds the |programs of one delivery may run, together
    noAtHost: str = ""  # added to forward addresses without "@" (qmail's envnoathost); empty: the first local domain
    concurrency: int = 10  # recipients delivered at once (qmail's concurrencylocal)
    virtualDomains: tuple[str, ...] = ()  # qmail's virtualdomains lines, "key:prepend"
    localDomains: tuple[str, ...] = ()  # the first one holds virtual domains' users
    catchAll: bool | None = None  # take any local part (None: only when the one local domain is localhost)
    rememberedMailboxes: int = 10_000  # Maildirs known to exist, and their file systems (least recent go first)
    minimumUid: int = 1000  # system users below it (and root) are never delivered to as themselves
    allowedPaths: tuple[str, ...] = ()  # where virtual users' mbox and Maildir lines may go besides their home
    inSession: bool = True  # a message for default Maildirs only is delivered before the 250 (local/session.py)

    @property
    def separators(self) -> str:
        return self.separator + ("+" if self.plusExtensions and self.separator != "+" else "")

"""Local submission's settings (``config.submit``, the ``[submit]`` section): a value
the configuration can name without importing the listener."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

#: Where ``jsmail-sendmail`` looks when it may not read the configuration (a file that
#: holds passwords is often readable by root and jsmail only): the socket of a
#: packaged install, which ``docs/submission.rst`` recommends.
WELL_KNOWN_SOCKET = "/run/jsmail/submit.sock"


@dataclass(frozen=True)
class SubmitSettings:
    """Where the local submission socket is, and who may give which envelope sender.

    ``socket``: the socket's path; in the file, empty means ``DATA/submit/socket`` and
    "none" turns local submission off (once read, empty means off).  Root, the user
    the gateway runs as, and ``trustedUsers`` (login names) may give any envelope
    sender; every other user only their own address (``login@`` the host name or a
    local domain) or the null sender, and what ``senders`` lists for their login:
    ``(login, patterns)`` pairs, a pattern being an address, ``@domain`` (any address
    there) or ``*`` (any address)."""

    socket: str = ""
    trustedUsers: tuple[str, ...] = ()
    senders: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def placed(self, dataDir: str) -> SubmitSettings:
        """These settings as read: the socket's absolute path, "" for none."""
        if self.socket == "none":
            return replace(self, socket="")
        return replace(self, socket=os.path.abspath(self.socket or os.path.join(dataDir, "submit", "socket")))


def senderPatterns(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Check ``[submit] senders``: a table of login name -> list of patterns."""
    if not isinstance(value, dict):
        raise ValueError(f'expected a table such as {{ "www-data" = ["@example.org"] }}, got {value!r}')
    rules = []
    for login, patterns in value.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"{login}: expected a list of addresses, @domain or *, got {patterns!r}")
        for pattern in patterns:
            local, at, domain = pattern.rpartition("@")
            if pattern != "*" and not (at and domain and "@" not in local and " " not in pattern):
                raise ValueError(f"{login}: {pattern!r} is not an address, @domain or *")
        rules.append((str(login), tuple(p.lower() for p in patterns)))
    return tuple(rules)


def qualifyingDomain(config: Any) -> str:
    """The domain an address without one gets when a local user submits it (cron's
    ``root``): ``local.noathost``, the same as forward and alias targets get, which is
    a local domain unless set otherwise, so that such mail stays on this host.
    ``config``: a :class:`jsmail.config.Config`."""
    return str(config.local.noAtHost)

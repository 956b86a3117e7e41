"""Remote delivery's settings (``config.remote``, the ``[remote]`` section): a value the
configuration can name without importing the delivery agent."""

from __future__ import annotations

from dataclasses import dataclass

from jsmail.address import hostPort
from jsmail.route import Route


@dataclass(frozen=True)
class RemoteSettings:
    """Where mail for other domains goes and how.  ``heloHost`` is filled in from
    ``server.hostname`` when empty.  ``replyTimeout`` (qmail's timeoutremote) replaces
    RFC 5321's per-phase timeouts when not 0."""

    dnsServer: str = ""  # HOST:PORT; empty: /etc/resolv.conf
    port: int = 25
    tls: str = "opportunistic"
    smarthost: str = ""  # HOST[:PORT]; empty: deliver to each domain's MX
    smarthostTLS: str = "opportunistic"
    smarthostUsername: str = ""
    smarthostPassword: str = ""
    routes: tuple[Route, ...] = ()
    perHost: int = 5
    idleTimeout: float = 10.0
    connectTimeout: float = 60.0
    mtaSts: bool = True
    hostBackoff: float = 60.0
    hostBackoffMaximum: float = 3600.0
    heloHost: str = ""
    replyTimeout: float = 0.0
    sessionDeadline: float = 1800.0  # seconds one delivery's whole SMTP transaction may take
    rememberedHosts: int = 10_000  # hosts whose back-off is remembered (the least recently seen go first)

    @property
    def smarthostRoute(self) -> Route | None:
        if not self.smarthost:
            return None
        host, port = hostPort(self.smarthost)
        return Route(host, port, self.smarthostTLS, self.smarthostUsername or None, self.smarthostPassword or None)

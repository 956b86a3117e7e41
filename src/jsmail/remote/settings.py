"""Remote delivery's settings (``config.remote``, the ``[remote]`` section): a value the
configuration can name without importing the delivery agent."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from jsmail.address import hostPort
from jsmail.route import Route

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RemoteSettings:
    """Where mail for other domains goes and how.  ``heloHost`` is filled in from
    ``server.hostname`` when empty.  ``replyTimeout`` (qmail's timeoutremote) replaces
    RFC 5321's per-phase timeouts when not 0.  ``smarthostTLS`` empty means ``verify``
    with credentials, ``opportunistic`` without.  ``allowInternal``: the internal
    networks MX answers may point into (see :mod:`jsmail.remote.destinations`)."""

    dnsServer: str = ""  # HOST:PORT; empty: /etc/resolv.conf
    port: int = 25
    tls: str = "opportunistic"
    smarthost: str = ""  # HOST[:PORT]; empty: deliver to each domain's MX
    smarthostTLS: str = ""
    smarthostUsername: str = ""
    smarthostPassword: str = ""
    routes: tuple[Route, ...] = ()
    allowInsecureAuth: bool = False  # credentials over unverified TLS, or plaintext with tls "none"
    allowInternal: tuple[Network, ...] = ()
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
        tls = self.smarthostTLS or ("verify" if self.smarthostUsername else "opportunistic")
        return Route(host, port, tls, self.smarthostUsername or None, self.smarthostPassword or None)

    def credentialProblem(self) -> tuple[str, str] | None:
        """The first smarthost or route whose credentials could leak, as (the setting,
        what is wrong), or None.  Credentials go only over TLS whose certificate is
        checked (``verify`` or ``implicit``) unless ``allow_insecure_auth`` says so:
        anyone in the path could take them otherwise (security review M-3)."""
        smarthost = self.smarthostRoute
        routes = [("remote.smarthost_tls", smarthost, "smarthost_username and smarthost_password")] if smarthost else []
        routes += [("remote.routes", route, f"the route for {route.domain}") for route in self.routes]
        for key, route, what in routes:
            if (route.username is None) != (route.password is None):
                return key, f"{what}: a user name and a password go together; one is missing"
            if route.username is None or route.tls in ("verify", "implicit") or self.allowInsecureAuth:
                continue
            return key, (f'{what}: credentials go only over TLS with a verified certificate, not tls = "{route.tls}"; '
                         'use tls = "verify" or "implicit" (the default with credentials), or set '
                         "remote.allow_insecure_auth = true to send them anyway")
        return None

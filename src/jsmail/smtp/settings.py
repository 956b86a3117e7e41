"""The SMTP server's settings: a value with no behaviour, so the configuration can name
it without importing the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """What one SMTP listener enforces (``config.smtp``; the ``[smtp]`` section, with
    the AUTH rules of ``[auth]`` and ``policy.authserv_id``).  Every limit is here, so
    every limit is configurable (see ``etc/jsmail.toml`` for each one's meaning).
    ``hostname`` and an empty ``authservId`` are filled in from ``server.hostname``,
    ``postmasterDomain`` from the first of ``server.domains``."""

    hostname: str = "localhost"
    postmasterDomain: str = ""  # RCPT TO:<postmaster> means postmaster@ this (RFC 5321 4.5.1); empty: hostname
    greeting: str = ""  # the 220 text before " ESMTP" (qmail's smtpgreeting); empty: jsmail's own
    maxMessageSize: int = 25 * 1024 * 1024
    maxCommandLine: int = 512  # RFC 5321 4.5.3.1.4, including CR LF
    maxTextLine: int = 1000  # RFC 5321 4.5.3.1.6, including CR LF
    maxRecipients: int = 100  # RFC 5321 4.5.3.1.8 says at least 100
    maxErrors: int = 20
    idleTimeout: float = 300.0  # RFC 5321 4.5.3.2.7
    maxConnections: int = 1000
    maxConnectionsPerClient: int = 20
    normaliseLineEndings: bool = False
    maxReceivedHeaders: int = 100  # loop detection, RFC 5321 6.3
    requireTLS: bool = False  # submission (RFC 6409 + RFC 3207): STARTTLS before AUTH and MAIL
    requireAuth: bool = False  # submission: AUTH before MAIL
    allowPlaintextAuth: bool = False  # offer AUTH without TLS (RFC 4954 section 4 advises not to)
    allowProxyAuth: bool = False  # PLAIN authzid may differ from authcid
    maxAuthFailures: int = 3  # failures answered with 535; the next one closes with 421
    authFailureDelay: float = 1.0  # seconds an answer waits after one failure, doubling with each
    maxClientAuthFailures: int = 10  # failures from one client (IPv6: its /64) before AUTH gets 421
    authFailureWindow: float = 900.0  # seconds a failure counts against the client and the user
    authRememberedKeys: int = 10_000  # clients and user names whose failures are counted (oldest go first)
    showAuthInReceived: bool = False
    authservId: str = ""  # Authentication-Results authserv-id (RFC 8601 section 2.5); empty: hostname
    maxJunkCommands: int = 100  # NOOP, RSET, VRFY, HELP beyond this many each count as an error (Postfix's limit)
    maxSessionTime: float = 3600.0  # a session's whole life, seconds
    minDataRate: float = 500.0  # octets/s a message must keep coming at (Postfix's smtpd_min_data_rate)
    maxCheckMemory: int = 512 * 1024 * 1024  # octets of messages held whole for checks at once; past it 451 4.3.1
    maxChecksPerClient: int = 4  # checks waiting on DNS or a program at once for one client; more wait their turn
    clientPrefix6: int = 64  # IPv6 clients in one /64 count as one for maxConnectionsPerClient
    allowNul: bool = False  # NUL octets in content (RFC 5322 section 2.3 forbids them): refused unless allowed
    strictHelo: bool = False  # refuse an EHLO/HELO argument that is no domain or address literal
    minFreeSpace: int = 64 * 1024 * 1024  # MAIL gets 452 4.3.1 when the queue has less room than this
    processes: int = 1  # processes running the sessions; past 1 the main one hands each connection to one of them
    logAccepts: bool = False  # log every check's accept too ([log] checks = "all"), not only what says something

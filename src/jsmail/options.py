"""Where each setting is found in TOML and how its value is checked: the value readers
and the :data:`OPTIONS` table that :func:`jsmail.config.loadConfig` goes by.

A reader takes the raw TOML value and returns it typed, or raises ValueError with a
message that :class:`~jsmail.config.ConfigError` shows after the key.  Add a setting
here (and its field beside the part that uses it, and its text in
``etc/jsmail.toml``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Callable

from jsmail.address import hostPort, normaliseDomain
from jsmail.error import SMTPReplyError
from jsmail.listen import checkEndpoint, checkListeners
from jsmail.privileges import accountSetting
from jsmail.route import TLS_MODES, Route
from jsmail.submit.settings import senderPatterns

# -- value checkers: each takes the raw value and returns it typed, or raises ValueError --


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return check


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not seconds > 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return seconds


def _nonNegativeSeconds(value: Any) -> float:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _seconds(value)


def _factor(value: Any) -> float:
    factor = _seconds(value)
    if factor < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return factor


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def hostname(value: Any) -> str:
    """A domain name (A-labels, lower case), as ``server.hostname`` wants."""
    try:
        return normaliseDomain(_string(value))
    except SMTPReplyError as e:
        raise ValueError(e.reply.text) from None


def _listOf(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(item(v) for v in value)

    return check


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_string(value), strict=False)
    except ValueError as e:
        raise ValueError(f"bad network {value!r}: {e}") from None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _separator(value: Any) -> str:
    """One character between a user name and an extension, not a mail address's own."""
    if not isinstance(value, str) or len(value) != 1 or value in "@.\"<>()[]\\,;: \t":
        raise ValueError(f"expected one character such as \"-\", got {value!r}")
    return value


def _virtualDomain(value: Any) -> str:
    """A qmail virtualdomains line, ``key:prepend`` (key: a domain, ``.suffix``, an
    address or empty; an empty prepend excepts the key)."""
    line = _string(value)
    if ":" not in line:
        raise ValueError(f"expected 'domain:prepend', got {line!r}")
    return line


def _directories(value: Any) -> tuple[str, ...]:
    """Absolute directory paths (they may not exist yet)."""
    paths = _listOf(_string)(value)
    if any(not os.path.isabs(path) for path in paths):
        raise ValueError(f"expected absolute paths, got {list(paths)!r}")
    return tuple(os.path.normpath(p) for p in paths)


def _optionalString(value: Any) -> str:
    """A string that may be empty (empty: the setting's default behaviour)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _optionalEndpoint(value: Any) -> str:
    """An endpoint, or empty for none."""
    return "" if value == "" else checkEndpoint(value)


def _checker(value: Any) -> str:
    from twisted.cred import strcred

    from jsmail.auth import forSMTPAuth

    description = _string(value)
    try:
        forSMTPAuth(strcred.makeChecker(description), description)
    except strcred.InvalidAuthType as e:
        raise ValueError(f"unknown checker type {str(e)!r} (twistd jsmail --help-auth lists them)") from None
    except (strcred.InvalidAuthArgumentString, ValueError) as e:
        raise ValueError(f"bad checker {description!r}: {e}") from None
    return description


def _optionalHostPort(value: Any) -> str:
    if value == "":
        return ""
    hostPort(_string(value))
    return str(value)


def _route(value: Any) -> Route:
    """One route: a table with domain, host and optionally port, tls, username, password."""
    if not isinstance(value, dict) or set(value) - {"domain", "host", "port", "tls", "username", "password"}:
        raise ValueError(f"a route is a table of domain, host, port, tls, username, password; got {value!r}")
    tls = value.get("tls", "verify" if value.get("username") else "opportunistic")  # credentials: verify
    try:
        return Route(host=_string(value["host"]), port=_integer(1)(value.get("port", 25)), tls=_choice(*TLS_MODES)(tls),
                     username=value.get("username"), password=value.get("password"),
                     domain=hostname(value["domain"]))
    except KeyError as e:
        raise ValueError(f"a route needs {e.args[0]!r}") from None


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _pluginTables(value: Any) -> dict[str, dict[str, Any]]:
    """``[plugins.NAME]`` tables: each plugin checks its own table when it is built."""
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ValueError(f"expected [plugins.NAME] tables, got {value!r}")
    return {str(name): dict(table) for name, table in value.items()}


def _prefixLength(value: Any) -> int:
    length = _integer(1)(value)
    if length > 128:
        raise ValueError(f"an IPv6 prefix length is at most 128, got {length}")
    return length


def _either(no: str, yes: str) -> Callable[[Any], bool]:
    """A setting of two words, read as False for ``no`` and True for ``yes`` (e.g.
    ``nul_bytes = "reject"`` or ``"accept"``, ``helo_check = "none"`` or ``"syntax"``)."""
    def check(value: Any) -> bool:
        return _choice(no, yes)(value) == yes

    check.words = (no, yes)  # type: ignore[attr-defined]  # for jsmail.configcheck, the way back
    return check


@dataclass(frozen=True)
class Option:
    """One setting: field ``field`` of the section ``config.<part>``, found at
    ``section.key`` in TOML, checked (and typed) by ``check``."""

    part: str
    field: str
    section: str
    key: str
    check: Callable[[Any], Any]

    @property
    def name(self) -> str:
        return self.section if self.key == "*" else f"{self.section}.{self.key}"


OPTIONS: tuple[Option, ...] = (
    Option("server", "hostname", "server", "hostname", hostname),
    Option("server", "tlsCertificate", "server", "tls_certificate", _optionalString),
    Option("server", "tlsKey", "server", "tls_key", _optionalString),
    Option("server", "dataDir", "server", "data", _string),
    Option("server", "domains", "server", "domains", _listOf(hostname)),
    Option("server", "trustedNetworks", "server", "trusted_networks", _listOf(_network)),
    Option("server", "postmaster", "server", "postmaster", _optionalString),
    Option("server", "controlDir", "server", "control_dir", _optionalString),
    Option("server", "user", "server", "user", accountSetting("user")),
    Option("server", "group", "server", "group", accountSetting("group")),
    Option("listen", "smtp", "smtp", "listen", checkListeners),
    Option("listen", "submission", "smtp", "submission", checkListeners),
    Option("listen", "smtps", "smtp", "smtps", lambda value: checkListeners(value, implicitTLS=True)),
    Option("smtp", "greeting", "smtp", "greeting", _optionalString),
    Option("smtp", "maxMessageSize", "smtp", "max_message_size", _integer(1)),
    Option("smtp", "maxCommandLine", "smtp", "max_command_line", _integer(512)),
    Option("smtp", "maxTextLine", "smtp", "max_text_line", _integer(1000)),
    Option("smtp", "maxRecipients", "smtp", "max_recipients", _integer(1)),
    Option("smtp", "maxErrors", "smtp", "max_errors", _integer(1)),
    Option("smtp", "idleTimeout", "smtp", "idle_timeout", _seconds),
    Option("smtp", "maxConnections", "smtp", "max_connections", _integer(1)),
    Option("smtp", "maxConnectionsPerClient", "smtp", "max_connections_per_client", _integer(1)),
    Option("smtp", "normaliseLineEndings", "smtp", "bare_line_endings", _either("reject", "normalise")),
    Option("smtp", "maxReceivedHeaders", "smtp", "max_received_headers", _integer(1)),
    Option("smtp", "maxJunkCommands", "smtp", "max_junk_commands", _integer(0)),
    Option("smtp", "maxSessionTime", "smtp", "max_session_time", _seconds),
    Option("smtp", "minDataRate", "smtp", "min_data_rate", _seconds),
    Option("smtp", "clientPrefix6", "smtp", "client_ipv6_prefix", _prefixLength),
    Option("smtp", "allowNul", "smtp", "nul_bytes", _either("reject", "accept")),
    Option("smtp", "strictHelo", "smtp", "helo_check", _either("none", "syntax")),
    Option("smtp", "minFreeSpace", "queue", "min_free", _integer(0)),
    Option("smtp", "maxAuthFailures", "auth", "max_failures", _integer(0)),
    Option("smtp", "authFailureDelay", "auth", "failure_delay", _nonNegativeSeconds),
    Option("smtp", "maxClientAuthFailures", "auth", "max_client_failures", _integer(1)),
    Option("smtp", "authFailureWindow", "auth", "failure_window", _seconds),
    Option("smtp", "authRememberedKeys", "auth", "remembered_keys", _integer(1)),
    Option("smtp", "allowPlaintextAuth", "auth", "allow_plaintext", _boolean),
    Option("smtp", "allowProxyAuth", "auth", "allow_proxy", _boolean),
    Option("smtp", "showAuthInReceived", "auth", "show_in_received", _boolean),
    Option("smtp", "authservId", "policy", "authserv_id", _optionalString),
    Option("smtp", "maxChecksPerClient", "policy", "max_checks_per_client", _integer(1)),
    Option("smtp", "maxCheckMemory", "policy", "max_check_memory", _integer(1)),
    Option("smtp", "logAccepts", "log", "checks", _either("refusals", "all")),
    Option("smtp", "processes", "smtp", "processes", _integer(1, 64)),
    Option("relay", "rcptHosts", "smtp", "rcpt_hosts", _listOf(_string)),
    Option("relay", "moreRcptHosts", "smtp", "more_rcpt_hosts", _optionalString),
    Option("relay", "badMailFrom", "smtp", "bad_mail_from", _listOf(_string)),
    Option("auth", "passwordFile", "auth", "password_file", _optionalString),
    Option("auth", "checkers", "auth", "checkers", _listOf(_checker)),
    Option("auth", "senderRule", "auth", "sender_rule", _choice("any", "own")),
    Option("remote", "dnsServer", "remote", "dns_server", _optionalHostPort),
    Option("remote", "port", "remote", "port", _integer(1)),
    Option("remote", "tls", "remote", "tls", _choice(*TLS_MODES)),
    Option("remote", "smarthost", "remote", "smarthost", _optionalHostPort),
    Option("remote", "smarthostTLS", "remote", "smarthost_tls", _choice("", *TLS_MODES)),  # "": see RemoteSettings
    Option("remote", "smarthostUsername", "remote", "smarthost_username", _optionalString),
    Option("remote", "smarthostPassword", "remote", "smarthost_password", _optionalString),
    Option("remote", "routes", "remote", "routes", _listOf(_route)),
    Option("remote", "allowInsecureAuth", "remote", "allow_insecure_auth", _boolean),
    Option("remote", "allowInternal", "remote", "allow_internal", _listOf(_network)),
    Option("remote", "perHost", "remote", "per_host", _integer(1)),
    Option("remote", "idleTimeout", "remote", "idle_timeout", _nonNegativeSeconds),
    Option("remote", "connectTimeout", "remote", "connect_timeout", _seconds),
    Option("remote", "mtaSts", "remote", "mta_sts", _boolean),
    Option("remote", "hostBackoff", "remote", "host_backoff", _seconds),
    Option("remote", "hostBackoffMaximum", "remote", "host_backoff_max", _seconds),
    Option("remote", "heloHost", "remote", "helo_host", _optionalString),
    Option("remote", "replyTimeout", "remote", "reply_timeout", _nonNegativeSeconds),
    Option("remote", "sessionDeadline", "remote", "session_deadline", _seconds),
    Option("remote", "rememberedHosts", "remote", "remembered_hosts", _integer(1)),
    Option("queue", "retryFirst", "queue", "retry_first", _seconds),
    Option("queue", "retryFactor", "queue", "retry_factor", _factor),
    Option("queue", "retryMaximum", "queue", "retry_max", _seconds),
    Option("queue", "giveUp", "queue", "give_up", _seconds),
    Option("queue", "concurrency", "queue", "concurrency", _integer(1)),
    Option("queue", "diskThreads", "queue", "disk_threads", _integer(1)),
    Option("queue", "deliveryProcess", "queue", "delivery_process", _boolean),
    Option("queue", "program", "queue", "program", _optionalString),
    Option("queue", "bounceFrom", "queue", "bounce_from", _string),
    Option("queue", "bounceHost", "queue", "bounce_host", _optionalString),
    Option("queue", "rescanInterval", "queue", "rescan_interval", _seconds),
    Option("queue", "delayWarning", "queue", "delay_warning", _nonNegativeSeconds),
    Option("policy", "smtp", "policy", "smtp", _listOf(_string)),
    Option("policy", "submission", "policy", "submission", _listOf(_string)),
    Option("policy", "smtps", "policy", "smtps", _listOf(_string)),
    Option("policy", "plugins", "plugins", "*", _pluginTables),  # the whole [plugins] table
    Option("local", "usersDir", "local", "users_dir", _optionalString),
    Option("local", "homeDotQmail", "local", "home_dotqmail", _boolean),
    Option("local", "separator", "local", "extension_separator", _separator),
    Option("local", "plusExtensions", "local", "plus_extensions", _boolean),
    Option("local", "aliases", "local", "aliases", _optionalString),
    Option("local", "programTimeout", "local", "program_timeout", _seconds),
    Option("local", "concurrency", "local", "concurrency", _integer(1)),
    Option("local", "virtualDomains", "local", "virtual_domains", _listOf(_virtualDomain)),
    Option("local", "noAtHost", "local", "noathost", _optionalString),
    Option("local", "catchAll", "local", "catch_all", _boolean),
    Option("local", "rememberedMailboxes", "local", "remembered_mailboxes", _integer(1)),
    Option("local", "minimumUid", "local", "minimum_uid", _integer(1)),
    Option("local", "allowedPaths", "local", "allowed_paths", _directories),
    Option("local", "inSession", "local", "deliver_in_session", _boolean),
    Option("submit", "socket", "submit", "socket", _optionalString),
    Option("submit", "trustedUsers", "submit", "trusted_users", _listOf(_string)),
    Option("submit", "senders", "submit", "senders", senderPatterns),
    Option("metrics", "listen", "metrics", "listen", _optionalEndpoint),
)

BY_NAME = {f"{option.section}.{option.key}": option for option in OPTIONS}

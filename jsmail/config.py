"""One frozen, validated configuration, from a TOML file and command-line overrides.

Every option is declared once in :data:`OPTIONS` (its TOML place, its default and how
it is checked); ``etc/jsmail.toml`` documents each one.  Configuration is checked once,
at start: a bad value raises :class:`ConfigError`, whose one-line message names where
the value came from, the key and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from twisted.internet.endpoints import serverFromString

from jsmail.address import hostPort, normaliseDomain
from jsmail.error import SMTPReplyError
from jsmail.route import TLS_MODES, Route


class ConfigError(Exception):
    """A configuration value is wrong: ``source`` (a file, or "command line"), ``key``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source, self.key, self.problem = source, key, problem


# -- value checkers: each takes the raw value and returns it typed, or raises ValueError --


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
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


def _hostname(value: Any) -> str:
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


def _endpoint(value: Any) -> str:
    description = _string(value)
    try:
        serverFromString(None, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    return description


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


def _optionalString(value: Any) -> str:
    """A string that may be empty (empty: the setting's default behaviour)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _listeners(value: Any) -> tuple[str, ...]:
    """Endpoints to listen on; ``"none"`` (or an empty list) turns the listener off."""
    if value in ("none", ["none"], ("none",)):
        return ()
    return _listOf(_endpoint)(value)


def _checker(value: Any) -> str:
    from twisted.cred import strcred

    description = _string(value)
    try:
        strcred.makeChecker(description)
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
    try:
        return Route(host=_string(value["host"]), port=_integer(1)(value.get("port", 25)),
                     tls=_choice(*TLS_MODES)(value.get("tls", "opportunistic")),
                     username=value.get("username"), password=value.get("password"),
                     domain=_hostname(value["domain"]))
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


@dataclass(frozen=True)
class Option:
    """One setting: ``field`` of :class:`Config`, found at ``section.key`` in TOML."""

    field: str
    section: str
    key: str
    check: Callable[[Any], Any]

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


OPTIONS: tuple[Option, ...] = (
    Option("hostname", "server", "hostname", _hostname),
    Option("tlsCertificate", "server", "tls_certificate", _optionalString),
    Option("tlsKey", "server", "tls_key", _optionalString),
    Option("dataDir", "server", "data", _string),
    Option("domains", "server", "domains", _listOf(_hostname)),
    Option("trustedNetworks", "server", "trusted_networks", _listOf(_network)),
    Option("postmaster", "server", "postmaster", _optionalString),
    Option("controlDir", "server", "control_dir", _optionalString),
    Option("smtpListeners", "smtp", "listen", _listeners),
    Option("submissionListeners", "smtp", "submission", _listeners),
    Option("smtpsListeners", "smtp", "smtps", _listeners),
    Option("maxMessageSize", "smtp", "max_message_size", _integer(1)),
    Option("maxCommandLine", "smtp", "max_command_line", _integer(512)),
    Option("maxTextLine", "smtp", "max_text_line", _integer(1000)),
    Option("maxRecipients", "smtp", "max_recipients", _integer(1)),
    Option("maxErrors", "smtp", "max_errors", _integer(1)),
    Option("idleTimeout", "smtp", "idle_timeout", _seconds),
    Option("maxConnections", "smtp", "max_connections", _integer(1)),
    Option("maxConnectionsPerClient", "smtp", "max_connections_per_client", _integer(1)),
    Option("bareLineEndings", "smtp", "bare_line_endings", _choice("reject", "normalise")),
    Option("maxReceivedHeaders", "smtp", "max_received_headers", _integer(1)),
    Option("passwordFile", "auth", "password_file", _optionalString),
    Option("authCheckers", "auth", "checkers", _listOf(_checker)),
    Option("senderRule", "auth", "sender_rule", _choice("any", "own")),
    Option("maxAuthFailures", "auth", "max_failures", _integer(0)),
    Option("authFailureDelay", "auth", "failure_delay", _nonNegativeSeconds),
    Option("allowPlaintextAuth", "auth", "allow_plaintext", _boolean),
    Option("allowProxyAuth", "auth", "allow_proxy", _boolean),
    Option("showAuthInReceived", "auth", "show_in_received", _boolean),
    Option("dnsServer", "remote", "dns_server", _optionalHostPort),
    Option("remotePort", "remote", "port", _integer(1)),
    Option("remoteTLS", "remote", "tls", _choice(*TLS_MODES)),
    Option("smarthost", "remote", "smarthost", _optionalHostPort),
    Option("smarthostTLS", "remote", "smarthost_tls", _choice(*TLS_MODES)),
    Option("smarthostUsername", "remote", "smarthost_username", _optionalString),
    Option("smarthostPassword", "remote", "smarthost_password", _optionalString),
    Option("routes", "remote", "routes", _listOf(_route)),
    Option("perHost", "remote", "per_host", _integer(1)),
    Option("idleTimeoutRemote", "remote", "idle_timeout", _nonNegativeSeconds),
    Option("connectTimeout", "remote", "connect_timeout", _seconds),
    Option("mtaSts", "remote", "mta_sts", _boolean),
    Option("hostBackoff", "remote", "host_backoff", _seconds),
    Option("hostBackoffMaximum", "remote", "host_backoff_max", _seconds),
    Option("retryFirst", "queue", "retry_first", _seconds),
    Option("retryFactor", "queue", "retry_factor", _factor),
    Option("retryMaximum", "queue", "retry_max", _seconds),
    Option("giveUp", "queue", "give_up", _seconds),
    Option("deliveryConcurrency", "queue", "concurrency", _integer(1)),
    Option("diskThreads", "queue", "disk_threads", _integer(1)),
    Option("deliveryProcess", "queue", "delivery_process", _boolean),
    Option("queueProgram", "queue", "program", _optionalString),
    Option("smtpChecks", "policy", "smtp", _listOf(_string)),
    Option("submissionChecks", "policy", "submission", _listOf(_string)),
    Option("smtpsChecks", "policy", "smtps", _listOf(_string)),
    Option("authservId", "policy", "authserv_id", _optionalString),
    Option("pluginOptions", "plugins", "*", _pluginTables),  # the whole [plugins] table
    Option("usersDir", "local", "users_dir", _optionalString),
    Option("homeDotQmail", "local", "home_dotqmail", _boolean),
    Option("extensionSeparator", "local", "extension_separator", _separator),
    Option("plusExtensions", "local", "plus_extensions", _boolean),
    Option("aliasesFile", "local", "aliases", _optionalString),
    Option("programTimeout", "local", "program_timeout", _seconds),
    Option("localConcurrency", "local", "concurrency", _integer(1)),
    Option("virtualDomains", "local", "virtual_domains", _listOf(_virtualDomain)),
    Option("envNoAtHost", "local", "noathost", _optionalString),
    Option("percentHack", "local", "percent_hack", _listOf(_string)),
    Option("smtpGreeting", "smtp", "greeting", _optionalString),
    Option("rcptHosts", "smtp", "rcpt_hosts", _listOf(_string)),
    Option("moreRcptHosts", "smtp", "more_rcpt_hosts", _optionalString),
    Option("badMailFrom", "smtp", "bad_mail_from", _listOf(_string)),
    Option("heloHost", "remote", "helo_host", _optionalString),
    Option("replyTimeout", "remote", "reply_timeout", _nonNegativeSeconds),
    Option("bounceFrom", "queue", "bounce_from", _string),
    Option("bounceHost", "queue", "bounce_host", _optionalString),
    Option("defaultDomain", "inject", "default_domain", _optionalString),
    Option("defaultHost", "inject", "default_host", _optionalString),
    Option("plusDomain", "inject", "plus_domain", _optionalString),
    Option("idHost", "inject", "id_host", _optionalString),
)


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs to start.  Defaults are the embedded default:
    SMTP on 127.0.0.1:2525, data in ./jsmail-data, mail for ``localhost``."""

    hostname: str = "localhost"
    tlsCertificate: str = ""  # empty: a self-signed certificate made under the data directory
    tlsKey: str = ""
    dataDir: str = "jsmail-data"
    domains: tuple[str, ...] = ("localhost",)
    trustedNetworks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    postmaster: str = ""  # where undeliverable bounces go; empty: postmaster@ the first domain
    controlDir: str = ""  # a qmail control directory read as well (see jsmail.qmail.control)
    smtpListeners: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    submissionListeners: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    smtpsListeners: tuple[str, ...] = ("tcp:2465:interface=127.0.0.1",)
    maxMessageSize: int = 25 * 1024 * 1024
    maxCommandLine: int = 512
    maxTextLine: int = 1000
    maxRecipients: int = 100
    maxErrors: int = 20
    idleTimeout: float = 300.0
    maxConnections: int = 1000
    maxConnectionsPerClient: int = 20
    bareLineEndings: str = "reject"
    maxReceivedHeaders: int = 100
    passwordFile: str = ""  # empty: DATA/passwd
    authCheckers: tuple[str, ...] = ()
    senderRule: str = "any"
    maxAuthFailures: int = 3
    authFailureDelay: float = 1.0
    allowPlaintextAuth: bool = False
    allowProxyAuth: bool = False
    showAuthInReceived: bool = False
    dnsServer: str = ""  # HOST:PORT; empty: /etc/resolv.conf
    remotePort: int = 25
    remoteTLS: str = "opportunistic"
    smarthost: str = ""  # HOST[:PORT]; empty: deliver to each domain's MX
    smarthostTLS: str = "opportunistic"
    smarthostUsername: str = ""
    smarthostPassword: str = ""
    routes: tuple[Route, ...] = ()
    perHost: int = 5
    idleTimeoutRemote: float = 10.0
    connectTimeout: float = 60.0
    mtaSts: bool = True
    hostBackoff: float = 60.0
    hostBackoffMaximum: float = 3600.0
    retryFirst: float = 300.0
    retryFactor: float = 2.0
    retryMaximum: float = 4 * 3600.0
    giveUp: float = 5 * 86400.0
    deliveryConcurrency: int = 20
    diskThreads: int = 8
    deliveryProcess: bool = True
    queueProgram: str = ""  # a qmail-queue-compatible program to hand mail to, instead of jsmail's queue
    smtpChecks: tuple[str, ...] = ()  # policy plugins by name, in order (see jsmail.policy.plugin)
    submissionChecks: tuple[str, ...] = ()
    smtpsChecks: tuple[str, ...] = ()
    authservId: str = ""  # empty: the host name
    pluginOptions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    usersDir: str = ""  # virtual users' .qmail files: <dir>/<domain>/<user>/; empty: DATA/users
    homeDotQmail: bool = False  # system users' ~/.qmail files
    extensionSeparator: str = "-"
    plusExtensions: bool = True
    aliasesFile: str = ""  # an /etc/aliases-style file; empty: none
    programTimeout: float = 3600.0
    localConcurrency: int = 10
    virtualDomains: tuple[str, ...] = ()  # qmail's "domain:prepend" lines
    envNoAtHost: str = ""  # empty: the host name
    percentHack: tuple[str, ...] = ()
    smtpGreeting: str = ""  # empty: "<hostname> ESMTP jsmail ready"
    rcptHosts: tuple[str, ...] = ()  # more domains taken at RCPT (qmail's rcpthosts)
    moreRcptHosts: str = ""  # a morercpthosts.cdb
    badMailFrom: tuple[str, ...] = ()  # qmail's badmailfrom entries, "@domain" kept as written
    heloHost: str = ""  # empty: the host name
    replyTimeout: float = 0.0  # 0: RFC 5321's timeout for each phase
    bounceFrom: str = "MAILER-DAEMON"
    bounceHost: str = ""  # empty: the host name
    defaultDomain: str = ""  # qmail-inject's controls; empty: the host name
    defaultHost: str = ""
    plusDomain: str = ""
    idHost: str = ""

    @property
    def smarthostRoute(self) -> Route | None:
        if not self.smarthost:
            return None
        host, port = hostPort(self.smarthost)
        return Route(host, port, self.smarthostTLS, self.smarthostUsername or None, self.smarthostPassword or None)

    @property
    def usersPath(self) -> str:
        return self.usersDir or os.path.join(self.dataDir, "users")

    @property
    def passwordPath(self) -> str:
        return self.passwordFile or os.path.join(self.dataDir, "passwd")


def toJSON(config: Config) -> str:
    """The configuration as JSON that :func:`fromJSON` reads back (for a child process)."""
    values = {f.name: getattr(config, f.name) for f in fields(Config)}
    values["dataDir"] = os.path.abspath(config.dataDir)
    values["trustedNetworks"] = [str(n) for n in config.trustedNetworks]
    values["routes"] = [asdict(r) for r in config.routes]
    return json.dumps(values)


def fromJSON(text: str) -> Config:
    return loadConfig(None, json.loads(text))


def defaultHostname() -> str:
    """This host's name, if it is a usable domain name, else ``localhost``."""
    try:
        return _hostname(socket.getfqdn())
    except ValueError:
        return "localhost"


def loadConfig(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the configuration: defaults, then the TOML file at ``path`` and a qmail
    control directory (``server.control_dir`` or the ``controlDir`` override; a setting
    in both is an error), then ``overrides`` (keyed by :class:`Config` field, from the
    command line)."""
    values: dict[str, Any] = {"hostname": defaultHostname()}
    fromFile = _readFile(path) if path is not None else {}
    values.update(fromFile)
    byField = {option.field: option for option in OPTIONS}
    controlDir = (overrides or {}).get("controlDir") or fromFile.get("controlDir")
    if controlDir:
        from jsmail.qmail.control import readControlDirectory

        if not os.path.isdir(controlDir):
            raise ConfigError(path or "command line", "server.control_dir", f"{controlDir} is not a directory")
        for fieldName, (raw, source) in readControlDirectory(controlDir).items():
            option = byField[fieldName]
            if fieldName in fromFile:
                raise ConfigError(str(path), option.name, f"also set by the control file {source}; set it in one place")
            try:
                values[fieldName] = option.check(raw)
            except ValueError as e:
                raise ConfigError(source, option.name, str(e)) from None
    for fieldName, raw in (overrides or {}).items():
        option = byField[fieldName]
        try:
            values[fieldName] = option.check(raw)
        except ValueError as e:
            raise ConfigError("command line", option.name, str(e)) from None
    return Config(**values)


def _readFile(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    known = {(o.section, o.key): o for o in OPTIONS}
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(path, section, "expected a [section] table")
        whole = known.get((section, "*"))
        if whole is not None:
            try:
                values[whole.field] = whole.check(table)
            except ValueError as e:
                raise ConfigError(path, section, str(e)) from None
            continue
        for key, raw in table.items():
            option = known.get((section, key))
            if option is None:
                raise ConfigError(path, f"{section}.{key}", "unknown setting")
            try:
                values[option.field] = option.check(raw)
            except ValueError as e:
                raise ConfigError(path, option.name, str(e)) from None
    return values


assert {o.field for o in OPTIONS} == {f.name for f in fields(Config)}, "every Config field is an option"

"""One frozen, validated configuration, from a TOML file, a qmail control directory and
command-line overrides.

:class:`Config` is made of one section per part (``config.smtp``, ``config.local``,
``config.queue``, ``config.remote``, ...), each the very settings object that part
takes, declared (with its defaults) beside the part.  :data:`~jsmail.options.OPTIONS` says
where each field is found in TOML and how its value is checked; ``etc/jsmail.toml`` documents each
one.  Configuration is checked once, at start: a bad value raises :class:`ConfigError`,
whose one-line message names where the value came from, the key and what is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from jsmail.auth import AuthSettings
from jsmail.listen import Endpoints
from jsmail.local.settings import LocalSettings
from jsmail.ops.settings import MetricsSettings
from jsmail.options import BY_NAME, OPTIONS, hostname
from jsmail.policy.plugin import PolicySettings
from jsmail.policy.relay import RelaySettings
from jsmail.remote.settings import RemoteSettings
from jsmail.send.settings import QueueSettings
from jsmail.smtp.settings import ServerSettings
from jsmail.submit.settings import SubmitSettings


class ConfigError(Exception):
    """A configuration value is wrong: ``source`` (a file, or "command line"), ``key``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source, self.key, self.problem = source, key, problem


@dataclass(frozen=True)
class GatewaySettings:
    """What the whole gateway shares (``config.server``, the ``[server]`` section)."""

    hostname: str = "localhost"
    tlsCertificate: str = ""  # empty: a self-signed certificate made under the data directory
    tlsKey: str = ""
    dataDir: str = "jsmail-data"
    domains: tuple[str, ...] = ("localhost",)
    trustedNetworks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    postmaster: str = ""  # where undeliverable bounces go; filled in as postmaster@ the first domain
    controlDir: str = ""  # a qmail control directory read as well (see jsmail.qmail.control)
    user: str = ""  # started as root, run as this user once the ports are bound (see jsmail.privileges)
    group: str = ""  # ... and this group; empty: the user's own




@dataclass(frozen=True)
class Config:
    """Everything the gateway needs to start, one section per part.  Defaults are the
    embedded default: SMTP on 127.0.0.1:2525, data in ./jsmail-data, mail for
    ``localhost``.  Build one with :func:`loadConfig`, which checks every value."""

    server: GatewaySettings = field(default_factory=GatewaySettings)
    listen: Endpoints = field(default_factory=Endpoints)
    smtp: ServerSettings = field(default_factory=ServerSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    submit: SubmitSettings = field(default_factory=SubmitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: The checked settings as TOML-shaped tables (what :func:`toJSON` passes on).
    source: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)


#: Each part's settings class, by section: the Config fields above, in their order.
_PARTS: dict[str, type] = {f.name: f.default_factory for f in fields(Config) if f.name != "source"}  # type: ignore[misc]


def defaultHostname() -> str:
    """This host's name, if it is a usable domain name, else ``localhost``."""
    try:
        return hostname(socket.getfqdn())
    except ValueError:
        return "localhost"


def loadConfig(path: str | None = None, overrides: Mapping[str, Any] | None = None,
               settings: Mapping[str, Mapping[str, Any]] | None = None, source: str = "configuration") -> Config:
    """Build the configuration: defaults, then ``settings`` (tables shaped as the TOML
    file, for embedders) or the TOML file at ``path``, then a qmail control directory
    (``server.control_dir``; a setting in both is an error), then ``overrides`` (keyed
    ``"section.key"``, from the command line).  Every value is checked the same way;
    errors in ``settings`` name ``source``."""
    raw: dict[str, tuple[Any, str]] = {}  # "section.key" -> (value, where it came from)
    if settings is not None:
        raw.update(_flatten(settings, source))
    if path is not None:
        raw.update(_readFile(path))
    controlDir = (overrides or {}).get("server.control_dir") or raw.get("server.control_dir", ("", ""))[0]
    if controlDir:
        from jsmail.qmail.control import readControlDirectory

        if not isinstance(controlDir, str) or not os.path.isdir(controlDir):
            raise ConfigError(path or "command line", "server.control_dir", f"{controlDir} is not a directory")
        for name, (value, controlFile) in readControlDirectory(controlDir).items():
            if name in raw:
                raise ConfigError(raw[name][1], name,
                                  f"also set by the control file {controlFile}; set it in one place")
            raw[name] = (value, controlFile)
    for name, value in (overrides or {}).items():
        raw[name] = (value, "command line")
    values: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
    values["server"]["hostname"] = defaultHostname()
    tables: dict[str, dict[str, Any]] = {}  # the checked settings, TOML-shaped
    for name, (value, where) in raw.items():
        option = BY_NAME.get(name)
        if option is None:
            raise ConfigError(where, name, "unknown setting")
        try:
            values[option.part][option.field] = option.check(value)
        except ValueError as e:
            raise ConfigError(where, option.name, str(e)) from None
        if option.key == "*":
            tables[option.section] = dict(value)
        else:
            tables.setdefault(option.section, {})[option.key] = value
    tables.get("server", {}).pop("control_dir", None)  # what it held is in the other tables now
    parts = {part: _PARTS[part](**fieldValues) for part, fieldValues in values.items()}
    credentials = parts["remote"].credentialProblem()
    if credentials is not None:
        origin = raw.get(credentials[0]) or raw["remote.smarthost"]  # a smarthost's problem may be a default
        raise ConfigError(origin[1], *credentials)
    handOff = _handOffProblem(parts)
    if handOff is not None:
        raise ConfigError(raw.get(handOff[0], raw.get("smtp.processes", ("", "configuration")))[1], *handOff)
    return _derive(Config(**parts, source=tables))


def _handOffProblem(parts: Mapping[str, Any]) -> tuple[str, str] | None:
    """What keeps ``smtp.processes`` above 1 from working: the receiving processes tell
    the delivery process of new mail through the main one, and take their connections
    from it, which it can hand over only from TCP and UNIX listeners."""
    if parts["smtp"].processes == 1:
        return None
    if not parts["queue"].deliveryProcess:
        return "queue.delivery_process", "smtp.processes above 1 needs the delivery process"
    for kind, key in (("smtp", "smtp.listen"), ("submission", "smtp.submission"), ("smtps", "smtp.smtps")):
        for description in getattr(parts["listen"], kind):
            if description.split(":", 1)[0].lower() not in ("tcp", "tcp6", "unix"):
                return key, (f"{description!r}: with smtp.processes above 1 every listener must be a tcp, tcp6 or "
                             "unix endpoint (its connections are handed to the receiving processes)")
    return None


def _derive(config: Config) -> Config:
    """Fill in the settings whose default is another setting (the host name, the
    local domains, places under the data directory), and make paths absolute, so each
    part reads a complete section of its own wherever its process runs."""
    server = config.server
    hostname, dataDir = server.hostname, os.path.abspath(server.dataDir)
    local, auth = config.local, config.auth
    return replace(
        config,
        server=replace(server, dataDir=dataDir, postmaster=server.postmaster or f"postmaster@{server.domains[0]}"),
        smtp=replace(config.smtp, hostname=hostname, authservId=config.smtp.authservId or hostname,
                     postmasterDomain=server.domains[0]),
        auth=replace(auth, passwordFile=os.path.abspath(auth.passwordFile or os.path.join(dataDir, "passwd"))),
        remote=replace(config.remote, heloHost=config.remote.heloHost or hostname),
        queue=replace(config.queue, bounceHost=config.queue.bounceHost or hostname),
        local=replace(local, noAtHost=local.noAtHost or server.domains[0], localDomains=server.domains,
                      catchAll=server.domains == ("localhost",) if local.catchAll is None else local.catchAll,
                      usersDir=os.path.abspath(local.usersDir or os.path.join(dataDir, "users")),
                      aliases=local.aliases and os.path.abspath(local.aliases)),
        submit=config.submit.placed(dataDir),
    )


def _flatten(tables: Mapping[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    """TOML-shaped tables as ``"section.key" -> (value, where)``; the ``[plugins]``
    table is one value."""
    flat: dict[str, tuple[Any, str]] = {}
    for section, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(where, str(section), "expected a [section] table")
        if f"{section}.*" in BY_NAME:
            flat[f"{section}.*"] = (table, where)
            continue
        for key, value in table.items():
            flat[f"{section}.{key}"] = (value, where)
    return flat


def _readFile(path: str) -> dict[str, tuple[Any, str]]:
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    return _flatten(document, path)


def toJSON(config: Config) -> str:
    """The configuration as JSON that :func:`fromJSON` checks and reads back (for the
    delivery process), with the data directory made absolute."""
    source = {section: dict(table) for section, table in config.source.items()}
    source.setdefault("server", {})["data"] = config.server.dataDir
    return json.dumps(source)


def fromJSON(text: str) -> Config:
    return loadConfig(settings=json.loads(text))


assert {(o.part, o.field) for o in OPTIONS} >= {
    (part, f.name) for part, cls in _PARTS.items() for f in fields(cls)
    if (part, f.name) not in {("smtp", "hostname"), ("smtp", "postmasterDomain"), ("smtp", "requireTLS"),
                              ("smtp", "requireAuth"),
                              ("local", "localDomains")}
}, "every settings field is an option, but those filled in from others and the listeners' own rules"

"""A :class:`~jsmail.config.Config` built in code, checked as the TOML file is.

An embedder may write ``Config(server=GatewaySettings(domains=("myapp.example",)))``
rather than call :func:`~jsmail.config.loadConfig`.  Such a configuration skipped every
check, kept ``localhost`` as its host name (twistd's is the FQDN), left the settings
whose default is another setting unfilled, and reached the delivery process as the
defaults.  :func:`checkedConfig` turns each setting that differs from its default back
into its TOML value and loads those through :func:`~jsmail.config.loadConfig`, so a
wrong value is the same :class:`~jsmail.config.ConfigError` a file would get.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from jsmail.config import _PARTS, Config, loadConfig
from jsmail.options import OPTIONS, Option
from jsmail.route import Route


def _toml(option: Option, value: Any) -> Any:
    """A typed setting as the value TOML would give for it."""
    words = getattr(option.check, "words", None)
    if words is not None and isinstance(value, bool):
        return words[value]
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, Route):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None and (k != "domain" or v)}
    if isinstance(value, (list, tuple)):
        return [_toml(option, v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: dict(v) if hasattr(v, "items") else v for k, v in value.items()}
    return value


def checkedConfig(config: Config) -> Config:
    """``config`` if :func:`loadConfig` made it, else the same settings checked and
    completed as if they had come from a TOML file (raises ConfigError)."""
    if config.source:
        return config
    defaults = {part: cls() for part, cls in _PARTS.items()}
    tables: dict[str, dict[str, Any]] = {}
    for option in OPTIONS:
        value = getattr(getattr(config, option.part), option.field)
        if value == getattr(defaults[option.part], option.field):
            continue
        if option.key == "*":
            tables[option.section] = _toml(option, value)
        else:
            tables.setdefault(option.section, {})[option.key] = _toml(option, value)
    return loadConfig(settings=tables, source="Config(...)")

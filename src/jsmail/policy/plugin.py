"""Policy checks as Twisted plugins, enabled by name per listener.

A plugin is an object providing :class:`IPolicyPlugin` (and ``twisted.plugin.IPlugin``)
in a module of the :mod:`jsmail.plugins` package: jsmail's own are in
``jsmail/plugins/jsmail_builtin.py``; a third party drops a module into any
``jsmail/plugins/`` directory on ``sys.path`` (see ``docs/example_plugin.py``).  The
configuration names the checks each listener runs, in order::

    [policy]
    smtp = ["dnsbl", "spf", "dkim", "dmarc"]
    submission = ["dkim-sign"]

    [plugins.dnsbl]
    zones = ["zen.spamhaus.org"]

and each plugin builds its check from its ``[plugins.NAME]`` table
(:mod:`jsmail.policy.chain` finds the plugins and builds each listener's chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from jsmail._threads import RunInThread


@dataclass(frozen=True)
class PolicySettings:
    """Which checks each listener runs, by plugin name, in order (``config.policy``,
    the ``[policy]`` section), and each plugin's ``[plugins.NAME]`` table."""

    smtp: tuple[str, ...] = ()
    submission: tuple[str, ...] = ()
    smtps: tuple[str, ...] = ()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def checksFor(self, listener: str) -> tuple[str, ...]:
        return {"smtp": self.smtp, "submission": self.submission, "smtps": self.smtps}[listener]


@dataclass(frozen=True)
class PolicyContext:
    """What a plugin may use to build its check: the gateway's reactor, DNS resolver
    (twisted.names), thread pool, names and data directory.  With ``checkOnly``
    (``--check-config``) the check is built only to be thrown away: it reads the
    files it names but must create none of them."""

    reactor: Any
    resolver: Any
    runInThread: RunInThread
    hostname: str
    authservId: str
    dataDir: str
    localDomains: frozenset[str] = field(default_factory=frozenset)
    checkOnly: bool = False


class IPolicyPlugin(Interface):
    """Makes one kind of check (an :class:`IPolicy`, :class:`IMessagePolicy` or both) or
    modifier (:class:`IModifier`)."""

    name = Attribute("The name the configuration enables it by, e.g. 'spf'.")
    description = Attribute("One line saying what it does.")

    def build(options: Mapping[str, Any], context: PolicyContext) -> object:
        """The check or modifier, from its ``[plugins.NAME]`` table.  Raise ValueError
        naming the option for a bad or unknown option."""


@implementer(IPlugin, IPolicyPlugin)
class PolicyPlugin:
    """A plugin from a name, a description and a factory ``(options, context) -> check``."""

    def __init__(self, name: str, description: str, factory: Callable[[Mapping[str, Any], PolicyContext], object]):
        self.name, self.description, self._factory = name, description, factory

    def build(self, options: Mapping[str, Any], context: PolicyContext) -> object:
        return self._factory(options, context)


class PluginError(ValueError):
    """A plugin is unknown or its options are wrong: ``key`` is where, in TOML terms."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class Options:
    """Reads a plugin's option table, refusing unknown keys and wrong types, so a typo
    in a configuration file is an error at start and not a silently ignored check."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        if not isinstance(table, Mapping):
            raise ValueError(f"expected a table of options, got {table!r}")
        self._table = dict(table)
        self._used: set[str] = set()

    def get(self, key: str, default: Any, check: Callable[[Any], Any] | None = None) -> Any:
        self._used.add(key)
        if key not in self._table:
            return default
        value = self._table[key]
        if check is not None:
            try:
                return check(value)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        if isinstance(default, bool) or isinstance(value, bool):
            fits = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            fits = isinstance(value, (int, float))
        else:
            fits = isinstance(value, type(default))
        if not fits:
            raise ValueError(f"{key}: expected {type(default).__name__}, got {value!r}")
        return value

    def choice(self, key: str, default: str, *choices: str) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise ValueError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)

    def done(self) -> None:
        """Call after reading every option: any key left over is a mistake."""
        unknown = sorted(set(self._table) - self._used)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}")

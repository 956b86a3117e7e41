"""Each listener's chain of checks: the plugins found, built in the configured order.

Plugins are found with ``twisted.plugin`` in the :mod:`jsmail.plugins` package (see
:mod:`jsmail.policy.plugin` for what a plugin is); this module is the only one that
imports that package, so the built-in plugins may import the plugin API freely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from twisted.internet.threads import deferToThread
from twisted.plugin import getPlugins

from jsmail._threads import RunInThread
from jsmail._dns import makeResolver
from jsmail.config import Config, ConfigError
from jsmail.interfaces import IMessagePolicy, IModifier, IPolicy
from jsmail.policy.plugin import IPolicyPlugin, PluginError, PolicyContext


def availablePlugins() -> dict[str, IPolicyPlugin]:
    import jsmail.plugins

    return {plugin.name: plugin for plugin in getPlugins(IPolicyPlugin, jsmail.plugins)}


@dataclass(frozen=True)
class Chain:
    """One listener's checks and modifiers, in the configured order."""

    policies: tuple[Any, ...] = ()
    modifiers: tuple[Any, ...] = ()


def buildChain(names: Sequence[str], options: Mapping[str, Mapping[str, Any]], context: PolicyContext,
               plugins: Mapping[str, IPolicyPlugin] | None = None) -> Chain:
    """Build the named checks in order; a plugin enabled on several listeners is built
    once per listener, so each listener may be given other options in a later version
    without sharing state by accident."""
    plugins = availablePlugins() if plugins is None else plugins
    policies: list[Any] = []
    modifiers: list[Any] = []
    for name in names:
        plugin = plugins.get(name)
        if plugin is None:
            known = ", ".join(sorted(plugins)) or "none"
            raise PluginError("policy", f"no policy plugin named {name!r} (known: {known})")
        try:
            built = plugin.build(options.get(name, {}), context)
        except ValueError as e:
            raise PluginError(f"plugins.{name}", str(e)) from None
        if IModifier.providedBy(built):
            modifiers.append(built)
        if IPolicy.providedBy(built) or IMessagePolicy.providedBy(built):
            policies.append(built)
        if not (IModifier.providedBy(built) or IPolicy.providedBy(built) or IMessagePolicy.providedBy(built)):
            raise PluginError(f"plugins.{name}", f"plugin {name!r} built {built!r}, which is no check")
    return Chain(tuple(policies), tuple(modifiers))


def checkPolicies(config: Config, reactor: Any) -> None:
    """Build every listener's checks once and throw them away, so ``--check-config``
    finds an unknown plugin or a bad plugin option."""
    policyChains(config, reactor, lambda f, *args, **kwargs: deferToThread(f, *args, **kwargs))


def policyChains(config: Config, reactor: Any, runInThread: RunInThread) -> dict[str, Chain]:
    """Each listener's policy checks, built from their plugins (see :mod:`jsmail.policy.plugin`).

    Raises :class:`ConfigError` for an unknown plugin or a bad plugin option."""
    names = {"smtp": config.smtpChecks, "submission": config.submissionChecks, "smtps": config.smtpsChecks}
    chains = {kind: Chain() for kind in names}
    if not any(names.values()):
        return chains  # no resolver either: it would watch resolv.conf for nothing
    context = PolicyContext(reactor, makeResolver(config.dnsServer, reactor), runInThread, config.hostname,
                            config.authservId or config.hostname, os.path.abspath(config.dataDir),
                            frozenset(config.domains))
    for kind, plugins in names.items():
        try:
            chains[kind] = buildChain(plugins, config.pluginOptions, context)
        except PluginError as e:
            key = f"policy.{kind}" if e.key == "policy" else e.key
            raise ConfigError("configuration", key, str(e)) from None
    return chains



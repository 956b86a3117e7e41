"""The plugin API under its 0.1 name, kept so plugins written for jsmail 0.1 load
unchanged.  New code imports from :mod:`jsmail.policy`."""

from jsmail.policy.plugin import IPolicyPlugin, Options, PluginError, PolicyContext, PolicyPlugin

__all__ = ["IPolicyPlugin", "Options", "PluginError", "PolicyContext", "PolicyPlugin"]

"""Checks per SMTP phase (the policy side of qmail-smtpd, and maddy's ``check/`` and
``modify/``).

What a plugin author needs is importable from here: :class:`Policy` (the base whose
phases all say yes), :class:`MessagePolicy` (the base of end-of-message checks),
:class:`Verdict`, and the plugin API (:class:`PolicyPlugin`, :class:`PolicyContext`,
:class:`Options`, :class:`IPolicyPlugin`).  The modules:

- ``base``, ``verdict``, ``plugin``: the API above;
- ``chain``: finds the plugins and builds each listener's chain;
- ``relay``: no open relay (every listener), rcpthosts, badmailfrom;
- ``access``, ``dnsbl``, ``programs``: allow/deny lists, DNS lists, check programs;
- ``spf``, ``dkim``, ``arc``, ``dmarc``, ``emailauth``: email authentication and its
  plugins, ``authresults`` the Authentication-Results field, ``spfdns`` pyspf's DNS.
"""

from jsmail.policy.base import MessagePolicy, Policy
from jsmail.policy.plugin import IPolicyPlugin, Options, PluginError, PolicyContext, PolicyPlugin
from jsmail.policy.verdict import Verdict

__all__ = ["IPolicyPlugin", "MessagePolicy", "Options", "PluginError", "Policy", "PolicyContext", "PolicyPlugin",
           "Verdict"]

"""Where policy plugins live (see :mod:`jsmail.policy.plugin`).

Like ``twisted.plugins``, this package gathers every ``jsmail/plugins/`` directory on
``sys.path``, so a third party adds a check by installing a module there.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821
__all__: list[str] = []

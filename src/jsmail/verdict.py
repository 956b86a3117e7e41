""":class:`Verdict` under its 0.1 name, kept so plugins written for jsmail 0.1 load
unchanged.  New code imports from :mod:`jsmail.policy`."""

from jsmail.policy.verdict import Verdict

__all__ = ["Verdict"]

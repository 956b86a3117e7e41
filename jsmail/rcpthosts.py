"""qmail-smtpd's rcpthosts test: which recipient domains this server takes mail for
(qmail-interfaces reference, section 2.2).

A domain is taken when it, or a suffix of it starting at a dot, is an entry of the
rcpthosts list or a key of morercpthosts.cdb (made by qmail-newmrh: lower-case keys,
empty data), compared without regard to case: the entry ``.example.org`` takes every
subdomain of example.org, ``example.org`` only itself.  The CDB is read with
``cdblib`` (the pure-cdb package) once, at start.
"""

from __future__ import annotations

from typing import Iterable


class RcptHosts:
    """The rcpthosts entries and the morercpthosts.cdb at ``cdbPath`` (empty: none)."""

    def __init__(self, entries: Iterable[str], cdbPath: str = "") -> None:
        self.entries = frozenset(e.lower() for e in entries)
        self.cdb = None
        if cdbPath:
            import cdblib

            with open(cdbPath, "rb") as f:
                self.cdb = cdblib.Reader(f.read())

    def _listed(self, key: str) -> bool:
        return key in self.entries or (self.cdb is not None and self.cdb.get(key.encode("utf-8")) is not None)

    def __call__(self, domain: str) -> bool:
        """Whether mail for ``domain`` is taken."""
        domain = domain.lower()
        if self._listed(domain):
            return True
        return any(self._listed(domain[i:]) for i, c in enumerate(domain) if c == ".")

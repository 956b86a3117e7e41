"""Where MTA-STS policies are kept between restarts (RFC 8461 section 5.1: a policy is
valid for its ``max_age``, whoever restarts meanwhile).

A :class:`PolicyStore` is an LRU of at most ``limit`` domains in memory, each also one
small JSON file under ``directory`` (``<data>/mta-sts/`` in the delivery process)::

    {"domain": "example.org", "expires": 1795362771.6,
     "policy": {"id": "20240101", "mode": "enforce", "mx": ["mx.example.org"], "max_age": 604800}}

It knows nothing of what a policy means: :mod:`jsmail.remote.mtasts` gives the
functions that turn a policy into the ``policy`` object and back.  Files are written
under a temporary name and renamed into place, in a thread, one write at a time; they
are not synced (a policy lost in a crash is fetched again, as after a first start).  A
file is input too: one that cannot be read, names another domain, or has expired is
removed at load, and none is kept longer than ``maxLifetime`` from then.  When the LRU
is full the domain used least lately goes, and its file with it.  No directory: memory
only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import OrderedDict
from typing import Any, Callable, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail._disk import unlinkQuietly, writeAndRename
from jsmail._threads import RunInThread

__all__ = ["PolicyStore"]

_log = Logger()
T = TypeVar("T")
_PLAIN = re.compile(r"[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*")
MAX_FILE = 64 * 1024  # octets: a stored policy takes a few hundred


def fileName(domain: str) -> str:
    """The file of ``domain``: its name when that is plain ASCII, else a digest (an
    internationalised domain, or anything that could name another path)."""
    if _PLAIN.fullmatch(domain) and len(domain) <= 253:
        return domain + ".json"
    return hashlib.sha256(domain.encode("utf-8")).hexdigest() + ".json"


class PolicyStore(Generic[T]):
    """Policies by domain, each with the time it expires (seconds since the epoch).
    ``encode`` makes a policy a JSON object; ``decode`` makes it back, raising
    ValueError, KeyError or TypeError for one it cannot use.  A stored policy is kept
    at most ``maxLifetime`` seconds after a load, whatever its file says."""

    def __init__(self, directory: str | None, runInThread: RunInThread, encode: Callable[[T], dict[str, Any]],
                 decode: Callable[[dict[str, Any]], T], limit: int = 10_000, maxLifetime: float = 31557600) -> None:
        self.directory = directory
        self.maxLifetime = maxLifetime
        self.runInThread = runInThread
        self.encode = encode
        self.decode = decode
        self.limit = limit
        self._entries: OrderedDict[str, tuple[T, float]] = OrderedDict()
        self._writes: set[defer.Deferred[None]] = set()
        self._order = defer.DeferredLock()  # one write at a time, in the order asked

    def load(self, now: float) -> defer.Deferred[None]:
        """Read every stored policy that has not expired by ``now``, oldest first."""
        if self.directory is None:
            return defer.succeed(None)

        def loaded(found: list[tuple[str, T, float]]) -> None:
            for domain, policy, expires in found:
                self._entries[domain] = (policy, expires)
                self._entries.move_to_end(domain)
            self._evict()
            _log.info("MTA-STS: {count} stored policies loaded from {directory}", count=len(found),
                      directory=self.directory)

        return self.runInThread(self._read, now).addCallback(loaded)

    def _read(self, now: float) -> list[tuple[str, T, float]]:
        assert self.directory is not None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        found = []
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if not name.endswith(".json"):
                unlinkQuietly(path)  # a write a crash cut short
                continue
            try:
                if os.path.getsize(path) > MAX_FILE:
                    raise ValueError("too large")
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                domain, expires = data["domain"], float(data["expires"])
                if not (math.isfinite(expires) and isinstance(domain, str) and fileName(domain) == name
                        and isinstance(data["policy"], dict)):
                    raise ValueError("not a stored policy")
                policy = self.decode(data["policy"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                _log.info("MTA-STS: removing unreadable stored policy {path}: {error}", path=path, error=e)
                unlinkQuietly(path)
                continue
            if expires <= now:
                unlinkQuietly(path)
                continue
            found.append((os.path.getmtime(path), domain, policy, min(expires, now + self.maxLifetime)))
        return [(domain, policy, expires) for _, domain, policy, expires in sorted(found, key=lambda f: f[0])]

    def get(self, domain: str) -> tuple[T, float] | None:
        """The stored policy of ``domain`` and when it expires (now its latest use)."""
        entry = self._entries.get(domain)
        if entry is not None:
            self._entries.move_to_end(domain)
        return entry

    def put(self, domain: str, policy: T, expires: float) -> None:
        """Keep ``policy`` until ``expires``, on disk too."""
        self._entries[domain] = (policy, expires)
        self._entries.move_to_end(domain)
        self._evict()
        if self.directory is not None:
            data = json.dumps({"domain": domain, "expires": expires, "policy": self.encode(policy)},
                              ensure_ascii=False)
            name = fileName(domain)
            self._write(writeAndRename, os.path.join(self.directory, f".{name}.tmp"),
                        os.path.join(self.directory, name), data.encode("utf-8"))

    def drop(self, domain: str) -> None:
        """Forget ``domain``'s policy (it has expired)."""
        if self._entries.pop(domain, None) is not None and self.directory is not None:
            self._write(unlinkQuietly, os.path.join(self.directory, fileName(domain)))

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        while len(self._entries) > self.limit:
            domain, _ = self._entries.popitem(last=False)
            if self.directory is not None:
                self._write(unlinkQuietly, os.path.join(self.directory, fileName(domain)))

    def _write(self, f: Any, *args: Any) -> None:
        d = self._order.run(self.runInThread, f, *args)
        self._writes.add(d)

        def done(result: object) -> None:
            self._writes.discard(d)
            if isinstance(result, Failure):
                _log.info("MTA-STS: cannot update the stored policies: {error}", error=result.getErrorMessage())

        d.addBoth(done)

    def settled(self) -> defer.Deferred[Any]:
        """Fires once the writes under way are done."""
        return defer.DeferredList(list(self._writes))

"""How jsmail starts its own child processes, the delivery process
(:mod:`jsmail.send.process`) and the receiving processes (:mod:`jsmail.receiver`)
(:func:`spawnChild`), and what each does first (:func:`startChild`).

Each logs through its parent, one JSON event per line on its standard output, the
lines of one reactor pass in one write; reads its configuration from a descriptor the
parent writes and closes (never the environment: it holds secrets, and every program
the child runs would inherit it); becomes the configured user should it start as root;
and, with metrics on, hands its measurements to the parent.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

from jsmail import metrics
from jsmail._process import EventWriter
from jsmail.config import Config, fromJSON, toJSON
from jsmail.ops.logformat import HeldLines
from jsmail.privileges import PrivilegeError, becomeUser, identityOf

CONFIG_FD = 3  # where a child reads its configuration


def spawnChild(reactor: Any, child: Any, module: str, config: Config, arguments: Sequence[str] = (),
               descriptors: Mapping[int, int] = {}) -> Any:
    """Start ``python -m module arguments`` with this process's environment and import
    path: its standard input a pipe for the parent's notices, its standard output a
    pipe of log events (:class:`jsmail._process.LogLines`), standard error shared,
    ``descriptors`` (child's number: ours) given, and ``config`` written to
    :data:`CONFIG_FD` and closed.  Returns the process transport (``child``, a
    ProcessProtocol, gets it too); raises what ``spawnProcess`` raises."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-m", module, *arguments]
    childFDs: dict[int, Any] = {0: "w", 1: "r", 2: 2, CONFIG_FD: "w", **descriptors}
    transport = reactor.spawnProcess(child, sys.executable, argv, env=environment, childFDs=childFDs)
    transport.writeToChild(CONFIG_FD, toJSON(config).encode("utf-8"))
    transport.closeChildFD(CONFIG_FD)
    return transport


def startChild(who: str, reactor: Any) -> tuple[Config, metrics.Forwarder | None]:
    """The configuration, and the recorder installed when metrics are on; exits with
    status 111 (qmail's temporary failure) when the configured user cannot be become."""
    os.umask(0o077)
    held: Any = HeldLines(sys.stdout, reactor)  # a text file to EventWriter
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([EventWriter(held)], redirectStandardIO=False)
    with os.fdopen(CONFIG_FD, "rb") as f:
        config = fromJSON(f.read().decode("utf-8"))
    if os.geteuid() == 0 and config.server.user:
        try:
            becomeUser(identityOf(config.server.user, config.server.group))
        except PrivilegeError as e:
            sys.stderr.write(f"jsmail {who}: {e}\n")
            sys.exit(111)
    forwarder = None
    if config.metrics.listen:  # the parent counts what this process measures
        forwarder = metrics.Forwarder()
        metrics.install(forwarder)
    return config, forwarder

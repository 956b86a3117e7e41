"""``twistd jsmail --log-format json``: the log as one JSON object per line.

twistd picks its log observer before it builds the service, from its own ``--logger``
option (a dotted name of a factory taking no arguments).  So the ``jsmail`` options
name :func:`jsonObserver` there and tell this module, through :func:`configure`,
where twistd would have written: stdout under ``-n`` without ``--logfile``, else the
file (``twistd.log`` by default), rotated as twistd rotates its text log (at 1 MB, and
on SIGUSR1).

Each line is :func:`twisted.logger.eventAsJSON` of one event: every field of an
operator-log event (``event``, ``queueId``, ``session``, ``client``, ``sender``,
``recipient``, ``reply``, ``check``, ...) plus Twisted's own (``log_time``,
``log_namespace``, ``log_level``, ``log_format``).  The silent events that carry the
delivery process's measurements (:data:`jsmail.metrics.NAMESPACE`) are left out.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevelFilterPredicate,
    PredicateResult,
    jsonFileLogObserver,
)
from twisted.python.logfile import LogFile

from jsmail.metrics import NAMESPACE

#: The dotted name given to twistd's ``--logger``.
FACTORY = "jsmail.ops.logformat.jsonObserver"

_destination: tuple[str, bool] = ("", True)


def configure(logfile: str | None, nodaemon: bool) -> None:
    """Remember twistd's ``--logfile`` and ``--nodaemon`` for :func:`jsonObserver`."""
    global _destination
    _destination = (logfile or "", nodaemon)


def _open(logfile: str, nodaemon: bool) -> TextIO | LogFile:
    if logfile == "-" or (nodaemon and not logfile):
        return sys.stdout
    rotating = LogFile.fromFullPath(logfile or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(*_: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(rotating.rotate)  # type: ignore[attr-defined]  # the stub lacks IReactorThreads

        signal.signal(signal.SIGUSR1, rotate)
    return rotating


def _notMeasurement(event: dict[str, Any]) -> PredicateResult:
    return PredicateResult.no if event.get("log_namespace") == NAMESPACE else PredicateResult.maybe


def jsonObserver() -> ILogObserver:
    """twistd's log observer for ``--log-format json``."""
    # a LogFile is a text file to it; a function is an ILogFilterPredicate to Twisted (not to its stubs)
    observer = jsonFileLogObserver(_open(*_destination), recordSeparator="")  # type: ignore[arg-type]
    return FilteringLogObserver(observer, [_notMeasurement, LogLevelFilterPredicate()])  # type: ignore[list-item]

"""``twistd jsmail --log-format``: the log as text lines, or as one JSON object per
line; either way without Twisted's chatter.

twistd picks its log observer before it builds the service, from its own ``--logger``
option (a dotted name of a factory taking no arguments).  So the ``jsmail`` options
name :func:`jsonObserver` there and tell this module, through :func:`configure`,
where twistd would have written: stdout under ``-n`` without ``--logfile``, else the
file (``twistd.log`` by default), rotated as twistd rotates its text log (at 1 MB, and
on SIGUSR1).

The text lines are twistd's own (:func:`textObserver`), written with less work: each
second's timestamp is formatted once instead of once per line, and an operator-log
event's text is made by ``str.format_map``, not by Twisted's formatter (written in
Python, to allow calls in a format).  The two made most of the cost of logging, which
came to a fifth of the receiving process's CPU.

Each JSON line is :func:`twisted.logger.eventAsJSON` of one event: every field of an
operator-log event (``event``, ``queueId``, ``session``, ``client``, ``sender``,
``recipient``, ``reply``, ``check``, ...) plus Twisted's own (``log_time``,
``log_namespace``, ``log_level``, ``log_format``).  The silent events that carry the
delivery process's measurements (:data:`jsmail.metrics.NAMESPACE`) are left out.

Left out of both (newcomer review 13): the four lines Twisted writes for every DNS
query (a UDP port and a protocol, each started and stopped), its "starting on" line
for each listening port (jsmail's own "Listening for ..." line says more), factories
started and stopped for each outgoing connection, and resolv.conf being read.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from typing import Any, TextIO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)
from twisted.python.logfile import LogFile

from jsmail.metrics import NAMESPACE

#: The dotted names given to twistd's ``--logger``.
FACTORY = "jsmail.ops.logformat.jsonObserver"
TEXT_FACTORY = "jsmail.ops.logformat.textObserver"

#: Twisted's legacy log lines that say nothing an operator needs (see above).
_CHATTER = re.compile(
    r"\S+(?: \(TLS\))? starting on \S+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(?:Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol object at \w+>"
    r"|\S+ changed, reparsing"
    r"|Resolver added \(.*\) to server list")
_FACTORY_EVENTS = ("Starting factory {factory!r}", "Stopping factory {factory!r}")

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


def notChatter(event: dict[str, Any]) -> PredicateResult:
    """Leave out Twisted's lines about its own machinery (see the module docstring)."""
    if event.get("log_format") in _FACTORY_EVENTS:
        return PredicateResult.no
    message = event.get("message")
    if event.get("log_namespace") == "log_legacy" and message and not event.get("isError"):
        if _CHATTER.fullmatch(" ".join(str(m) for m in message)):
            return PredicateResult.no
    return PredicateResult.maybe


def jsonObserver() -> ILogObserver:
    """twistd's log observer for ``--log-format json``."""
    # a LogFile is a text file to it; a function is an ILogFilterPredicate to Twisted (not to its stubs)
    observer = jsonFileLogObserver(HeldLines(_open(*_destination)), recordSeparator="")  # type: ignore[arg-type]
    predicates = [_notMeasurement, notChatter, LogLevelFilterPredicate()]
    return FilteringLogObserver(observer, predicates)  # type: ignore[arg-type]


class _SecondsCache:
    """:func:`twisted.logger.formatTime`, remembered for the last second it was asked
    (its format shows whole seconds, and a time zone's offset changes only between
    two of them)."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when // 1)
        if second != self._second:
            self._second, self._text = second, formatTime(when)
        return self._text


_MAILLOG = "jsmail.maillog"


def classicLine(event: dict[str, Any], formatTime: Any = formatTime) -> str | None:
    """:func:`twisted.logger.formatEventAsClassicLogText`, the same line made faster
    for an operator-log event (whose format has only plain fields)."""
    if (event.get("log_namespace") == _MAILLOG and "log_failure" not in event and "log_system" not in event
            and "log_flattened" not in event):
        try:
            text = event["log_format"].format_map(event)
            level = event["log_level"].name
        except Exception:
            pass  # Twisted's formatter says what went wrong in the line
        else:
            if text:
                text = text.replace("\n", "\n\t")
                return f"{formatTime(event.get('log_time'))} [{_MAILLOG}#{level}] {text}\n"
    return formatEventAsClassicLogText(event, formatTime)


class HeldLines:
    """A text file whose lines are held while the reactor runs and written together at
    the start of its next pass (or once :data:`HELD_MOST` characters wait), so that a
    message's five or so log lines cost one write and one flush between them and the
    other sessions' lines, not one each: Twisted's file observer flushes after every
    event.  A line is on its way to the file a pass of the loop after its event, so
    at most that pass's lines are lost if the process is killed outright.  Made on
    the reactor's thread (as twistd makes its observer); lines written from another
    thread are passed to it.  While the reactor is not running (starting up, after it
    stopped) lines are written at once."""

    def __init__(self, target: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._target = target
        self._reactor = reactor
        self._held: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._due = False
        self._reactorThread = threading.get_ident()
        reactor.addSystemEventTrigger("after", "shutdown", self.writeHeld)

    def write(self, text: str) -> None:
        if not self._reactor.running:
            self.writeHeld()
            self._target.write(text)
            self._target.flush()
            return
        with self._lock:
            self._held.append(text)
            self._size += len(text)
            due, self._due = self._due, True
            full = self._size >= HELD_MOST
        onReactorThread = threading.get_ident() == self._reactorThread
        if full and onReactorThread:
            self.writeHeld()
        elif not due:
            if onReactorThread:
                self._reactor.callLater(0, self.writeHeld)
            else:
                self._reactor.callFromThread(self.writeHeld)

    def flush(self) -> None:
        """Nothing: the held lines are written (and flushed) by :meth:`writeHeld`."""

    def writeHeld(self) -> None:
        with self._lock:
            held, self._held, self._size, self._due = self._held, [], 0, False
        if held:
            self._target.write("".join(held))
            self._target.flush()


HELD_MOST = 64 * 1024


def textObserver() -> ILogObserver:
    """twistd's log observer for ``--log-format text``, the default: twistd's own lines,
    without Twisted's chatter."""
    cachedTime = _SecondsCache()
    observer = FileLogObserver(HeldLines(_open(*_destination)),  # type: ignore[arg-type]  # a text file to it
                               lambda event: classicLine(event, cachedTime))
    return FilteringLogObserver(observer, [notChatter])  # type: ignore[list-item]

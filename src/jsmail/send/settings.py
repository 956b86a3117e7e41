"""The scheduler's settings (``config.queue``, the ``[queue]`` section): a value the
configuration can name without importing the scheduler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueSettings:
    """When to try again: ``retryFirst`` seconds after the first failure, growing by
    ``retryFactor`` each time up to ``retryMaximum``; give up ``giveUp`` seconds after
    arrival.  The defaults follow RFC 5321 section 4.5.4.1 in spirit (retry within
    minutes, at growing intervals, for 4-5 days).  At most ``concurrency`` messages
    are in delivery at once; blocking disk work gets ``diskThreads`` threads.
    ``bounceHost`` (filled in from ``server.hostname`` when empty) and ``bounceFrom``
    make the bounces' From.  A message still waiting ``delayWarning`` seconds after
    arrival warns the sender, once, about the recipients whose NOTIFY has DELAY or who
    gave none (0: never)."""

    retryFirst: float = 300.0
    retryFactor: float = 2.0
    retryMaximum: float = 4 * 3600.0
    giveUp: float = 5 * 86400.0
    concurrency: int = 20
    diskThreads: int = 8
    deliveryProcess: bool = True  # deliver in a process of its own (qmail-send beside qmail-smtpd)
    program: str = ""  # a qmail-queue-compatible program to hand mail to, instead of jsmail's queue
    bounceFrom: str = "MAILER-DAEMON"
    bounceHost: str = ""
    delayWarning: float = 4 * 3600.0
    rescanInterval: float = 900.0  # seconds between looks at the whole queue (qmail-send's are 25 minutes)

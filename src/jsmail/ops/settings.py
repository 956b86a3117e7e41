"""The ``[metrics]`` section: where the metrics and status page listen."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsSettings:
    """``listen``: a Twisted endpoint for ``/metrics`` (Prometheus) and ``/`` (the
    status page); empty, the default, turns both off.  Neither needs a password, so
    listen on loopback or a management network only."""

    listen: str = ""

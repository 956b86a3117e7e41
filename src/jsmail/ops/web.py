"""The metrics endpoint (``[metrics] listen``): Prometheus's ``/metrics`` and the
status page at ``/``, on a listener of their own, beside the SMTP listeners.

:class:`OperationsService` is a child of the gateway: while it runs, its observer
counts the operator log and the hooks of :mod:`jsmail.metrics` go to its series.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.application.service import MultiService
from twisted.internet import threads
from twisted.logger import Logger, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from jsmail import __version__, metrics
from jsmail.listen import ListenerService
from jsmail.ops.certinfo import readCertificate
from jsmail.ops.observer import MaillogObserver
from jsmail.ops.queuestate import QueueWatcher
from jsmail.ops.status import StatusInfo, renderStatus

_log = Logger()


class StatusPage(Resource):
    """``/``: the status page (see :mod:`jsmail.ops.status`); ``/metrics`` is its child."""

    def __init__(self, service: OperationsService) -> None:
        super().__init__()
        self.service = service

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # The queue is read in a thread; the page is put together in the reactor's,
        # where the observer's figures change.
        d = threads.deferToThreadPool(self.service.reactor, self.service.reactor.getThreadPool(),
                                      self.service.queue.state)

        def render(queue: Any) -> None:
            request.write(renderStatus(self.service.statusInfo(queue)))
            request.finish()

        def failed(failure: Any) -> None:
            _log.failure("Cannot render the status page", failure)
            request.setResponseCode(500)
            request.finish()

        d.addCallback(render).addErrback(failed)
        return NOT_DONE_YET


class OperationsService(MultiService):
    """Metrics and the status page for ``gateway`` (a :class:`jsmail.service.MailGateway`),
    listening on ``description``."""

    def __init__(self, gateway: Any, description: str) -> None:
        super().__init__()
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.metrics = metrics.Metrics()
        self.queue = QueueWatcher(os.path.join(gateway.dataDir, "queue"))
        self.metrics.registry.register(self.queue)
        self.observer = MaillogObserver(self.metrics)
        self.started = time.time()
        root = StatusPage(self)
        root.putChild(b"metrics", MetricsResource(self.metrics.registry))
        site: Any = Site(root)
        site.noisy = False
        self.listener = ListenerService(self.reactor, description, site, "metrics")
        self.listener.setServiceParent(self)
        self._previous: metrics.Recorder | None = None

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.observer)
        self._previous = metrics.install(self.metrics)
        super().startService()

    def stopService(self) -> Any:
        globalLogPublisher.removeObserver(self.observer)
        metrics.install(self._previous)
        return super().stopService()

    def statusInfo(self, queue: Any) -> StatusInfo:
        """What the status page shows now."""
        gateway = self.gateway
        services = [*gateway.listeners, *filter(None, [gateway.localSubmission]), self.listener]
        listeners = [(s.kind, s.description, _where(s.port)) for s in services]
        return StatusInfo(hostname=gateway.config.server.hostname, version=__version__, started=self.started,
                          queue=queue, observer=self.observer, listeners=listeners,
                          certificate=readCertificate(gateway.tls.certificatePath))


def _where(port: Any) -> str:
    if port is None:
        return "not listening"
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    name = getattr(host, "name", host)  # a UNIX socket's path, which Twisted keeps as bytes
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)

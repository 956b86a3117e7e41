"""The one source of threads: blocking work (disk, bcrypt, pyspf, dkimpy) runs in a
pool, never on the reactor thread.

Parts take a :data:`RunInThread` (``runInThread(f, *args) -> Deferred``) and never
create threads themselves.  :class:`ThreadPoolService` owns the gateway's pools, one per
kind of work, so that slow work of one kind (a DNS-bound check waiting on a slow server)
cannot starve another (a disk sync, a password check).  :func:`runNow` runs the work on
the spot, for embedders and tests that want no threads; :func:`reactorThreads` uses the
reactor's own pool, for a part used on its own outside a gateway.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

RunInThread = Callable[..., "defer.Deferred[Any]"]

_log = Logger()


def runNow(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """A :data:`RunInThread` that runs ``f`` at once, on the calling thread."""
    return defer.maybeDeferred(f, *args, **kwargs)


def reactorThreads(reactor: Any) -> RunInThread:
    """A :data:`RunInThread` on the reactor's own thread pool."""
    return lambda f, *args, **kwargs: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


class ThreadPoolService(MultiService):
    """A MultiService whose children share named thread pools: the pools start before
    the children and stop after them (work in progress needs them to finish)."""

    def __init__(self, reactor: Any, sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.reactor = reactor
        self.pools = {name: ThreadPool(minthreads=0, maxthreads=size, name=f"jsmail-{name}")
                      for name, size in sizes.items()}

    def threads(self, kind: str) -> RunInThread:
        """Run blocking work of ``kind`` (a name given at construction) in its pool."""
        pool = self.pools[kind]
        return lambda f, *args, **kwargs: deferToThreadPool(self.reactor, pool, f, *args, **kwargs)

    def startService(self) -> None:
        self.startPools()
        super().startService()

    def startPools(self) -> None:
        for pool in self.pools.values():
            if not pool.started:
                pool.start()

    def stopService(self) -> defer.Deferred[None]:
        if not self.running:
            return defer.succeed(None)
        d = defer.maybeDeferred(super().stopService)

        def stopped(result: object) -> defer.Deferred[object]:
            def stopPools(ended: object) -> object:
                if isinstance(ended, Failure):
                    _log.failure("Stopping failed", ended)
                for pool in self.pools.values():
                    pool.stop()
                return result

            return defer.maybeDeferred(self.childrenStopped).addBoth(stopPools)

        return d.addBoth(stopped)

    def childrenStopped(self) -> defer.Deferred[Any] | None:
        """Called once every child has stopped; the pools stop once what it returns
        has fired (work that still needs a pool, such as a last write, ends first)."""
        return None


class Batches:
    """Runs blocking jobs a batch at a time, one batch in a thread at once: the jobs
    that come while a batch runs make up the next.  For many small jobs from many
    sessions (a rename per message): one thread hop per batch instead of per job, and
    no threads of a pool taking the GIL from the reactor thread, and each other, in
    turns."""

    def __init__(self, runInThread: RunInThread, finish: Callable[[], None] | None = None,
                 prepare: Callable[[], None] | None = None) -> None:
        """``finish``: run in the thread after each batch in which a job succeeded (a
        sync of what the jobs wrote); if it raises, those jobs fail with
        :class:`BatchNotFinished`, which carries what each one returned.  ``prepare``:
        run in the thread before each batch's jobs (to forget what the last batch
        learned); if it raises, every job of the batch fails with its error."""
        self._runInThread = runInThread
        self._finish = finish
        self._prepare = prepare
        self._pending: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []
        self._running = False

    def run(self, job: Callable[[], Any]) -> defer.Deferred[Any]:
        """Fires with what ``job()`` returns, or fails with what it raised."""
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending.append((job, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._pending = self._pending, []
        self._running = True
        self._runInThread(_runEach, [job for job, _ in batch], self._finish, self._prepare).addBoth(self._done, batch)

    def _done(self, outcomes: list[Any] | Failure, batch: list[tuple[Callable[[], Any], defer.Deferred[Any]]]) -> None:
        self._running = False
        if self._pending:
            self._start()
        for i, (_, d) in enumerate(batch):
            outcome = outcomes if isinstance(outcomes, Failure) else outcomes[i]
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)


class BatchNotFinished(Exception):
    """The job succeeded, with ``result``, but the batch's ``finish`` then failed
    (``failure``)."""

    def __init__(self, result: Any, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage())
        self.result = result
        self.failure = failure


def _runEach(jobs: list[Callable[[], Any]], finish: Callable[[], None] | None,
             prepare: Callable[[], None] | None = None) -> list[Any]:
    """Each job's result, or its Failure: one job's error is its own."""
    if prepare is not None:
        prepare()  # its error fails the whole batch
    outcomes: list[Any] = []
    for job in jobs:
        try:
            outcomes.append(job())
        except BaseException:
            outcomes.append(Failure())
    if finish is not None and not all(isinstance(outcome, Failure) for outcome in outcomes):
        try:
            finish()
        except BaseException:
            failed = Failure()
            outcomes = [o if isinstance(o, Failure) else Failure(BatchNotFinished(o, failed)) for o in outcomes]
    return outcomes

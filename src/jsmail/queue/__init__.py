"""The queue (qmail-queue and qmail-clean): the durable store on disk
(:mod:`~jsmail.queue.store`), the same interface in memory (:mod:`~jsmail.queue.memory`),
the one funnel every message enters by (:mod:`~jsmail.queue.funnel`), and the
operator's functions (:mod:`~jsmail.queue.admin`).  ``docs/queue.rst`` is the state
table."""

from jsmail.queue.funnel import Funnel
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue, newQueueId

__all__ = ["Funnel", "MaildirQueue", "MemoryQueue", "newQueueId"]

"""twistd plugin stub: ``twistd -n jsmail``; the work is in :mod:`jsmail.tap`."""

from twisted.application.service import ServiceMaker

jsmail = ServiceMaker(
    "jsmail",
    "jsmail.tap",
    "A mail gateway: ESMTP into a durable queue, delivered to local maildirs.",
    "jsmail",
)

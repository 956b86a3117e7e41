"""twisted.mail peer: accepts mail for any local part @localhost into Maildirs.

Usage: peer_twistedmail.py PORT DATADIR   (listens on 127.0.0.1:PORT)

An ESMTP server whose IMessage collects the lines and, at the final dot,
writes and fsyncs the Maildir file in the reactor's thread pool
(deferToThread) before the 250 is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from maildir import deliver, maildir_for
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.task import react
from twisted.internet.threads import deferToThread
from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class MaildirMessage:
    """One message being received for one Maildir."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        self.lines.append(b"")
        data = b"\n".join(self.lines)
        self.lines = []
        return deferToThread(deliver, self.maildir, data)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class MaildirDelivery:
    """Accept any sender, and any recipient @localhost."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def receivedHeader(self, helo: tuple[bytes, bytes], origin: smtp.Address,
                       recipients: list[smtp.User]) -> None:
        return None

    def validateFrom(self, helo: tuple[bytes, bytes],
                     origin: smtp.Address) -> smtp.Address:
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], MaildirMessage]:
        if user.dest.domain.lower() != b"localhost":
            raise smtp.SMTPBadRcpt(user)
        maildir = maildir_for(self.base, str(user.dest))
        return lambda: MaildirMessage(maildir)


class QuietESMTP(smtp.ESMTP):
    """ESMTP without a log line per message."""

    noisy = False


class MaildirFactory(smtp.SMTPFactory):
    """Builds ESMTP protocols sharing one MaildirDelivery."""

    protocol = QuietESMTP
    domain = b"localhost"

    def __init__(self, delivery: MaildirDelivery) -> None:
        super().__init__()
        self.delivery = delivery

    def buildProtocol(self, addr: object) -> smtp.SMTP:
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        return p


def main(reactor: IReactorTCP, port: str, base: str) -> defer.Deferred[object]:
    """Listen on 127.0.0.1:``port`` until killed."""
    endpoint = endpoints.TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1")
    listening = endpoint.listen(MaildirFactory(MaildirDelivery(Path(base))))
    return listening.addCallback(lambda _: defer.Deferred())


if __name__ == "__main__":
    react(main, sys.argv[1:3])

"""Unknown local recipients are refused at RCPT (550 5.1.1), as Postfix's
local_recipient_maps does, so that nothing for a mailbox that does not exist is
accepted and then bounced to a sender who may be forged (security review M-1, M-8).

With ``catchAll`` every well-formed local part of a local domain is taken, and gets a
Maildir of its own: the try-it default on localhost, and nowhere else unless an
operator turns it on."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from jsmail import reply
from jsmail._threads import RunInThread
from jsmail.address import Address
from jsmail.error import SMTPReplyError
from jsmail.local.directory import RecipientDirectory
from jsmail.policy.base import Policy

#: Seconds a recipient found is taken as known without looking again, and how many
#: are remembered: a busy mailbox costs one disk lookup (and thread hop) per
#: ``KNOWN_FOR`` seconds instead of one per message.  Answers "unknown" are never kept.
KNOWN_FOR = 5.0
KNOWN_MEMORY = 4096


class KnownRecipients(Policy):
    """Looks each local recipient up in a :class:`RecipientDirectory` (in a thread),
    remembering the ones found for :data:`KNOWN_FOR` seconds."""

    def __init__(self, directory: RecipientDirectory, runInThread: RunInThread,
                 clock: IReactorTime | None = None) -> None:
        self.directory = directory
        self.runInThread = runInThread
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock: IReactorTime = clock
        self._known: dict[str, float] = {}  # recipient -> when it was found

    def checkRecipient(self, session: object, address: Address, params: dict) -> Any:
        if not self.directory.isLocal(address.domain) or address.local.lower() == "postmaster":
            return None
        recipient = str(address)
        foundAt = self._known.get(recipient)
        if foundAt is not None:
            if self.clock.seconds() - foundAt < KNOWN_FOR:
                return None
            del self._known[recipient]

        def found(exists: bool) -> None:
            if not exists:
                raise SMTPReplyError(reply.NO_SUCH_USER.format(recipient), f"no mailbox for <{recipient}>")
            if len(self._known) >= KNOWN_MEMORY:
                del self._known[next(iter(self._known))]
            self._known[recipient] = self.clock.seconds()

        d: defer.Deferred[bool] = self.runInThread(self.directory.exists, recipient)
        return d.addCallback(found)

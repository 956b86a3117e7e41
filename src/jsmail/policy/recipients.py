"""Unknown local recipients are refused at RCPT (550 5.1.1), as Postfix's
local_recipient_maps does, so that nothing for a mailbox that does not exist is
accepted and then bounced to a sender who may be forged (security review M-1, M-8).

With ``catchAll`` every well-formed local part of a local domain is taken, and gets a
Maildir of its own: the try-it default on localhost, and nowhere else unless an
operator turns it on."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from jsmail import reply
from jsmail._threads import RunInThread
from jsmail.address import Address
from jsmail.error import SMTPReplyError
from jsmail.local.directory import RecipientDirectory
from jsmail.policy.base import Policy


class KnownRecipients(Policy):
    """Looks each local recipient up in a :class:`RecipientDirectory` (in a thread)."""

    def __init__(self, directory: RecipientDirectory, runInThread: RunInThread) -> None:
        self.directory = directory
        self.runInThread = runInThread

    def checkRecipient(self, session: object, address: Address, params: dict) -> Any:
        if not self.directory.isLocal(address.domain) or address.local.lower() == "postmaster":
            return None
        recipient = str(address)

        def found(exists: bool) -> None:
            if not exists:
                raise SMTPReplyError(reply.NO_SUCH_USER.format(recipient), f"no mailbox for <{recipient}>")

        d: defer.Deferred[bool] = self.runInThread(self.directory.exists, recipient)
        return d.addCallback(found)

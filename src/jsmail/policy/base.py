"""The base classes of checks: :class:`Policy` for the SMTP phases up to RCPT
(:class:`jsmail.interfaces.IPolicy`), :class:`MessagePolicy` for the whole message at
its end (:class:`jsmail.interfaces.IMessagePolicy`).  Each objects to nothing; a check
overrides what it cares about, and claims only the interface it implements."""

from __future__ import annotations

from typing import TypeAlias

from twisted.internet.defer import Deferred
from zope.interface import implementer

from jsmail.address import Address
from jsmail.interfaces import IMessagePolicy, IPolicy
from jsmail.policy.verdict import Verdict

#: What a phase answers: nothing to object, a verdict, or either one later.
Answer: TypeAlias = "Deferred[Verdict | None] | Verdict | None"


@implementer(IPolicy)
class Policy:
    """A check that objects to nothing; override the phases you care about."""

    def checkConnect(self, session: object) -> Answer:
        return None

    def checkHelo(self, session: object, name: str) -> Answer:
        return None

    def checkSender(self, session: object, address: Address, params: dict) -> Answer:
        return None

    def checkRecipient(self, session: object, address: Address, params: dict) -> Answer:
        return None


@implementer(IMessagePolicy)
class MessagePolicy:
    """A check of the whole message that objects to nothing; override :meth:`checkMessage`."""

    def checkMessage(self, session: object, content: object) -> Answer:
        return None

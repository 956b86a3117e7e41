"""What is known about one SMTP client and its current transaction: the
:class:`~jsmail.interfaces.ISession` that checks read, and smtpd keeps up to date."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from jsmail.address import Address
from jsmail.auth import IMailUser
from jsmail.envelope import Recipient
from jsmail.interfaces import ISession
from jsmail.policy.chain import Additions


@implementer(ISession)
@dataclass
class Session:
    """One client's session (see :class:`~jsmail.interfaces.ISession`)."""

    clientAddress: str
    clientPort: int = 0
    clientHost: str = ""  # the client's name where known (tcpserver's TCPREMOTEHOST), for Received
    listener: str = "smtp"
    sessionId: str = "-"  # the operator log's id for this session (jsmail.maillog.newSessionId)
    queueId: str = "-"  # the current message's, once its content has begun
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    tlsInfo: str = ""  # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384", once the handshake is done
    user: IMailUser | None = None
    sender: Address | None = None
    mailParams: dict[str, str | None] = field(default_factory=dict)
    recipients: list[Recipient] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # what checks learnt about the connection
    transactionNotes: dict[str, Any] = field(default_factory=dict)  # ... and about this message
    added: Additions = field(default_factory=Additions)  # what accepting verdicts add, for the message

    @property
    def client(self) -> str:
        return f"[{self.clientAddress}]:{self.clientPort}"

    def resetTransaction(self) -> None:
        self.queueId = "-"
        self.sender = None
        self.mailParams = {}
        self.recipients = []
        self.transactionNotes = {}
        self.added.forgetTransaction()

    def withProtocol(self) -> str:
        """The RFC 3848 / RFC 6531 "with" keyword: ESMTP, ESMTPS, ESMTPA, ESMTPSA, ..."""
        if not self.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if "SMTPUTF8" in self.mailParams else "ESMTP"
        return base + ("S" if self.tls else "") + ("A" if self.user is not None else "")

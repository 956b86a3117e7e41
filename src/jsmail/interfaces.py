"""The seams between jsmail's parts.

smtpd writes into an :class:`IQueue`; the scheduler reads from it and hands each message
to the :class:`IDeliveryAgent` that an :class:`IRouter` picks.  Each seam is small enough
to replace on its own: a memory queue in tests, another agent for a new kind of delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Sequence

from zope.interface import Attribute, Interface

from jsmail.error import DeliveryError
from jsmail.reply import PeerReply, Reply

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from jsmail.address import Address
    from jsmail.envelope import Envelope, Recipient
    from jsmail.policy.verdict import Verdict


class IIncomingMessage(Interface):
    """A message being received: bytes stream in, then it is committed or aborted."""

    queueId = Attribute("The id the message will have in the queue.")
    size = Attribute("Octets written so far.")
    deliveredInSession = Attribute(
        "None, or once commit has fired for a message delivered during the session "
        "(jsmail.local.session) instead of queued: a callable that writes its delivery's "
        "operator-log lines, for the receiver to call after its own 'queued' line.  Optional: "
        "read with getattr(message, 'deliveredInSession', None).")

    def write(data: bytes) -> None:
        """Append message bytes (buffered; durable only after commit)."""

    def commit() -> Deferred[str]:
        """Make the message durable; fires with its queue id once it is safely on disk."""

    def abort() -> None:
        """Throw away what was written; the message never enters the queue."""


class NotQueued(LookupError):
    """The message is not (or no longer) in the queue."""


class IMessageSink(Interface):
    """Where smtpd puts what it receives: the queue, or the funnel in front of it."""

    def newMessage(envelope: Envelope) -> IIncomingMessage:
        """Start receiving a message with this envelope."""


class IQueue(IMessageSink):
    """A durable store of messages and their envelopes.  It stores and lists; it does
    not schedule (that is :mod:`jsmail.send.scheduler`)."""

    def recover() -> Deferred[list[tuple[str, Envelope]]]:
        """Sweep half-written entries; fire with every queued message and its envelope."""

    def loadEnvelope(queueId: str) -> Deferred[Envelope]:
        """The current envelope of a queued message; fails with :class:`NotQueued` if
        the message is no longer there (an operator deleted or held it)."""

    def openMessage(queueId: str) -> BinaryIO:
        """Open the message bytes for reading (blocking I/O: call from a thread)."""

    def update(queueId: str, envelope: Envelope) -> Deferred[None]:
        """Durably replace the envelope (per-recipient state, attempts, next attempt);
        fails with :class:`NotQueued` if the message is no longer there."""

    def remove(queueId: str) -> Deferred[None]:
        """Remove a message whose every recipient is done; fails with
        :class:`NotQueued` if it is no longer there (an operator held it meanwhile)."""


class DeliveryStatus(Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class Handoff(Enum):
    """Where a delivered message went, which decides who owes the sender a success
    notice when NOTIFY asks for one (RFC 3461 sections 5.2.1-5.2.3; the actions of RFC 3464
    section 2.3.3)."""

    DELIVERED = "delivered"  # final delivery: a mailbox, a program
    EXPANDED = "expanded"  # delivered, and forwarded on to other addresses
    RELAYED = "relayed"  # to a next hop without DSN: jsmail owes the "relayed" notice
    PASSED_ON = "passed-on"  # to a next hop that offered DSN, with the parameters: it reports from now on


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one recipient: delivered, or failed temporarily or for good.

    ``reply`` is what a bounce may show: a peer's own reply
    (:class:`~jsmail.reply.PeerReply`) or one of jsmail's from :mod:`jsmail.reply`.
    ``detail`` is the private why (paths, host names, program output, exception
    texts), for the operator log only.  ``handoff`` says, for a delivered recipient,
    what became of the message.
    """

    recipient: str
    status: DeliveryStatus
    reply: Reply
    detail: str = ""
    remoteMTA: str = ""  # "dns; mx.example.org" when a remote server was talked to
    handoff: Handoff = Handoff.DELIVERED

    @property
    def fromPeer(self) -> bool:
        """Whether the reply is the remote server's own words."""
        return isinstance(self.reply, PeerReply)

    def describe(self) -> str:
        """Reply and detail in one line, for the operator log."""
        return f"{self.reply} ({self.detail})" if self.detail else str(self.reply)

    @classmethod
    def forAll(cls, recipients: Iterable[Recipient], error: DeliveryError) -> list[DeliveryResult]:
        """The same failure for every recipient."""
        status = DeliveryStatus.PERMANENT if error.permanent else DeliveryStatus.TEMPORARY
        return [cls(r.address, status, error.reply, error.detail) for r in recipients]


@dataclass(frozen=True)
class QueuedMessage:
    """A message handed to a delivery agent: its id, envelope and a way to read it."""

    queueId: str
    envelope: Envelope
    open: Callable[[], BinaryIO]


class IDeliveryAgent(Interface):
    """Delivers one message to some of its recipients (qmail-local, qmail-remote)."""

    def deliver(message: QueuedMessage, recipients: Sequence[Recipient]) -> Deferred[list[DeliveryResult]]:
        """Fire with one result per recipient, never with a failure."""


class ISession(Interface):
    """What a check may read about the client and its current transaction (smtpd keeps
    it up to date; :class:`jsmail.smtp.session.Session` provides it)."""

    clientAddress = Attribute("The client's IP address as text (or 'unknown').")
    clientPort = Attribute("The client's port (0 where unknown).")
    clientHost = Attribute("The client's host name where known (tcpserver's TCPREMOTEHOST), else ''.")
    listener = Attribute("The listener's name: 'smtp', 'submission', 'smtps', ...")
    helo = Attribute("The EHLO/HELO argument, or None before it.")
    esmtp = Attribute("Whether the client said EHLO.")
    tls = Attribute("Whether the session is encrypted.")
    tlsInfo = Attribute("Protocol and cipher once the handshake is done, else ''.")
    user = Attribute("The authenticated :class:`jsmail.auth.IMailUser`, or None.")
    sender = Attribute("The MAIL FROM :class:`jsmail.address.Address`, or None outside a transaction.")
    mailParams = Attribute("The MAIL FROM parameters (name -> value or None).")
    recipients = Attribute("The accepted :class:`jsmail.envelope.Recipient` list.")
    notes = Attribute("A dict where checks keep what they learnt about the connection.")
    transactionNotes = Attribute("A dict where checks keep what they learnt about this message; emptied at RSET.")


class IPolicy(Interface):
    """Checks run at each SMTP phase, in order, before smtpd says yes.

    Each method answers ``None`` (no objection), a :class:`jsmail.policy.verdict.Verdict`
    (accept with header fields or Authentication-Results entries to add, or refuse), or
    a Deferred firing with either when the check is done.  Raising (or failing the
    Deferred with) :class:`jsmail.error.SMTPReplyError` refuses too; any other exception
    is a temporary failure (451 4.3.0) and is logged, never a dropped session.
    ``session`` provides :class:`ISession`; a check may keep what later phases need in
    ``session.notes`` (the whole connection) or ``session.transactionNotes`` (one
    message).
    """

    def checkConnect(session: ISession) -> Deferred[Verdict | None] | Verdict | None:
        """A client has connected."""

    def checkHelo(session: ISession, name: str) -> Deferred[Verdict | None] | Verdict | None:
        """The client said EHLO or HELO ``name``."""

    def checkSender(session: ISession, address: Address, params: dict) -> Deferred[Verdict | None] | Verdict | None:
        """MAIL FROM with a :class:`jsmail.address.Address` and its parameters."""

    def checkRecipient(session: ISession, address: Address, params: dict) -> Deferred[Verdict | None] | Verdict | None:
        """RCPT TO with a :class:`jsmail.address.Address` and its parameters."""


class IMessagePolicy(Interface):
    """A check of the whole message once its last octet is in (end of DATA or of the
    last BDAT chunk), run in order after every :class:`IPolicy` phase has passed."""

    def checkMessage(session: ISession, content: object) -> Deferred[Verdict | None] | Verdict | None:
        """``content`` is a :class:`jsmail.smtp.assembly.Spool`: ``content.read()`` fires with
        the message bytes as received, smtpd's Received field first."""


class IModifier(Interface):
    """Changes an accepted message before it is queued (DKIM signing, ARC sealing), by
    adding header fields above it.  Modifiers run after every check has said yes."""

    def modify(session: ISession, message: bytes) -> Deferred[Sequence[str]] | Sequence[str]:
        """``message`` is the message as it will be queued, with the header fields the
        checks added (Authentication-Results among them) on top.  Answer the header
        fields (no CR LF) to put above it."""


class IRouter(Interface):
    """Decides which agent delivers to a recipient."""

    def agentFor(recipient: str) -> IDeliveryAgent:
        """The agent responsible for this recipient address."""

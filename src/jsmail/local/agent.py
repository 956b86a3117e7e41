"""Local delivery (qmail-local's job): delivery instructions, or a Maildir by default.

A local recipient's instructions come from the aliases file, else from a ``.qmail``
file (:mod:`jsmail.local.dotqmail` says which); they are carried out in order as
qmail-local does (qmail-interfaces reference, sections 9.3-9.8): Maildir and mbox
(:mod:`jsmail.local.mbox`) deliveries and programs (:mod:`jsmail.local.program`) as they come,
the first failure stopping the rest; forwards collected and queued together at the
end, through the one funnel into the queue, as one new message from the forwarding
sender with this recipient's ``Delivered-To:`` line added.  A message already
carrying that very line is looping and fails for good (9.4); so does one that already
carries :data:`MAX_DELIVERED_TO` Delivered-To lines of any address, which stops a loop
through ever-new addresses that the line check cannot see (Postfix counts them too).
A forward keeps the double-bounce mark of its message (:attr:`Envelope.isDoubleBounce`),
so a double bounce forwarded by an alias of the postmaster is still one.

Whose rights they are carried out with: a home that root or jsmail's own user owns
(a virtual user's, under ``users_dir``) is followed here, as jsmail's user, its mbox
and Maildir lines kept inside the home (and ``[local] allowed_paths``); a home any
other user owns (a system user's with ``home_dotqmail``, or one of ``users_dir`` given
to a user) is followed by a process running as that user, started by the local
spawner (:mod:`jsmail.local.spawn`): jsmail's user never reads that ``.qmail``, runs
its programs or opens its paths.  The aliases file is the operator's, and followed
here.

With no instructions, the recipient ``local@domain`` owns the default Maildir
``<root>/<domain>/<local>/``, made on first delivery.  A delivery follows the Maildir protocol
(https://cr.yp.to/proto/maildir.html): write ``tmp/<unique>``, rename it into ``new/``,
and sync the file system (a group commit shared across deliveries and the queue, see
:mod:`jsmail._disk`) before saying "delivered", so the queue forgets a message only
once its copy is safe.

The delivered file starts with ``Return-Path:`` and ``Delivered-To:`` (RFC 5321
section 4.4; qmail-local's order) and has LF line ends, as Maildir readers (mutt,
Dovecot, Courier) and qmail-local and Postfix's local(8) write them.
"""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, NoReturn, Sequence

from twisted.internet import defer
from zope.interface import implementer

from jsmail import reply
from jsmail._bounded import LRU
from jsmail._disk import GroupSync
from jsmail._process import allowedEnvironment
from jsmail._threads import RunInThread
from jsmail.address import BadMailbox, mailboxName
from jsmail.envelope import DOUBLE_BOUNCE, Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.headers import fields, hasName, readHeader
from jsmail.interfaces import DeliveryResult, DeliveryStatus, Handoff, IDeliveryAgent, IIncomingMessage, QueuedMessage
from jsmail.local.aliases import AliasesFile
from jsmail.local.dotqmail import Instructions, Mailbox, commandEnvironment, findMailbox, newSender, readInstructions
from jsmail.local.follow import Followed, Where, follow, placeAnywhere, placeWithin
from jsmail.local.maildir import copyAsLF, makeMaildir, writeMaildirMessage
from jsmail.local.mbox import fromLine
from jsmail.local.settings import LocalSettings
from jsmail.local.spawn import Request, SpawnClient, answerOutput, readOutcome
from jsmail.route import VirtualDomains

_COPY_CHUNK = 65536
MAX_DELIVERED_TO = 20  # Delivered-To lines a message may already carry (local forwards it went through)


@dataclass(frozen=True)
class _Plan:
    """Whose instructions, and which: ``instructions`` None means the default Maildir,
    unless ``asOwner``: then the mailbox's owner reads them (:meth:`_deliverAsOwner`)."""

    mailbox: Mailbox
    instructions: Instructions | None
    default: str | None
    newSender: str
    cwd: str
    place: Callable[[str], str] = lambda path: path
    asOwner: bool = False


def headerLine(text: str) -> bytes:
    """A trace line local delivery writes atop a message (``Return-Path:``,
    ``Delivered-To:``): one LF-ended line, whatever the address holds."""
    return (text.replace("\n", "_") + "\n").encode("utf-8", "replace")


def checkLoop(source: BinaryIO, dtline: bytes) -> None:
    """Fail for good if the header section holds ``dtline`` byte for byte (section
    9.4), or already :data:`MAX_DELIVERED_TO` Delivered-To lines."""
    found = fields(readHeader(source).header)
    if dtline.rstrip(b"\n") in found:
        raise DeliveryError(reply.LOOPING, True, dtline.decode("utf-8", "replace").strip())
    hops = sum(1 for field in found if hasName(field, "Delivered-To"))
    if hops >= MAX_DELIVERED_TO:
        raise DeliveryError(reply.TOO_MANY_DELIVERED_TO, True, f"{hops} Delivered-To lines")


@implementer(IDeliveryAgent)
class LocalDelivery:
    """Delivers local recipients by their instructions, or to ``<root>/<domain>/<local>/``.

    ``newMessage`` starts a message into the queue (the scheduler's funnel), for
    forwards; ``reactor`` runs programs and times them out.
    """

    def __init__(self, root: str, runInThread: RunInThread, hostname: str | None = None,
                 syncer: GroupSync | None = None, *, reactor: Any = None,
                 settings: LocalSettings = LocalSettings(),
                 newMessage: Callable[[Envelope], IIncomingMessage] | None = None) -> None:
        self.root = root
        self.runInThread = runInThread
        self.syncer = syncer if syncer is not None else GroupSync(runInThread, settings.rememberedMailboxes)
        self._made: LRU[str, None] = LRU(settings.rememberedMailboxes)  # Maildirs known to exist (made again if not)
        self.hostname = hostname or socket.gethostname()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.settings = settings
        self.newMessage = newMessage
        noAtHost = settings.noAtHost or (settings.localDomains[0] if settings.localDomains else self.hostname)
        self.aliases = AliasesFile(settings.aliases, noAtHost) if settings.aliases else None
        self._semaphore = defer.DeferredSemaphore(settings.concurrency)
        self.virtual = VirtualDomains(settings.virtualDomains)
        self._locals = frozenset(d.lower() for d in settings.localDomains)
        #: The connection to the local spawner, for mailboxes followed as their owner.
        self.spawn: SpawnClient | None = None

    def localAddress(self, recipient: str) -> tuple[str, str]:
        """(the address delivered to, the domain whose users directory holds its
        instructions).  A virtual domain's ``user@domain`` with prepend P is delivered
        to ``P-user@domain``, P being a user of the first local domain (qmail-send,
        section 5.1)."""
        local, _, domain = recipient.rpartition("@")
        if self.settings.localDomains and domain.lower() not in self._locals:
            prepend = self.virtual.prepend(recipient)
            if prepend is not None:
                return f"{prepend}-{local}@{domain}", self.settings.localDomains[0]
        return recipient, domain

    def maildirFor(self, recipient: str) -> str:
        local, _, domain = recipient.rpartition("@")
        return os.path.join(self.root, domain.lower(), mailboxName(local))

    def deliver(self, message: QueuedMessage, recipients: Sequence[Recipient]) -> defer.Deferred[list[DeliveryResult]]:
        if len(recipients) == 1:
            return self._semaphore.run(self._deliverOne, message, recipients[0].address).addCallback(lambda r: [r])
        return defer.gatherResults([self._semaphore.run(self._deliverOne, message, r.address) for r in recipients])

    def _deliverOne(self, message: QueuedMessage, recipient: str) -> defer.Deferred[DeliveryResult]:
        """Fires with the recipient's result, never fails (plain callbacks: this runs
        for every local message)."""
        sender = message.envelope.sender
        address, usersDomain = self.localAddress(recipient)
        dtline = headerLine(f"Delivered-To: {address}")
        rpline = headerLine(f"Return-Path: <{sender}>")

        def planned(answer: tuple[_Plan, tuple[str, str] | None]) -> Any:
            plan, written = answer
            if plan.asOwner:
                return self._deliverAsOwner(message, address, plan, rpline, dtline)
            if written is None:
                return self._follow(message, address, plan, rpline, dtline)
            maildir, path = written
            return self._synced(maildir, path).addCallback(lambda _: (f"maildir {maildir}", False))

        def failed(failure: Any) -> DeliveryResult:
            if failure.check(DeliveryError):
                [result] = DeliveryResult.forAll([Recipient(recipient)], failure.value)
                return result
            return DeliveryResult(recipient, DeliveryStatus.TEMPORARY, reply.DELIVERY_ERROR,
                                  f"local delivery: {failure.value}")

        def delivered(outcome: tuple[str, bool]) -> DeliveryResult:
            detail, forwarded = outcome
            handoff = Handoff.EXPANDED if forwarded else Handoff.DELIVERED
            return DeliveryResult(recipient, DeliveryStatus.DELIVERED, reply.DELIVERED, detail, handoff=handoff)

        d = self.runInThread(self._planAndWrite, message, address, usersDomain, rpline, dtline).addCallback(planned)
        return d.addCallbacks(delivered, failed)

    def _planAndWrite(self, message: QueuedMessage, recipient: str, usersDomain: str, rpline: bytes,
                      dtline: bytes) -> tuple[_Plan, tuple[str, str] | None]:
        """The loop check, the instructions, and for a recipient without any the copy
        into its own Maildir (made on first delivery), all in one blocking call: one
        thread hop and one open of the queue file for the usual local message.  Returns
        the plan and (Maildir, path in ``new/``) when the copy was made."""
        with message.open() as source:
            start = source.tell()
            checkLoop(source, dtline)
            plan = self._plan(message.envelope.sender, recipient, usersDomain)
            if plan.instructions is not None or plan.asOwner:
                return plan, None
            source.seek(start)
            return plan, self._writeDefault(source, recipient, rpline + dtline)

    def _writeDefault(self, source: BinaryIO, recipient: str, headers: bytes) -> tuple[str, str]:
        """Copy into the recipient's own Maildir, made on first delivery (blocking);
        returns the Maildir and the path in ``new/``."""
        try:
            maildir = self.maildirFor(recipient)
        except BadMailbox as e:
            raise DeliveryError(reply.BAD_LOCAL_MAILBOX, True, str(e)) from None
        try:
            if maildir not in self._made:
                makeMaildir(maildir)
                self._made[maildir] = None
            return maildir, writeMaildirMessage(maildir, headers, source, self.hostname)
        except OSError as e:
            self._made.forget(maildir)  # made again next time, should it have been removed
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"maildir {maildir}: {e}") from None

    def plainMaildir(self, recipient: str) -> str | None:
        """For delivery during the SMTP session (:mod:`jsmail.local.session`): the
        Maildir of ``recipient`` (an address local delivery is given, after any virtual
        domain's rewriting) when it has no instructions, is not followed as its owner,
        and exists whole, ``tmp``, ``new`` and ``cur`` (a delivery from the queue makes
        what is missing: a message refused at its end makes nothing); else None.
        Blocking."""
        domain = recipient.rpartition("@")[2]
        plan = self._plan("", recipient, domain)
        if plan.instructions is not None or plan.asOwner:
            return None
        try:
            maildir = self.maildirFor(recipient)
        except BadMailbox:
            return None  # the queue fails it, with the bounce it is owed
        whole = all(os.path.isdir(os.path.join(maildir, sub)) for sub in ("tmp", "new", "cur"))
        return maildir if whole else None

    def _deliverDefault(self, message: QueuedMessage, recipient: str, headers: bytes) -> defer.Deferred[str]:
        """Into the recipient's own Maildir, apart from the plan (the owner had no
        instructions); fires with the log detail, or fails with :class:`DeliveryError`."""

        def write() -> tuple[str, str]:
            with message.open() as source:
                return self._writeDefault(source, recipient, headers)

        def written(where: tuple[str, str]) -> defer.Deferred[str]:
            maildir, path = where
            return self._synced(maildir, path).addCallback(lambda _: f"maildir {maildir}")

        d: defer.Deferred[str] = self.runInThread(write).addCallback(written)
        return d

    def _synced(self, maildir: str, path: str) -> defer.Deferred[None]:
        """The group commit of a message written into ``maildir``."""

        def failed(failure: Any) -> None:
            self._made.forget(maildir)
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"maildir {maildir}: {failure.getErrorMessage()}")

        return self.syncer.sync(os.path.dirname(path)).addErrback(failed)

    def _plan(self, sender: str, recipient: str, usersDomain: str) -> _Plan:
        """The instructions to follow (blocking)."""
        local, _, domain = recipient.rpartition("@")
        separators = self.settings.separators
        targets = self.aliases.lookup(local, domain, separators) if self.aliases is not None else None
        if targets is not None:
            mailbox = Mailbox(local, domain, local, None)
            cwd = os.path.dirname(os.path.abspath(self.settings.aliases))
            return _Plan(mailbox, Instructions(targets, source=self.settings.aliases), None, sender, cwd,
                         placeAnywhere(cwd))
        mailbox = findMailbox(local, usersDomain, self.settings.usersDir, self.settings.homeDotQmail, separators,
                              self.settings.minimumUid)
        mailbox = replace(mailbox, domain=domain)
        ours = frozenset({0, os.geteuid()})
        if mailbox.home is not None and mailbox.owner not in ours:
            return _Plan(mailbox, None, None, sender, mailbox.home, asOwner=True)
        found = readInstructions(mailbox, separators, ours)
        cwd = mailbox.home or self.root
        return _Plan(mailbox, found.instructions, found.default, newSender(mailbox, sender), cwd,
                     placeWithin(cwd, self.settings.allowedPaths))

    def _lfCopy(self, message: QueuedMessage) -> BinaryIO:
        """The message with LF line ends, in an unnamed file of its own (blocking)."""
        copy = tempfile.TemporaryFile()
        try:
            with message.open() as source:
                copyAsLF(source, copy)
            copy.flush()
        except BaseException:
            copy.close()
            raise
        return copy

    @defer.inlineCallbacks
    def _follow(self, message: QueuedMessage, recipient: str, plan: _Plan, rpline: bytes, dtline: bytes) -> Any:
        """Carry out the instructions in order (section 9.3); fire with the success text
        and whether the message was forwarded."""
        assert plan.instructions is not None
        sender = message.envelope.sender
        ufline = fromLine(sender, self.reactor.seconds())
        lfCopy: list[BinaryIO] = []  # the message with LF line ends, made when first needed

        def lf() -> BinaryIO:
            if not lfCopy:
                lfCopy.append(self._lfCopy(message))
            lfCopy[0].seek(0)
            return lfCopy[0]

        def environment() -> dict[str, str]:
            return commandEnvironment(plan.mailbox, sender, plan.newSender, recipient, plan.default,
                                      self.settings.separators, (ufline, rpline, dtline), allowedEnvironment())

        timeout = self.settings.programTimeout
        where = Where(self.reactor, self.runInThread, self.hostname, plan.cwd, timeout, lf, plan.place,
                      self.syncer.sync, environment, deadline=self.reactor.seconds() + timeout)
        try:
            followed = yield follow(plan.instructions, rpline + dtline, ufline, where)
        finally:
            for copy in lfCopy:
                copy.close()
        return (yield self._finish(message, followed, plan.newSender, dtline))

    @defer.inlineCallbacks
    def _finish(self, message: QueuedMessage, followed: Followed, sender: str, dtline: bytes) -> Any:
        """Queue the forwards (section 9.4); fire with the log detail and whether
        anything was forwarded."""
        outputs = list(followed.outputs)
        if followed.forwards:
            queueId = yield self._forward(message, sender, list(followed.forwards), dtline)
            outputs.append(f"qp {queueId}")
        detail = f"did {followed.files}+{len(followed.forwards)}+{followed.programs}"
        return "\n".join([detail, *outputs]), bool(followed.forwards)

    @defer.inlineCallbacks
    def _deliverAsOwner(self, message: QueuedMessage, recipient: str, plan: _Plan, rpline: bytes,
                        dtline: bytes) -> Any:
        """Have the local spawner run the delivery as the home's owner, the message
        (LF line ends, no envelope) on a descriptor; then queue its forwards, or make
        the default delivery when the owner has no instructions."""
        mailbox = plan.mailbox
        assert mailbox.home is not None and mailbox.owner is not None
        if self.spawn is None or not self.spawn.connected:
            raise DeliveryError(reply.DELIVERY_ERROR, False,
                                f"{mailbox.home} belongs to uid {mailbox.owner}, and delivering as its owner needs "
                                f"the local spawner, which runs only when jsmail is started as root")
        try:
            user = yield self.runInThread(lambda: pwd.getpwuid(mailbox.owner).pw_name)
        except KeyError:
            raise DeliveryError(reply.DELIVERY_ERROR, False,
                                f"{mailbox.home} belongs to uid {mailbox.owner}, which has no user name") from None
        sender = message.envelope.sender
        ufline, rp, dt = (line.decode("utf-8", "replace") for line in (fromLine(sender, self.reactor.seconds()),
                                                                        rpline, dtline))
        request = Request(0, user, mailbox.owner, os.path.normpath(mailbox.home), mailbox.local, mailbox.domain,
                          mailbox.user, mailbox.dash, mailbox.ext, mailbox.alias, sender, recipient,
                          self.settings.separators, self.hostname, ufline, rp, dt, self.settings.programTimeout)
        copy = yield self.runInThread(self._lfCopy, message)
        try:
            answer = yield self.spawn.deliver(request, copy)
        finally:
            copy.close()
        code, output, errors, refused = answerOutput(answer)
        if refused:
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"the local spawner will not deliver as {user}: {refused}")
        if code != 0:
            why = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"delivery as {user} ended with status {code}: {why[0]}")
        outcome = readOutcome(output, request)
        if outcome.followed is None:
            return (yield self._deliverDefault(message, recipient, rpline + dtline)), False
        detail, forwarded = yield self._finish(message, outcome.followed, outcome.newSender, dtline)
        return f"as {user}: {detail}", forwarded

    def _forward(self, message: QueuedMessage, sender: str, addresses: list[str],
                 dtline: bytes) -> defer.Deferred[str]:
        """Queue one copy for all forward addresses, from ``sender``, with the
        Delivered-To line added (section 9.4)."""
        if self.newMessage is None:
            raise DeliveryError(reply.DELIVERY_ERROR, False, "unable to forward: no queue to forward through")
        original = message.envelope
        envelope = Envelope(sender, tuple(Recipient(a) for a in addresses), mailParams=_carried(original.mailParams),
                            arrival=self.reactor.seconds(), clientAddress="127.0.0.1", helo=self.hostname,
                            protocol=DOUBLE_BOUNCE if original.isDoubleBounce else "local",
                            trusted=original.trusted)  # a forward does not make its sender trusted
        incoming = self.newMessage(envelope)

        def write() -> None:
            incoming.write(dtline.replace(b"\n", b"\r\n"))
            with message.open() as source:
                while chunk := source.read(_COPY_CHUNK):
                    incoming.write(chunk)

        def failed(failure: Any) -> NoReturn:
            incoming.abort()
            raise DeliveryError(reply.DELIVERY_ERROR, False, f"unable to forward: {failure.getErrorMessage()}")

        return self.runInThread(write).addCallbacks(lambda _: incoming.commit(), failed)


def _carried(params: dict[str, str | None]) -> dict[str, str | None]:
    """The MAIL parameters a forwarded copy keeps: what its content needs on the way
    (BODY, SMTPUTF8).  DSN's ENVID and RET are not carried: the forward is a new
    message whose notices go to its own sender (the success notice for this recipient
    says "expanded")."""
    return {key: value for key, value in params.items() if key.upper() in ("BODY", "SMTPUTF8")}

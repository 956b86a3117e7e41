"""Local delivery (qmail-local's job): delivery instructions, or a Maildir by default.

A local recipient's instructions come from the aliases file, else from a ``.qmail``
file (:mod:`jsmail.local.dotqmail` says which); they are carried out in order as
qmail-local does (qmail-interfaces reference, sections 9.3-9.8): Maildir and mbox
(:mod:`jsmail.local.mbox`) deliveries and programs (:mod:`jsmail.local.program`) as they come,
the first failure stopping the rest; forwards collected and queued together at the
end, through the one funnel into the queue, as one new message from the forwarding
sender with this recipient's ``Delivered-To:`` line added.  A message already
carrying that very line is looping and fails for good (9.4).

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

import itertools
import os
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Sequence

from twisted.internet import defer
from zope.interface import implementer

from jsmail._disk import GroupSync
from jsmail._threads import RunInThread
from jsmail.address import BadMailbox, mailboxName
from jsmail.local.aliases import AliasesFile
from jsmail.local.dotqmail import (Forward, InstructionError, Instructions, Mailbox, Maildir, Mbox, Program,
                             commandEnvironment, findMailbox, newSender, readInstructions)
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryResult, DeliveryStatus, IDeliveryAgent, IIncomingMessage, QueuedMessage
from jsmail.local.mbox import MboxError, appendMbox, fromLine
from jsmail.local.program import runProgram
from jsmail.route import VirtualDomains

_COPY_CHUNK = 65536
_deliveries = itertools.count()


def _uniqueName(hostname: str) -> str:
    """A Maildir unique name: ``<seconds>.M<usec>P<pid>Q<n>.<host>`` (maildir spec)."""
    now = time.time()
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_deliveries)}.{host}"


def copyAsLF(source: BinaryIO, target: BinaryIO) -> None:
    """Copy CR LF text as LF text, in chunks (a CR LF may straddle two chunks)."""
    held = b""
    while chunk := source.read(_COPY_CHUNK):
        data = held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        target.write(data[: len(data) - len(held)].replace(b"\r\n", b"\n"))
    target.write(held)


def makeMaildir(maildir: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)


def writeMaildirMessage(maildir: str, headers: bytes, source: BinaryIO, hostname: str) -> str:
    """Deliver into an existing ``maildir``; return the path in ``new/``.  Blocking;
    durable only after a sync."""
    name = _uniqueName(hostname)
    tmpPath = os.path.join(maildir, "tmp", name)
    with open(tmpPath, "xb") as f:
        try:
            f.write(headers)
            copyAsLF(source, f)
        except BaseException:
            os.unlink(tmpPath)
            raise
    newPath = os.path.join(maildir, "new", name)
    os.rename(tmpPath, newPath)
    return newPath


@dataclass(frozen=True)
class LocalSettings:
    """Where instructions are looked for and how they run (``[local]`` in the
    configuration)."""

    usersDir: str = ""  # <dir>/<domain>/<user>/.qmail...; empty: no virtual users
    homeDotQmail: bool = False  # system users' ~/.qmail files (needs root to read all)
    separator: str = "-"  # between a user and an extension (qmail's conf-break)
    plusExtensions: bool = True  # "+" separates an extension too (user+tag)
    aliases: str = ""  # an /etc/aliases-style file; empty: none
    programTimeout: float = 3600.0  # seconds a |program may run
    noAtHost: str = ""  # added to forward addresses without "@" (qmail's envnoathost)
    concurrency: int = 10  # recipients delivered at once (qmail's concurrencylocal)
    virtualDomains: tuple[str, ...] = ()  # qmail's virtualdomains lines, "key:prepend"
    localDomains: tuple[str, ...] = ()  # the first one holds virtual domains' users

    @property
    def separators(self) -> str:
        return self.separator + ("+" if self.plusExtensions and self.separator != "+" else "")


@dataclass(frozen=True)
class _Plan:
    """Whose instructions, and which: ``instructions`` None means the default Maildir."""

    mailbox: Mailbox
    instructions: Instructions | None
    default: str | None
    newSender: str
    cwd: str


class _Outcome(Exception):
    """Ends a delivery early with this result."""

    def __init__(self, status: DeliveryStatus, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _line(text: str) -> bytes:
    return (text.replace("\n", "_") + "\n").encode("utf-8", "replace")


def isLooping(source: BinaryIO, dtline: bytes) -> bool:
    """Whether the header section (up to its first empty line) holds ``dtline``
    byte for byte (section 9.4)."""
    wanted = dtline.rstrip(b"\n")
    for line in source:
        line = line.rstrip(b"\r\n")
        if not line:
            return False
        if line == wanted:
            return True
    return False


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
        self.syncer = syncer if syncer is not None else GroupSync(runInThread)
        self._made: set[str] = set()  # Maildirs known to exist (one that is removed is made again on failure)
        self.hostname = hostname or socket.gethostname()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.settings = settings
        self.newMessage = newMessage
        self.aliases = AliasesFile(settings.aliases, settings.noAtHost or self.hostname) if settings.aliases else None
        self._semaphore = defer.DeferredSemaphore(settings.concurrency)
        self.virtual = VirtualDomains(settings.virtualDomains)
        self._locals = frozenset(d.lower() for d in settings.localDomains)

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
        return defer.gatherResults([self._semaphore.run(self._deliverOne, message, r.address) for r in recipients])

    @defer.inlineCallbacks
    def _deliverOne(self, message: QueuedMessage, recipient: str) -> Any:
        sender = message.envelope.sender
        address, usersDomain = self.localAddress(recipient)
        dtline = _line(f"Delivered-To: {address}")
        rpline = _line(f"Return-Path: <{sender}>")
        try:
            plan = yield self.runInThread(self._plan, message, address, usersDomain, dtline)
            if plan.instructions is None:
                result = yield self._deliverDefault(message, address, rpline + dtline)
                return replace(result, recipient=recipient)
            detail = yield self._follow(message, address, plan, rpline, dtline)
        except _Outcome as e:
            return DeliveryResult(recipient, e.status, e.detail)
        except InstructionError as e:
            return DeliveryResult(recipient, DeliveryStatus.PERMANENT if e.permanent else DeliveryStatus.TEMPORARY,
                                  e.text)
        except Exception as e:
            return DeliveryResult(recipient, DeliveryStatus.TEMPORARY, f"451 4.3.0 local delivery failed: {e}")
        return DeliveryResult(recipient, DeliveryStatus.DELIVERED, detail)

    def _plan(self, message: QueuedMessage, recipient: str, usersDomain: str, dtline: bytes) -> _Plan:
        """Loop check and the instructions to follow (blocking)."""
        with message.open() as source:
            if isLooping(source, dtline):
                raise _Outcome(DeliveryStatus.PERMANENT,
                               "This message is looping: it already has my Delivered-To line. (#5.4.6)")
        local, _, domain = recipient.rpartition("@")
        sender = message.envelope.sender
        separators = self.settings.separators
        targets = self.aliases.lookup(local, domain, separators) if self.aliases is not None else None
        if targets is not None:
            mailbox = Mailbox(local, domain, local, None)
            return _Plan(mailbox, Instructions(targets, source=self.settings.aliases), None, sender,
                         os.path.dirname(os.path.abspath(self.settings.aliases)))
        mailbox = findMailbox(local, usersDomain, self.settings.usersDir, self.settings.homeDotQmail, separators)
        mailbox = replace(mailbox, domain=domain)
        found = readInstructions(mailbox, separators)
        return _Plan(mailbox, found.instructions, found.default, newSender(mailbox, sender),
                     mailbox.home or self.root)

    def _deliverDefault(self, message: QueuedMessage, recipient: str,
                        headers: bytes) -> defer.Deferred[DeliveryResult]:
        try:
            maildir = self.maildirFor(recipient)
        except BadMailbox as e:
            return defer.succeed(DeliveryResult(recipient, DeliveryStatus.PERMANENT, f"550 5.1.3 {e}"))

        def write() -> str:
            if maildir not in self._made:
                makeMaildir(maildir)
                self._made.add(maildir)
            with message.open() as source:
                return writeMaildirMessage(maildir, headers, source, self.hostname)

        def written(path: str) -> defer.Deferred[DeliveryResult]:
            d = self.syncer.sync(os.path.dirname(path))
            return d.addCallback(
                lambda _: DeliveryResult(recipient, DeliveryStatus.DELIVERED, f"delivered to maildir {maildir}")
            )

        def failed(failure: object) -> DeliveryResult:
            self._made.discard(maildir)
            error = getattr(failure, "value", failure)
            return DeliveryResult(recipient, DeliveryStatus.TEMPORARY, f"451 4.3.0 maildir delivery failed: {error}")

        d: defer.Deferred[DeliveryResult] = self.runInThread(write).addCallback(written)
        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _follow(self, message: QueuedMessage, recipient: str, plan: _Plan, rpline: bytes, dtline: bytes) -> Any:
        """Carry out the instructions in order (section 9.3); fire with the success text."""
        assert plan.instructions is not None
        sender = message.envelope.sender
        ufline = fromLine(sender, self.reactor.seconds())
        files, programs, forwards, outputs = 0, 0, [], []
        lfCopy: list[BinaryIO] = []  # the message with LF line ends, made when first needed

        def lf() -> BinaryIO:
            if not lfCopy:
                copy = tempfile.TemporaryFile()
                with message.open() as source:
                    copyAsLF(source, copy)
                lfCopy.append(copy)
            lfCopy[0].seek(0)
            return lfCopy[0]

        try:
            for instruction in plan.instructions.lines:
                if isinstance(instruction, Forward):
                    forwards.append(instruction.address)
                    continue
                if plan.instructions.forwardOnly:
                    kind = "prog" if isinstance(instruction, Program) else "file"
                    raise InstructionError(f"Uh-oh: .qmail has {kind} delivery but has x bit set. (#4.7.0)")
                if isinstance(instruction, Maildir):
                    path = os.path.join(plan.cwd, instruction.path)
                    yield self._toMaildir(message, path, rpline + dtline)
                    files += 1
                elif isinstance(instruction, Mbox):
                    path = os.path.join(plan.cwd, instruction.path)

                    def append(path: str = path) -> None:
                        appendMbox(path, ufline, rpline + dtline, lf())

                    try:
                        yield self.runInThread(append)
                    except MboxError as e:
                        raise InstructionError(str(e)) from None
                    files += 1
                else:
                    copy = yield self.runInThread(lf)
                    env = commandEnvironment(plan.mailbox, sender, plan.newSender, recipient, plan.default,
                                             self.settings.separators, (ufline, rpline, dtline), dict(os.environ))
                    result = yield runProgram(self.reactor, instruction.command, copy.fileno(), env, plan.cwd,
                                              self.settings.programTimeout)
                    if result.status in ("permanent", "temporary"):
                        raise InstructionError(result.text, permanent=result.status == "permanent")
                    programs += 1
                    if result.text and not result.text.startswith("program exited"):
                        outputs.append(result.text)
                    if result.status == "stop":
                        break
        finally:
            for copy in lfCopy:
                copy.close()
        if forwards:
            queueId = yield self._forward(message, plan.newSender, forwards, dtline)
            outputs.append(f"qp {queueId}")
        detail = f"did {files}+{len(forwards)}+{programs}"
        return "\n".join([detail, *outputs])

    def _toMaildir(self, message: QueuedMessage, maildir: str, headers: bytes) -> defer.Deferred[None]:
        """Into an existing Maildir named by an instruction (section 9.6): one that is
        not there is a temporary failure, as in qmail-local, not made."""

        def write() -> str:
            if not os.path.isdir(os.path.join(maildir, "tmp")):
                raise InstructionError(f"Unable to chdir to maildir {maildir}. (#4.2.1)")
            with message.open() as source:
                return writeMaildirMessage(maildir, headers, source, self.hostname)

        def failed(failure: Any) -> None:
            if failure.check(InstructionError):
                return failure  # type: ignore[no-any-return]
            raise InstructionError(f"Temporary error on maildir delivery: {failure.getErrorMessage()}. (#4.3.0)")

        d = self.runInThread(write).addCallback(lambda path: self.syncer.sync(os.path.dirname(path)))
        return d.addErrback(failed)

    def _forward(self, message: QueuedMessage, sender: str, addresses: list[str],
                 dtline: bytes) -> defer.Deferred[str]:
        """Queue one copy for all forward addresses, from ``sender``, with the
        Delivered-To line added (section 9.4)."""
        if self.newMessage is None:
            raise InstructionError("Unable to forward: no queue to forward through. (#4.3.0)")
        envelope = Envelope(sender, tuple(Recipient(a) for a in addresses), arrival=self.reactor.seconds(),
                            clientAddress="127.0.0.1", helo=self.hostname, protocol="local")
        incoming = self.newMessage(envelope)

        def write() -> None:
            incoming.write(dtline.replace(b"\n", b"\r\n"))
            with message.open() as source:
                while chunk := source.read(_COPY_CHUNK):
                    incoming.write(chunk)

        def failed(failure: Any) -> None:
            incoming.abort()
            raise InstructionError(f"Unable to forward message: {failure.getErrorMessage()}. (#4.3.0)")

        return self.runInThread(write).addCallbacks(lambda _: incoming.commit(), failed)

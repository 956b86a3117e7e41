"""Program hooks, for administrators who script their checks the qmail way.

- A recipient check program runs at each RCPT with ``helo\\0sender\\0recipient\\0\\0``
  on its descriptor 3 (the shape of checkpassword's input).
- A content filter program runs at the end of the message with the message on its
  standard input; what it prints on standard output, if anything, is header fields to
  add above the message.

Both answer by exit code: 0 accept, 100 reject (550 5.7.1), 111 or anything else try
again later (451 4.3.0).  After 100 or 111, a first line on standard error becomes the
reply's text; after anything else (a shell's "not found", a crash) it goes to the log only.
Each runs with ``/bin/sh -c`` and the variables ``TCPREMOTEIP``, ``SMTPHELO``,
``SMTPSENDER``, ``SMTPRECIPIENTS`` (one per line) and ``SMTPAUTHUSER``, and is killed
after ``timeout`` seconds, which counts as a temporary failure.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from jsmail import reply
from jsmail._process import Finished, allowedEnvironment, run
from jsmail.address import Address
from jsmail.headers import fieldName, fields
from jsmail.policy.base import MessagePolicy, Policy
from jsmail.policy.plugin import Options, PolicyContext
from jsmail.policy.verdict import Verdict

_log = Logger()


class Program:
    """Runs one command with inputs on given descriptors, bounded by ``timeout``."""

    def __init__(self, reactor: Any, command: str, timeout: float) -> None:
        self.reactor, self.command, self.timeout = reactor, command, timeout

    def run(self, session: Any, inputs: Mapping[int, bytes]) -> defer.Deferred[tuple[int | None, bytes, bytes]]:
        env = allowedEnvironment()
        env.update(TCPREMOTEIP=session.clientAddress, SMTPHELO=session.helo or "",
                   SMTPSENDER=str(session.sender or ""),
                   SMTPRECIPIENTS="\n".join(r.address for r in session.recipients),
                   SMTPAUTHUSER=getattr(session.user, "name", "") if session.user is not None else "")
        d = run(self.reactor, ["/bin/sh", "-c", self.command], env, inputs=inputs, read=(1, 2), timeout=self.timeout)

        def ended(finished: Finished) -> tuple[int | None, bytes, bytes]:
            code = None if finished.timedOut else finished.code  # stopped at its time-out, whatever its exit status
            return code, finished.read(1), finished.read(2)

        return d.addCallback(ended)


def verdictFor(command: str, code: int | None, stderr: bytes, accepted: Verdict | None = None) -> Verdict | None:
    if code == 0:
        return accepted
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    # Printable ASCII and short enough for a reply line (RFC 5321 section 4.5.3.1.5).
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in lines[0])[:400] if lines else ""
    if code == 100:
        refusal = reply.PROGRAM_REJECTED.withText(text) if text else reply.PROGRAM_REJECTED
        return Verdict.reject(refusal, f"{command} exited 100")
    reason = f"{command} was killed after its time-out" if code is None else f"{command} exited {code}"
    refusal = reply.CHECK_FAILED.withText(text) if text and code == 111 else reply.CHECK_FAILED
    return Verdict.tempfail(refusal, reason + (f": {text}" if text else ""))


class RecipientCheck(Policy):
    """The recipient check program (see the module docstring)."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def checkRecipient(self, session: Any, address: Address, params: dict) -> defer.Deferred[Verdict | None]:
        fields = (session.helo or "", str(session.sender or ""), str(address))
        data = b"".join(f.encode("utf-8") + b"\0" for f in fields) + b"\0"
        return self.program.run(session, {3: data}).addCallback(
            lambda result: verdictFor(self.program.command, result[0], result[2]))


class ContentFilter(MessagePolicy):
    """The content filter program (see the module docstring)."""

    def __init__(self, program: Program) -> None:
        self.program = program

    @defer.inlineCallbacks
    def checkMessage(self, session: Any, content: Any) -> Any:
        message = yield content.read()
        code, stdout, stderr = yield self.program.run(session, {0: message})
        added = [b"\r\n".join(f.splitlines()).decode("utf-8", "replace") for f in fields(stdout)
                 if fieldName(f) is not None]
        return verdictFor(self.program.command, code, stderr, Verdict.accept(added) if added else None)


def _program(options: Mapping[str, Any], context: PolicyContext) -> tuple[Options, Program]:
    o = Options(options)
    command = o.get("command", "")
    if not command:
        raise ValueError("command: give the program to run")
    return o, Program(context.reactor, command, o.get("timeout", 30.0))


def buildRecipientCheck(options: Mapping[str, Any], context: PolicyContext) -> RecipientCheck:
    o, program = _program(options, context)
    o.done()
    return RecipientCheck(program)


def buildContentFilter(options: Mapping[str, Any], context: PolicyContext) -> ContentFilter:
    o, program = _program(options, context)
    o.done()
    return ContentFilter(program)

"""A queue back end that hands each accepted message to a qmail-queue-compatible
program (``QMAILQUEUE``-style): a content filter, or a real qmail.

The program gets the message on fd 0 (a file, so nothing is held in memory), the
envelope on fd 1 (``F<sender>\\0 T<rcpt>\\0 ... \\0``) and, for the custom-error
extension, a pipe on fd 6 (qmail-interfaces reference, sections 3.1, 3.2 and 3.4).
Its exit code becomes the SMTP reply, with qmail-smtpd's texts: 0 queued; 11 to 40
permanent (554); every other code temporary (451); 82 with ``D<text>`` or ``Z<text>``
written to fd 6 replies with that text.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from jsmail import reply
from jsmail._process import Finished, run
from jsmail.envelope import Envelope
from jsmail.error import SMTPReplyError
from jsmail.interfaces import IIncomingMessage, IMessageSink
from jsmail.qmail.envelope import encode
from jsmail.queue.store import newQueueId
from jsmail.reply import Reply

CUSTOM_ERROR = 82
CUSTOM_ERROR_FD = 6

# qmail_close's texts, reference section 3.2: exit code -> reply
_EXITS: dict[int, Reply] = {
    11: reply.QQ_ADDRESS_TOO_LONG,
    31: reply.QQ_REJECTED,
    51: reply.QQ_OUT_OF_MEMORY,
    52: reply.QQ_TIMEOUT,
    53: reply.QQ_WRITE_ERROR,
    54: reply.QQ_READ_ERROR,
    55: reply.QQ_CONFIGURATION,
    56: reply.QQ_NETWORK,
    61: reply.QQ_HOME_DIRECTORY,
    71: reply.QQ_DEFERRED,
    72: reply.QQ_CONNECT_TIMEOUT,
    73: reply.QQ_CONNECT_REJECTED,
    74: reply.QQ_COMMUNICATION,
    81: reply.QQ_BUG,
    91: reply.QQ_BUG,
}
_EXITS.update(dict.fromkeys(range(62, 67), reply.QQ_QUEUE_FILES))


def replyFor(code: int, custom: bytes = b"") -> Reply | None:
    """The SMTP reply for the program's exit ``code``; None when it queued the message."""
    if code == 0:
        return None
    text = custom.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ").strip()
    if code == CUSTOM_ERROR and len(text) > 2 and text[0] in "DZ":
        permanent = text[0] == "D"
        return (reply.QQ_PERMANENT if permanent else reply.QQ_TEMPORARY).format(text[1:].strip())
    return _EXITS.get(code, reply.QQ_PERMANENT_PROBLEM if 11 <= code <= 40 else reply.QQ_TEMPORARY_PROBLEM)


@implementer(IIncomingMessage)
class _ProgramMessage:
    deliveredInSession = None  # handed to the program, never delivered during the session

    def __init__(self, sink: ProgramQueue, envelope: Envelope) -> None:
        self.queueId = newQueueId()
        self.size = 0
        self._sink = sink
        self._envelope = envelope
        self._file: Any = tempfile.TemporaryFile()  # the program reads it as its fd 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._file.write(data)

    def commit(self) -> defer.Deferred[str]:
        f, self._file = self._file, None
        f.flush()
        f.seek(0)
        program = self._sink.program
        try:
            # The whole environment, as qmail-smtpd gives qmail-queue's: filters read tcpserver's variables.
            d = run(self._sink.reactor, [program], os.environ, files={0: f.fileno(), 2: 2},
                    inputs={1: encode(self._envelope.sender, [r.address for r in self._envelope.recipients])},
                    read=(CUSTOM_ERROR_FD,), outputLimit=255)
        finally:
            f.close()  # the program has its own descriptor

        def ended(finished: Finished) -> str:
            code = 81 if finished.code is None else finished.code  # killed by a signal: a bug
            refusal = replyFor(code, finished.read(CUSTOM_ERROR_FD))
            if refusal is not None:
                raise SMTPReplyError(refusal, f"{program} exited with {code}")
            return self.queueId

        def notStarted(failure: Failure) -> str:
            failure.trap(OSError)
            raise SMTPReplyError(reply.QQ_EXEC_FAILED, f"{program}: {failure.value}")

        return d.addCallbacks(ended, notStarted)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@implementer(IMessageSink)
class ProgramQueue:
    """Hands accepted mail to ``program`` instead of jsmail's own queue."""

    def __init__(self, program: str, reactor: Any) -> None:
        self.program = program
        self.reactor = reactor

    def newMessage(self, envelope: Envelope) -> IIncomingMessage:
        return _ProgramMessage(self, envelope)

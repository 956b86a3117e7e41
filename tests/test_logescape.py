"""Security review L-7: an address, a reply or a header with control characters, line
separators or terminal escapes can neither forge an operator-log line nor drive the
terminal of an operator reading the log, ``jsmail queue`` or ``jsmail trace``."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher, jsonFileLogObserver, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from jsmail import maillog
from jsmail.cli import main
from jsmail.envelope import Envelope, Recipient
from jsmail.maillog import shown
from jsmail.queue.store import MaildirQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog

#: The review's sender: a line separator, NEL, a forged event and a CSI colour.
FORGING = '"x\u2028\u0085[jsmail.maillog#info] delivered to=<c@d>\u009b31m"@b.test'
UNSAFE = ("\u2028", "\u0085", "\u009b", "\x1b", "\x07", "\r", "\x00")


def runNow(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args, **kwargs)


class ShownTests(SynchronousTestCase):
    def test_shownEscapesWhatIsNotPrintable(self) -> None:
        self.assertEqual(shown("a@b.test"), "a@b.test")
        self.assertEqual(shown("jörg@bücher.test \\"), "jörg@bücher.test \\")
        self.assertEqual(shown("a\u2028b\u0085c\x1b[31m\x00\t\u202e"), "a\\u2028b\\x85c\\x1b[31m\\x00\\t\\u202e")
        self.assertEqual(shown(shown("a\x1b\u2029")), shown("a\x1b\u2029"))


class OperatorLogTests(SynchronousTestCase):
    def log(self) -> tuple[io.StringIO, list[dict[str, Any]]]:
        text, events = io.StringIO(), []
        observers = [textFileLogObserver(text), events.append]
        for observer in observers:
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
        return text, events

    def test_addressWithLineSeparatorsForgesNoLogLine(self) -> None:
        """The sender was written raw into ``queued from=<...>``: U+2028 and NEL end a
        line for many log readers, and CSI starts a terminal command."""
        text, events = self.log()
        d = Dialog(ServerSettings(hostname="mx.test"))
        out = d.send(f"EHLO c.test\r\nMAIL FROM:<{FORGING}> SMTPUTF8\r\nRCPT TO:<x@localhost>\r\n"
                     "DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n".encode())
        self.assertRegex(out, rb"250 2\.0\.0 Queued as \w+\r\n$")
        [queued] = [line for line in text.getvalue().splitlines() if "[jsmail.maillog#info] queued" in line]
        self.assertIn(r'from=<"x\u2028\x85[jsmail.maillog#info] delivered to=<c@d>\x9b31m"@b.test>', queued)
        for c in UNSAFE:
            self.assertNotIn(c, text.getvalue().replace("\n", ""))
        self.assertEqual(text.getvalue().count("\n"), len(text.getvalue().splitlines()))
        [event] = [e for e in events if e.get("event") == "queued"]
        self.assertEqual(event["sender"], FORGING, "programs get the address as it is")


class CommandOutputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        queue = MaildirQueue(os.path.join(self.data, "queue"), runNow)
        recipient = Recipient("y\x9b2J@localhost", lastReply="451 \x1b]0;owned\x07")
        envelope = Envelope("x\x1b[31m\u2028@b.test", (recipient,))
        message = queue.newMessage(envelope)
        message.write(b"Subject: \x1b[2Jcleared\r\n\tfolded\r\nX-Bell: \x07\r\n\r\nbody\r\n")
        self.queueId = self.successResultOf(message.commit())

    def run_(self, *argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["--data", self.data, *argv]), 0)
        return out.getvalue()

    def test_queueListAndShowPrintNoTerminalControls(self) -> None:
        """``jsmail queue list`` and ``show`` printed addresses, a peer's reply and the
        message's header raw: an escape sequence in any of them reached the terminal."""
        listed = self.run_("queue", "list")
        self.assertIn("<x\\x1b[31m\\u2028@b.test>", listed)
        self.assertIn("    pending   <y\\x9b2J@localhost>  451 \\x1b]0;owned\\x07\n", listed)
        show = self.run_("queue", "show", self.queueId)
        self.assertIn("Subject: \\x1b[2Jcleared\n\tfolded\nX-Bell: \\x07\n", show)
        for output in (listed, show):
            for c in UNSAFE:
                self.assertNotIn(c, output)

    def test_traceOfAJsonLogPrintsNoTerminalControls(self) -> None:
        """A JSON log keeps the values as they came (JSON escapes them); ``jsmail
        trace`` read them back and printed them raw."""
        path = os.path.join(self.data, "json.log")
        with open(path, "w", encoding="utf-8") as f:
            observer = jsonFileLogObserver(f, recordSeparator="")
            globalLogPublisher.addObserver(observer)
            try:
                maillog.queued("Q1", "x\x1b[31m@b.test", 1, 10, "192.0.2.1")
                maillog.bounced("Q1", "x\x1b[31m\u2028@b.test", "Q2")
            finally:
                globalLogPublisher.removeObserver(observer)
        traced = self.run_("trace", "--log", path, "Q1")
        self.assertIn("bounce to <x\\x1b[31m\\u2028@b.test> queued as Q2", traced)
        for c in UNSAFE:
            self.assertNotIn(c, traced)

"""The client's MAIL and RCPT commands as pure functions of the message and the peer's
EHLO keywords: no connection needed."""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from jsmail import reply
from jsmail.envelope import Recipient
from jsmail.error import DeliveryError
from jsmail.smtp.commands import OutgoingMessage, has8bit, mailCommand, rcptCommand

ALL = {"SIZE": "1000", "8BITMIME": "", "SMTPUTF8": "", "DSN": ""}


def message(sender: str = "a@example.org", eightBit: bool | None = False, size: int = 10,
            **mailParams: str | None) -> OutgoingMessage:
    return OutgoingMessage(sender, [Recipient("b@example.net")], mailParams, size, lambda: io.BytesIO(b""), eightBit)


class MailCommandTests(SynchronousTestCase):
    def test_plain_peer(self) -> None:
        self.assertEqual(mailCommand(message(RET="HDRS"), {}), "MAIL FROM:<a@example.org>")

    def test_every_extension(self) -> None:
        """SIZE is the real size; BODY as declared or as found; the DSN parameters as received."""
        self.assertEqual(mailCommand(message(eightBit=True, SIZE="1", RET="HDRS", ENVID="x+2Bid"), ALL),
                         "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x+2Bid")
        self.assertEqual(mailCommand(message(BODY="8bitmime"), ALL), "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME")
        self.assertEqual(mailCommand(message("bé@example.org"), ALL), "MAIL FROM:<bé@example.org> SIZE=10 SMTPUTF8")

    def test_refusals_are_permanent_and_say_what_the_peer_lacks(self) -> None:
        cases = [
            (message(size=1001), ALL, ("552 5.3.4 The message of 1001 octets exceeds the 1000 octets the mail "
                                       "exchanger accepts"), "takes at most 1000 octets"),
            (message(SMTPUTF8=None), {}, str(reply.PEER_NO_SMTPUTF8), "does not offer SMTPUTF8"),
            (message(eightBit=True), {"SMTPUTF8": ""}, str(reply.PEER_NO_8BITMIME), "does not offer 8BITMIME"),
        ]
        for outgoing, extensions, shown, detail in cases:
            error = self.assertRaises(DeliveryError, mailCommand, outgoing, extensions)
            self.assertEqual((str(error.reply), error.permanent, error.detail), (shown, True, detail))

    def test_eight_bit_must_be_known(self) -> None:
        self.assertRaises(ValueError, mailCommand, message(eightBit=None), ALL)

    def test_unsafe_dsn_parameter_is_left_out(self) -> None:
        self.assertEqual(mailCommand(message(ENVID="a\r\nRCPT TO:<x@y>"), ALL), "MAIL FROM:<a@example.org> SIZE=10")


class RcptCommandTests(SynchronousTestCase):
    def test_dsn_only_when_offered(self) -> None:
        recipient = Recipient("b@example.net", {"notify": "SUCCESS,FAILURE", "ORCPT": "rfc822;b@example.net"})
        self.assertEqual(rcptCommand(recipient, {}), "RCPT TO:<b@example.net>")
        self.assertEqual(rcptCommand(recipient, {"DSN": ""}),
                         "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.net")


class Has8bitTests(SynchronousTestCase):
    def test_from_the_start_only(self) -> None:
        data = io.BytesIO(b"\xe9\r\n" + b"x" * 40000)
        self.assertFalse(has8bit(data, 1))
        self.assertTrue(has8bit(data, 0))

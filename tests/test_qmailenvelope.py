"""qmail-queue's F/T envelope records: what is read, what is refused with which code,
and that what is written reads back the same."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from jsmail.qmail.envelope import MAX_ADDRESS, MAX_ENVELOPE, EnvelopeError, decode, encode

DECODED = [
    (b"Fa@example.org\0Tx@localhost\0Ty@example.net\0\0", ("a@example.org", ["x@localhost", "y@example.net"])),
    (b"F\0Tx@localhost\0\0", ("", ["x@localhost"])),
    ("Fzoë@example.org\0Tjoão@example.net\0\0".encode(), ("zoë@example.org", ["joão@example.net"])),
    (b"Fa\0T" + b"x" * MAX_ADDRESS + b"\0\0", ("a", ["x" * MAX_ADDRESS])),
]

REFUSED = [
    (b"", 54),
    (b"Fa@example.org\0Tx@localhost\0", 54),  # no final NUL
    (b"Fa@example.org\0Tx@localhost", 54),
    (b"Xa@example.org\0Tx@localhost\0\0", 91),
    (b"Fa@example.org\0Zx@localhost\0\0", 91),
    (b"Fa@example.org\0\0", 91),  # no recipients
    (b"Fa@example.org\0\0Tx@localhost\0\0", 91),  # records after the final NUL
    (b"F\xff\0Tx@localhost\0\0", 91),
    (b"Fa@example.org\0T" + b"x" * (MAX_ADDRESS + 1) + b"\0\0", 11),
    (b"F" + b"x" * (MAX_ADDRESS + 1) + b"\0Tx\0\0", 11),
    (b"Fa\0" + b"Tx\0" * (MAX_ENVELOPE // 3) + b"\0", 31),
]


class EnvelopeCodecTests(SynchronousTestCase):
    def test_decode(self) -> None:
        for data, expected in DECODED:
            self.assertEqual(decode(data), expected, data[:40])

    def test_decode_refuses_with_qmail_queue_codes(self) -> None:
        for data, code in REFUSED:
            with self.assertRaises(EnvelopeError, msg=data[:40]) as caught:
                decode(data)
            self.assertEqual(caught.exception.code, code, data[:40])

    def test_encode(self) -> None:
        for data, (sender, recipients) in DECODED:
            self.assertEqual(encode(sender, recipients), data)

    def test_encode_refuses_what_decode_would(self) -> None:
        for (sender, recipients), code in [(("a", []), 91), (("a\0b", ["x"]), 91), (("a", ["x\0"]), 91),
                                           (("a", ["x" * (MAX_ADDRESS + 1)]), 11),
                                           (("a", ["x"] * (MAX_ENVELOPE // 3)), 31)]:
            with self.assertRaises(EnvelopeError) as caught:
                encode(sender, recipients)
            self.assertEqual(caught.exception.code, code)

    def test_round_trip(self) -> None:
        """Any sender and recipients without NUL, of any length up to the limit, read
        back as written."""
        rng = random.Random(5321)
        alphabet = "abc@.-+ \x01\xff\"é\U0001f600"
        for _ in range(500):
            sender = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
            recipients = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
                          for _ in range(rng.randrange(1, 6))]
            self.assertEqual(decode(encode(sender, recipients)), (sender, recipients))

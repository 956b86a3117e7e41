"""Random and mutated SMTP sessions through the server in memory, each fed whole and
in random pieces: nothing is logged as a failure, every reply line is well formed,
the replies and the stored messages do not depend on how the input was split, and
every stored message is what an independent decoder makes of the client's content.

Bounded (see :mod:`tests.fuzzsupport`); ``fuzz/`` runs the same oracles for longer."""

from __future__ import annotations

import base64
from typing import Sequence

from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.trial.unittest import SynchronousTestCase

from jsmail.auth import AnyOfCheckers, MailRealm
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog
from tests.fuzzsupport import (
    Script,
    bounded,
    checkReplies,
    mutated,
    pieces,
    readSizes,
    sameReplies,
    scripts,
    storedMessages,
    withoutReceived,
)


def portal() -> Portal:
    users = InMemoryUsernamePasswordDatabaseDontUse(u=b"p")
    return Portal(MailRealm(["localhost"]), [AnyOfCheckers([users])])


def converse(wire: bytes, sizes: Sequence[int] | None, withAuth: bool = False,
             **settings: object) -> tuple[bytes, list[tuple[object, bytes]]]:
    """Run one session over ``wire`` (in pieces of ``sizes``, or whole): all the
    server's output, and the messages it stored.  Replies held back by a delay (a
    failed AUTH) are let out by advancing the clock at the end."""
    d = Dialog(ServerSettings(hostname="mx.test", **settings), MemoryQueue(),  # type: ignore[arg-type]
               portal=portal() if withAuth else None, implicitTLS=withAuth)
    output = d.read()
    for piece in pieces(wire, sizes) if sizes is not None else [wire]:
        output += d.send(piece)
    for _ in range(4):
        d.clock.advance(31)
        output += d.read()
    assert isinstance(d.sink, MemoryQueue)
    return output, storedMessages(d.sink.messages)


class SessionPropertyTests(SynchronousTestCase):
    def assertNothingLogged(self) -> None:
        self.assertEqual(self.flushLoggedErrors(), [], "a failure was logged")

    @bounded(60)
    @given(scripts, readSizes)
    def test_sessionStoresWhatAReferenceDecoderReads(self, script: Script, sizes: list[int]) -> None:
        """Well-formed sessions with hostile content: the stored messages are exactly
        those an independent DATA/BDAT decoder accepts, with its content."""
        settings = {"normaliseLineEndings": script.normalise, "allowNul": script.allowNul}
        whole, stored = converse(script.wire(), None, **settings)
        split, storedSplit = converse(script.wire(), sizes, **settings)
        self.assertNothingLogged()
        checkReplies(whole)
        self.assertEqual(sameReplies(split), sameReplies(whole), "the replies depend on the read boundaries")
        self.assertEqual(storedSplit, stored, "the stored messages depend on the read boundaries")
        self.assertEqual([(key, withoutReceived(data)) for key, data in stored], script.expected())
        self.assertTrue(whole.endswith(b"221 2.0.0 Bye\r\n"), whole[-200:])

    @bounded(80)
    @given(mutated(scripts.map(Script.wire)), readSizes, st.booleans(), st.booleans())
    def test_mutatedSessionsAreAnsweredTheSameHoweverSplit(self, wire: bytes, sizes: list[int], withAuth: bool,
                                                           normalise: bool) -> None:
        whole, stored = converse(wire, None, withAuth, normaliseLineEndings=normalise)
        split, storedSplit = converse(wire, sizes, withAuth, normaliseLineEndings=normalise)
        self.assertNothingLogged()
        checkReplies(whole)
        checkReplies(split)
        self.assertEqual(sameReplies(split), sameReplies(whole), "the replies depend on the read boundaries")
        self.assertEqual(storedSplit, stored, "the stored messages depend on the read boundaries")

    @bounded(40)
    @given(st.binary(max_size=300), readSizes)
    def test_randomOctetsAfterEhlo(self, junk: bytes, sizes: list[int]) -> None:
        wire = b"EHLO client.test\r\n" + junk
        whole, _ = converse(wire, None)
        split, _ = converse(wire, sizes)
        self.assertNothingLogged()
        checkReplies(whole)
        self.assertEqual(sameReplies(split), sameReplies(whole))


class SaslPropertyTests(SynchronousTestCase):
    """A SASL response is a line like a command: over the command-line limit it is
    refused the same way however its octets are split across reads."""

    @bounded(60)
    @given(st.integers(300, 1400), st.sampled_from([b"PLAIN", b"LOGIN"]), readSizes)
    def test_longSaslResponseIsRefusedTheSameHoweverSplit(self, length: int, mechanism: bytes,
                                                         sizes: list[int]) -> None:
        response = base64.b64encode(b"\0u\0" + b"p" * length)
        wire = b"EHLO client.test\r\nAUTH " + mechanism + b"\r\n" + response + b"\r\nNOOP\r\n"
        whole, _ = converse(wire, None, withAuth=True)
        split, _ = converse(wire, sizes, withAuth=True)
        self.assertEqual(self.flushLoggedErrors(), [])
        checkReplies(whole)
        self.assertEqual(split, whole)
        self.assertTrue(whole.endswith(b"250 2.0.0 OK\r\n"), "the NOOP after the response is a command")
        if len(response) + 2 > 512:
            self.assertIn(b"500 5.5.6 Authentication Exchange line is too long\r\n", whole)

"""Random and mutated SMTP sessions through the server in memory, each fed whole and
in random pieces: nothing is logged as a failure, every reply line is well formed,
the replies and the stored messages do not depend on how the input was split, and
every stored message is what an independent decoder makes of the client's content.

Bounded (see :mod:`tests.fuzzsupport`); ``fuzz/`` runs the same oracles
(:mod:`tests.fuzzoracles`) for longer."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.fuzzoracles import checkReplies, checkScript, checkSession
from tests.fuzzsupport import Script, bounded, mutated, readSizes, scripts


class SessionPropertyTests(SynchronousTestCase):
    def tearDown(self) -> None:
        self.assertEqual(self.flushLoggedErrors(), [], "a failure was logged")

    @bounded(60)
    @given(scripts, readSizes)
    def test_sessionStoresWhatAReferenceDecoderReads(self, script: Script, sizes: list[int]) -> None:
        """Well-formed sessions with hostile content: the stored messages are exactly
        those an independent DATA/BDAT decoder accepts, with its content."""
        checkScript(script, sizes)
        self.assertEqual(self.flushLoggedErrors(), [])

    @bounded(80)
    @given(mutated(scripts.map(Script.wire)), readSizes, st.booleans(), st.booleans())
    def test_mutatedSessionsAreAnsweredTheSameHoweverSplit(self, wire: bytes, sizes: list[int], withAuth: bool,
                                                           normalise: bool) -> None:
        checkSession(wire, sizes, withAuth, normaliseLineEndings=normalise)
        self.assertEqual(self.flushLoggedErrors(), [])

    @bounded(40)
    @given(st.binary(max_size=300), readSizes)
    def test_randomOctetsAfterEhlo(self, junk: bytes, sizes: list[int]) -> None:
        checkSession(b"EHLO client.test\r\n" + junk, sizes)
        self.assertEqual(self.flushLoggedErrors(), [])


class SaslPropertyTests(SynchronousTestCase):
    """A SASL response is a line like a command: over the command-line limit it is
    refused the same way however its octets are split across reads."""

    @bounded(60)
    @given(st.integers(300, 1400), st.sampled_from([b"PLAIN", b"LOGIN"]), readSizes)
    def test_longSaslResponseIsRefusedTheSameHoweverSplit(self, length: int, mechanism: bytes,
                                                         sizes: list[int]) -> None:
        response = base64.b64encode(b"\0u\0" + b"p" * length)
        wire = b"EHLO client.test\r\nAUTH " + mechanism + b"\r\n" + response + b"\r\nNOOP\r\n"
        whole, _ = checkSession(wire, sizes, withAuth=True)
        self.assertEqual(self.flushLoggedErrors(), [])
        checkReplies(whole)
        self.assertTrue(whole.endswith(b"250 2.0.0 OK\r\n"), "the NOOP after the response is a command")
        if len(response) + 2 > 512:
            self.assertIn(b"500 5.5.6 Authentication Exchange line is too long\r\n", whole)

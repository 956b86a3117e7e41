"""smtpd's limits on their own, with a Clock: the time limits, back-pressure from
unsent replies, and who counts as one client."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from jsmail import reply
from jsmail.reply import Reply
from jsmail.smtp.limits import Refuse, ReplyBackPressure, TimeLimits, clientKey
from jsmail.smtp.settings import ServerSettings


class TimeLimitsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[Reply] = []
        settings = ServerSettings(idleTimeout=30.0, minDataRate=100.0, maxSessionTime=600.0)
        self.limits = TimeLimits(self.clock, settings, self.expired.append)
        self.limits.start()

    def test_idle(self) -> None:
        self.clock.advance(29)
        self.limits.resetTimeout()  # a command line starts
        self.clock.advance(29)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [reply.IDLE_TIMEOUT])

    def test_no_idle_time_out_while_a_reply_is_pending(self) -> None:
        self.limits.setTimeout(None)
        self.clock.advance(100)
        self.limits.credit(1000)  # data read meanwhile buys nothing: no clock is running
        self.clock.advance(100)
        self.assertEqual(self.expired, [])

    def test_data_buys_time_at_the_rate_up_to_the_idle_time_out(self) -> None:
        self.clock.advance(20)
        self.limits.credit(500)  # 10 s left, plus 5 s
        self.clock.advance(14.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [reply.IDLE_TIMEOUT])

    def test_credit_is_capped_at_the_idle_time_out(self) -> None:
        self.limits.credit(1_000_000)
        self.clock.advance(30)
        self.assertEqual(self.expired, [reply.IDLE_TIMEOUT])

    def test_session_time(self) -> None:
        for _ in range(599):
            self.clock.advance(1)
            self.limits.resetTimeout()
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [reply.SESSION_TOO_LONG])

    def test_session_time_runs_while_a_reply_is_pending(self) -> None:
        """A commit that never ends does not keep the session past its life."""
        self.limits.setTimeout(None)
        self.clock.advance(599)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, [reply.SESSION_TOO_LONG])

    def test_idle_time_out_runs_again_after_the_reply(self) -> None:
        self.clock.advance(10)
        self.limits.setTimeout(None)  # a reply is pending for 100 s
        self.clock.advance(100)
        self.limits.setTimeout(30.0)  # it is sent
        self.clock.advance(29.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [reply.IDLE_TIMEOUT])

    def test_a_session_has_one_timer(self) -> None:
        """Restarting the idle time-out per command, stopping it for a reply and the
        session's life share one timer, not a timer set and cancelled per command."""
        for _ in range(100):
            self.clock.advance(1)
            self.limits.resetTimeout()
            self.limits.setTimeout(None)
            self.limits.setTimeout(30.0)
            self.limits.credit(100)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.expired, [])

    def test_stop(self) -> None:
        self.limits.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.expired, [])


class ReplyBackPressureTests(SynchronousTestCase):
    def test_the_transport_pauses_and_resumes_reading(self) -> None:
        calls: list[str] = []

        class Reader:
            def pauseReading(self, why: str) -> None:
                calls.append(f"pause {why}")

            def resumeReading(self, why: str) -> None:
                calls.append(f"resume {why}")

        producer = ReplyBackPressure(Reader())
        verifyObject(IPushProducer, producer)
        producer.pauseProducing()
        producer.resumeProducing()
        producer.stopProducing()
        self.assertEqual(calls, ["pause replies", "resume replies"])


class ClientKeyTests(SynchronousTestCase):
    def test_ipv4_is_its_address(self) -> None:
        self.assertEqual(clientKey("192.0.2.1", 64), "192.0.2.1")

    def test_ipv6_is_its_network(self) -> None:
        self.assertEqual(clientKey("2001:db8::1", 64), "2001:db8::/64")
        self.assertEqual(clientKey("2001:db8:0:0:ffff::2", 64), "2001:db8::/64")
        self.assertEqual(clientKey("2001:db8::1", 128), "2001:db8::1/128")

    def test_ipv4_mapped_is_the_ipv4_address(self) -> None:
        self.assertEqual(clientKey("::ffff:192.0.2.1", 64), "192.0.2.1")

    def test_anything_else_is_itself(self) -> None:
        self.assertEqual(clientKey("unknown", 64), "unknown")


class RefuseTests(SynchronousTestCase):
    def test_one_reply_then_hang_up(self) -> None:
        transport = StringTransport()
        Refuse(reply.TOO_MANY_CONNECTIONS).makeConnection(transport)
        self.assertEqual(transport.value(), b"".join(reply.TOO_MANY_CONNECTIONS.lines()))
        self.assertTrue(transport.disconnecting)

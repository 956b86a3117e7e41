"""Security review L-10: state kept per destination or per mailbox is bounded, however
many destinations or mailboxes senders name; forgetting costs work again, never mail."""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jsmail import reply
from jsmail._bounded import LRU
from jsmail._disk import GroupSync
from jsmail.envelope import Envelope, Recipient
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery
from jsmail.local.settings import LocalSettings
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.settings import RemoteSettings
from jsmail.route import Route
from jsmail.smtp.assembly import Spool
from tests.test_remotedelivery import Network, Zone


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(f, *args, **kwargs)


class LRUTests(SynchronousTestCase):
    def test_theLeastRecentlyUsedGoesFirst(self) -> None:
        lru: LRU[str, int] = LRU(2)
        lru["a"], lru["b"] = 1, 2
        self.assertEqual(lru["a"], 1)  # "a" is now the most recent
        lru["c"] = 3
        self.assertEqual(dict(lru), {"a": 1, "c": 3})
        self.assertIn("a", lru)
        lru["d"] = 4
        self.assertEqual(list(lru), ["a", "d"])
        self.assertEqual(lru.pop("a"), 1)
        self.assertRaises(ValueError, LRU, 0)


class _RemoteCase(SynchronousTestCase):
    def deliver(self, remote: RemoteDelivery, recipient: str) -> DeliveryStatus:
        envelope = Envelope("a@me.test", (Recipient(recipient),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"))
        [result] = self.successResultOf(remote.deliver(message, envelope.recipients))
        return result.status


class RememberedHostsTests(_RemoteCase):
    def test_backOffOfManyUnreachableHostsKeepsOnlyTheRecentOnes(self) -> None:
        """The back-off of hosts that could not be reached was kept for every address
        ever tried: bounces to senders' domains let anyone add addresses without end.
        Now the least recently tried are forgotten, and only tried again sooner."""
        network = Network()
        network.down = {"2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"}
        remote = RemoteDelivery(Clock(), runNow, Zone(), RemoteSettings(heloHost="me.test", rememberedHosts=2),
                                connect=network.connect)
        self.assertEqual(self.deliver(remote, "x@example.test"), DeliveryStatus.TEMPORARY)
        self.deliver(remote, "x@nomx.test")
        self.assertEqual(network.addresses, ["2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"])
        self.assertEqual(len(remote._down), 2)
        del network.attempts[:]
        self.assertEqual(self.deliver(remote, "x@nomx.test"), DeliveryStatus.TEMPORARY)
        self.assertEqual(network.addresses, [], "the most recent host is still backed off")


class _PortsNetwork(Network):
    """A fake network where one port of an address may be down and another up."""

    downPorts: set[tuple[str, int]] = set()

    def connect(self, address: str, port: int, settings: Any) -> defer.Deferred[Any]:
        if (address, port) in self.downPorts:
            self.attempts.append((address, port, settings))
            return defer.fail(DeliveryError(reply.CANNOT_CONNECT, False, f"cannot connect to {address} port {port}"))
        return super().connect(address, port, settings)


class HostPortTests(_RemoteCase):
    def test_backOffOfOnePortLeavesTheOtherPortsOfTheAddress(self) -> None:
        """Back-off and per-host slots were keyed by the address alone: a route to a
        port that was down deferred the mail of routes to the same address's other
        ports (a host running several MTAs, a test peer per port)."""
        network = _PortsNetwork()
        network.downPorts = {("192.0.2.50", 2525)}
        routes = (Route("relay.example.net", 2525, "none", domain="a.test"),
                  Route("relay.example.net", 2526, "none", domain="b.test"))
        remote = RemoteDelivery(Clock(), runNow, Zone(), RemoteSettings(heloHost="me.test", routes=routes),
                                connect=network.connect)
        self.assertEqual(self.deliver(remote, "x@a.test"), DeliveryStatus.TEMPORARY)
        self.assertEqual(self.deliver(remote, "y@b.test"), DeliveryStatus.DELIVERED)
        self.assertEqual(self.deliver(remote, "z@a.test"), DeliveryStatus.TEMPORARY)
        self.assertEqual([(a, p) for a, p, _ in network.attempts], [("192.0.2.50", 2525), ("192.0.2.50", 2526)],
                         "port 2525 is backed off, not tried again")


class IdleSessionsTests(_RemoteCase):
    def test_idleSessionsToManyDestinationsLeaveNothingBehind(self) -> None:
        """A session kept open for reuse was dropped after its idle time, but its
        destination's entry stayed: one per address, port and TLS name ever used."""
        clock, network = Clock(), Network()
        remote = RemoteDelivery(clock, runNow, Zone(), RemoteSettings(heloHost="me.test", idleTimeout=10),
                                connect=network.connect)
        self.assertEqual(self.deliver(remote, "x@example.test"), DeliveryStatus.DELIVERED)
        self.assertEqual(self.deliver(remote, "x@nomx.test"), DeliveryStatus.DELIVERED)
        self.assertEqual(len(remote._idle), 2)
        clock.advance(5)
        self.assertEqual(self.deliver(remote, "y@nomx.test"), DeliveryStatus.DELIVERED)
        self.assertEqual(len(network.attempts), 2, "the idle session was used again")
        clock.advance(10)
        self.assertEqual(remote._idle, {})


class RememberedMailboxesTests(SynchronousTestCase):
    def test_deliveriesToManyMailboxesKeepOnlyTheRecentOnes(self) -> None:
        """Every Maildir made was remembered (and its file system), one entry per
        mailbox ever delivered to."""
        root = self.mktemp()
        agent = LocalDelivery(root, runNow, "mx.test", settings=LocalSettings(rememberedMailboxes=3))
        envelope = Envelope("a@b.example", tuple(Recipient(f"u{n}@localhost") for n in range(10)))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
        results = self.successResultOf(agent.deliver(message, envelope.recipients))
        self.assertEqual({r.status for r in results}, {DeliveryStatus.DELIVERED})
        self.assertEqual(len(os.listdir(os.path.join(root, "localhost"))), 10)
        self.assertEqual((len(agent._made), len(agent.syncer._devices)), (3, 3))


class RememberedAuthClientsTests(SynchronousTestCase):
    def test_guessersFromManyAddressesKeepTheConfiguredNumberCounted(self) -> None:
        """Failed logins are counted per client and per user name, so one key per
        address a guesser uses; the bound was fixed in code, now it is configured."""
        from jsmail.config import loadConfig
        from jsmail.service import authFailureCounter

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[auth]\nremembered_keys = 50\n")
        counter = authFailureCounter(loadConfig(path))
        for n in range(1000):
            counter.add(f"2001:db8:{n:x}::/64", 0.0)
        self.assertEqual(len(counter._failures), 50)
        self.assertEqual(counter.count("2001:db8:3e7::/64", 1.0), 1, "the most recent are counted")


class SpoolTests(SynchronousTestCase):
    def test_largeMessageIsNotHeldInMemoryBetweenChecks(self) -> None:
        """Security review M-12: the first check that read a spooled message (a content
        filter, DKIM signing) left the whole message in memory until the session's
        transaction ended, 24 MiB per session.  Only a message within the spool's
        memory limit is kept now; a larger one is read again by the next reader."""
        spool = Spool(runNow, memoryLimit=64 * 1024)
        self.addCleanup(spool.close)
        message = b"Subject: big\r\n\r\n" + b"x" * (1024 * 1024) + b"\r\n"
        spool.write(message)
        self.assertEqual(self.successResultOf(spool.read()), message)
        self.assertIsNone(spool._bytes)
        self.assertEqual(self.successResultOf(spool.read()), message)
        small = Spool(runNow, memoryLimit=64 * 1024)
        self.addCleanup(small.close)
        small.write(b"Subject: small\r\n\r\nx\r\n")
        self.assertIs(self.successResultOf(small.read()), self.successResultOf(small.read()))


class GroupSyncTests(SynchronousTestCase):
    def test_fileSystemOfANewDirectoryIsLookedUpInAThread(self) -> None:
        """Which file system a directory is on was found with os.stat on the reactor
        thread for every directory not remembered: with many mailboxes (more than
        remembered_mailboxes) that is a disk wait per delivery, for every session."""
        ran: list[str] = []

        def inThread(f: Any, *args: Any) -> defer.Deferred[Any]:
            ran.append(f.__name__)
            return defer.maybeDeferred(f, *args)

        directory = self.mktemp()
        os.makedirs(directory)
        syncer = GroupSync(inThread, remembered=1)
        self.successResultOf(syncer.sync(directory))
        self.assertEqual(ran, ["stat", "syncFileSystem"])
        self.successResultOf(syncer.sync(directory))
        self.assertEqual(ran[2:], ["syncFileSystem"], "a directory remembered is not looked up again")
        self.failureResultOf(syncer.sync(os.path.join(directory, "gone")), FileNotFoundError)

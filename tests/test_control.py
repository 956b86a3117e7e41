"""The rest of qmail's control files: parsing into Config, and what each one does."""

from __future__ import annotations

import io
import os
from typing import Any

import cdblib
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from jsmail.config import Config, ConfigError, loadConfig
from jsmail.envelope import Envelope, Recipient
from jsmail.interfaces import DeliveryStatus, QueuedMessage
from jsmail.local.agent import LocalDelivery, LocalSettings
from jsmail.policy.relay import RcptHosts, RelayControl
from jsmail.route import Router, VirtualDomains
from jsmail.testing import Dialog, RecordingAgent


class ControlTestCase(TestCase):
    def control(self, **files: str) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        for name, text in files.items():
            with open(os.path.join(directory, name.replace("_", ".")), "w") as f:
                f.write(text)
        return directory

    def load(self, **files: str) -> Config:
        return loadConfig(overrides={"server.control_dir": self.control(**files)})


class ParsingTests(ControlTestCase):
    def test_host_name_lines(self) -> None:
        """Single-line files: first line, trailing white space gone; an empty file is
        no setting (the default, the host name, stays)."""
        config = self.load(me="mx.example.org\n", smtpgreeting="mx.example.org hello there  \nignored\n",
                           helohost="out.example.org\n", bouncefrom="bounces\n", bouncehost="example.org\t\n",
                           envnoathost="example.org\n", defaultdomain="example.org\n", idhost="id.example.org\n")
        self.assertEqual((config.smtp.greeting, config.remote.heloHost, config.queue.bounceFrom,
                          config.queue.bounceHost, config.local.noAtHost),
                         ("mx.example.org hello there", "out.example.org", "bounces", "example.org", "example.org"))
        empty = self.load(me="mx.example.org\n", helohost="")
        self.assertEqual(empty.remote.heloHost, "mx.example.org", "an empty helohost: the host name")

    def test_lists(self) -> None:
        config = self.load(badmailfrom="# spammers\nspam@example.com\n@bad.example\n\n",
                           percenthack="example.org\n", rcpthosts="example.org\n.example.org\n",
                           virtualdomains="example.net:joe\nno colon\n.example.com:\n")
        self.assertEqual(config.relay.badMailFrom, ("spam@example.com", "@bad.example"))
        self.assertEqual(config.relay.rcptHosts, ("example.org", ".example.org"))
        self.assertEqual(config.local.virtualDomains, ("example.net:joe", ".example.com:"))

    def test_numbers(self) -> None:
        config = self.load(timeoutremote="30\n", concurrencylocal="3 deliveries\n")
        self.assertEqual((config.remote.replyTimeout, config.local.concurrency), (30.0, 3))
        default = self.load(timeoutremote="soon\n", concurrencylocal="0\n")
        self.assertEqual((default.remote.replyTimeout, default.local.concurrency), (0.0, 10),
                         "not a number, or 0: default")

    def test_double_bounce_is_the_postmaster(self) -> None:
        self.assertEqual(self.load(me="mx.example.org\n", doublebounceto="admin\n").server.postmaster,
                         "admin@mx.example.org")
        self.assertEqual(self.load(doublebouncehost="example.org\n").server.postmaster, "postmaster@example.org")
        self.assertEqual(self.load().server.postmaster, "postmaster@localhost", "none: postmaster@ the first domain")

    def test_morercpthosts_only_with_rcpthosts(self) -> None:
        """As qmail-smtpd: morercpthosts.cdb is consulted only if rcpthosts exists."""
        self.assertEqual(self.load(morercpthosts_cdb="x").relay.moreRcptHosts, "")
        directory = self.control(rcpthosts="example.org\n", morercpthosts_cdb="x")
        config = loadConfig(overrides={"server.control_dir": directory})
        self.assertEqual(config.relay.moreRcptHosts, os.path.join(directory, "morercpthosts.cdb"))

    def test_conflicts_name_both_places(self) -> None:
        directory = self.control(rcpthosts="example.org\n")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'[server]\ncontrol_dir = "{directory}"\n[smtp]\nrcpt_hosts = ["example.com"]\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: smtp.rcpt_hosts: also set by the control file "
                                                f"{directory}/rcpthosts; set it in one place")

    def test_bad_virtual_domain_in_toml(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[local]\nvirtual_domains = ["example.net"]\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: local.virtual_domains: expected 'domain:prepend', "
                                                "got 'example.net'")


class RcptHostsTests(ControlTestCase):
    def cdb(self, *keys: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            with cdblib.Writer(f) as writer:
                for key in keys:
                    writer.put(key, b"")
        return path

    def test_matching(self) -> None:
        hosts = RcptHosts(["Example.org", ".sub.example.com"], self.cdb(b"more.example", b".wild.example"))
        for domain in ("example.org", "EXAMPLE.ORG", "a.sub.example.com", "more.example", "x.y.wild.example"):
            self.assertTrue(hosts(domain), domain)
        for domain in ("a.example.org", "sub.example.com", "x.more.example", "wild.example", "example.net"):
            self.assertFalse(hosts(domain), domain)

    def test_enforced_at_rcpt(self) -> None:
        """A domain in rcpthosts is taken from anyone; others still need relay rights."""
        config = self.load(rcpthosts="backup.example\n")
        policy = RelayControl(frozenset({"localhost"}).__contains__, (), config.relay.rcptHostsCheck())
        dialog = Dialog(policies=(policy,))
        dialog.send(b"EHLO client.test\r\nMAIL FROM:<a@example.net>\r\n")
        self.assertEqual(dialog.send(b"RCPT TO:<x@backup.example>\r\n")[:3], b"250")
        self.assertEqual(dialog.send(b"RCPT TO:<x@other.example>\r\n")[:9], b"550 5.7.1")


class GreetingTests(ControlTestCase):
    def test_smtpgreeting(self) -> None:
        config = self.load(me="mx.example.org\n", smtpgreeting="mx.example.org NO UCE\n")
        dialog = Dialog(config.smtp)
        self.assertEqual(dialog.transport.value(), b"220 mx.example.org NO UCE ESMTP\r\n")


class VirtualDomainTests(ControlTestCase):
    def test_lookup_order(self) -> None:
        """Section 5.1: the address, the domain, dotted suffixes, the catch-all; an
        empty prepend excepts."""
        table = VirtualDomains(["example.net:joe", "boss@example.net:boss", ".example.com:sub",
                                "no.example.com:", ":catchall", "EXAMPLE.net:joe2"])
        self.assertEqual(table.prepend("x@example.net"), "joe2", "the later line wins")
        self.assertEqual(table.prepend("Boss@Example.net"), "boss")
        self.assertEqual(table.prepend("x@a.b.example.com"), "sub")
        self.assertIsNone(table.prepend("x@no.example.com"))
        self.assertEqual(table.prepend("x@anything.example"), "catchall")
        self.assertIsNone(VirtualDomains([]).prepend("x@example.net"))

    def test_routed_locally(self) -> None:
        local, remote = RecordingAgent(), RecordingAgent()
        router = Router(["localhost"], local, remote, ["example.net:joe"])
        self.assertIs(router.agentFor("x@example.net"), local)
        self.assertIs(router.agentFor("x@example.com"), remote)

    @defer.inlineCallbacks
    def test_delivered_as_prepend_user(self) -> Any:
        """x@example.net with example.net:joe is joe-x: joe's .qmail-x (or
        .qmail-default) under the first local domain decides."""
        base = os.path.abspath(self.mktemp())
        home = os.path.join(base, "users", "localhost", "joe")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail-default"), "w") as f:
            f.write("|echo $RECIPIENT $EXT $HOST $DEFAULT > out\n")
        agent = LocalDelivery(os.path.join(base, "mail"), defer.maybeDeferred, "mx.test", reactor=reactor,
                              settings=LocalSettings(usersDir=os.path.join(base, "users"),
                                                     virtualDomains=("example.net:joe",),
                                                     localDomains=("localhost",)))
        envelope = Envelope("a@b.example", (Recipient("x@example.net"),))
        message = QueuedMessage("Q1", envelope, lambda: io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
        [result] = yield agent.deliver(message, envelope.recipients)
        self.assertEqual((result.recipient, result.status), ("x@example.net", DeliveryStatus.DELIVERED))
        with open(os.path.join(home, "out")) as f:
            self.assertEqual(f.read(), "joe-x@example.net x example.net x\n")

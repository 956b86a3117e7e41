"""Allow and deny lists (jsmail.policy.access): every kind of entry in text and CDB files,
allow beating deny, re-reading changed files, and the replies a client sees."""

from __future__ import annotations

import os
from typing import Any

import cdblib
from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jsmail.policy import access
from jsmail.policy.chain import buildChain
from jsmail.policy.plugin import PluginError, PolicyContext, PolicyPlugin
from jsmail.queue.memory import MemoryQueue
from jsmail.smtp.server import ServerSettings
from jsmail.testing import Dialog, HeldThreads

PLUGINS = {"access": PolicyPlugin("access", "allow and deny lists", access.build)}
QUEUED = rb"^250 2\.0\.0 Queued as [0-9A-F]{21}\r\n$"


class ManualClock:
    """A monotonic clock the test moves by hand, to skip the wait between looks at a
    list file."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def writeText(self, name: str, text: str) -> str:
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def writeCDB(self, name: str, keys: list[str]) -> str:
        with open(self.path(name), "wb") as f:
            writer = cdblib.Writer(f)
            for key in keys:
                writer.put(key.encode("utf-8"), b"")
            writer.finalize()
        return self.path(name)

    def context(self) -> PolicyContext:
        return PolicyContext(reactor=task.Clock(), resolver=None, runInThread=None, hostname="mx.test",  # type: ignore[arg-type]
                             authservId="mx.test", dataDir=self.dir)


class AddressEntryTests(ListTestCase):
    def senders(self, text: str) -> access.AccessList:
        return access.AccessList(self.writeText("senders", text), access.addressKeys)

    def test_whole_address_matches_in_any_case(self) -> None:
        senders = self.senders("spammer@bad.example\n")
        self.assertIn("spammer@bad.example", senders)
        self.assertIn("SPAMMER@Bad.Example", senders)
        self.assertNotIn("other@bad.example", senders)
        self.assertNotIn("spammer@good.example", senders)

    def test_at_domain_matches_every_address_at_that_domain_only(self) -> None:
        senders = self.senders("@bad.example\n")
        self.assertIn("anyone@bad.example", senders)
        self.assertNotIn("anyone@sub.bad.example", senders)
        self.assertNotIn("anyone@notbad.example", senders)

    def test_dot_suffix_matches_addresses_at_domains_under_it(self) -> None:
        senders = self.senders(".bad.example\n")
        self.assertIn("a@mail.bad.example", senders)
        self.assertIn("a@deep.mail.bad.example", senders)
        self.assertNotIn("a@bad.example", senders)  # "under it", as for HELO names; @bad.example names the domain
        self.assertNotIn("a@notbad.example", senders)

    def test_local_part_at_matches_that_local_part_at_any_domain(self) -> None:
        senders = self.senders("mailer-daemon@\n")
        self.assertIn("MAILER-DAEMON@anywhere.example", senders)
        self.assertIn("mailer-daemon@else.example", senders)
        self.assertNotIn("daemon@anywhere.example", senders)

    def test_null_sender_entry(self) -> None:
        self.assertIn("", self.senders("<>\n"))
        self.assertNotIn("", self.senders("@bad.example\nuser@\n"))
        self.assertNotIn("a@b.example", self.senders("<>\n"))

    def test_comments_blank_lines_and_spaces_are_ignored(self) -> None:
        senders = self.senders("# the list\n\n   spammer@bad.example   # a comment\r\n\t\n")
        self.assertIn("spammer@bad.example", senders)
        self.assertNotIn("# the list", senders)
        self.assertNotIn("", senders)

    def test_entries_in_a_cdb(self) -> None:
        senders = access.AccessList(self.writeCDB("senders.cdb", ["one@bad.example", "@worse.example",
                                                                 ".worst.example", "bounce@", "<>"]),
                                    access.addressKeys)
        self.assertIn("One@Bad.Example", senders)
        self.assertNotIn("two@bad.example", senders)
        self.assertIn("x@worse.example", senders)
        self.assertIn("x@a.worst.example", senders)
        self.assertIn("bounce@anywhere.example", senders)
        self.assertIn("", senders)
        self.assertNotIn("x@good.example", senders)


class ClientEntryTests(ListTestCase):
    def clients(self, text: str) -> access.AccessList:
        return access.AccessList(self.writeText("clients", text), access.clientKeys)

    def test_addresses_and_networks(self) -> None:
        clients = self.clients("192.0.2.7\n198.51.100.0/24\n2001:db8:1::/48\n2001:db8:9::9\n")
        self.assertIn("192.0.2.7", clients)
        self.assertNotIn("192.0.2.8", clients)
        self.assertIn("198.51.100.200", clients)
        self.assertNotIn("198.51.101.1", clients)
        self.assertIn("2001:db8:1:ffff::1", clients)
        self.assertNotIn("2001:db8:2::1", clients)
        self.assertIn("2001:db8:9::9", clients)

    def test_an_ipv6_address_matches_however_it_is_written(self) -> None:
        clients = self.clients("2001:DB8:0:0:0:0:0:7\n")
        self.assertIn("2001:db8::7", clients)
        self.assertNotIn("2001:db8::8", clients)

    def test_a_network_written_loosely_still_counts(self) -> None:
        self.assertIn("192.0.2.99", self.clients("192.0.2.1/24\n"))

    def test_tcprules_prefix_in_a_text_file(self) -> None:
        clients = self.clients("10.1.\n")
        self.assertIn("10.1.2.3", clients)
        self.assertNotIn("10.10.2.3", clients)

    def test_ipv4_mapped_client_matches_ipv4_entries(self) -> None:
        # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        clients = self.clients("198.51.100.0/24\n192.0.2.7\n10.1.\n")
        self.assertIn("::ffff:198.51.100.3", clients)
        self.assertIn("::ffff:192.0.2.7", clients)
        self.assertIn("::FFFF:10.1.2.3", clients)
        self.assertNotIn("::ffff:192.0.2.8", clients)

    def test_a_unix_socket_peer_matches_nothing(self) -> None:
        self.assertNotIn("unknown", self.clients("0.0.0.0/0\n::/0\n"))

    def test_cdb_with_addresses_and_tcprules_prefixes(self) -> None:
        clients = access.AccessList(self.writeCDB("clients.cdb", ["192.0.2.", "203.0.113.9", "10.", "2001:db8::1"]),
                                    access.clientKeys)
        self.assertIn("192.0.2.44", clients)
        self.assertNotIn("192.0.22.44", clients)
        self.assertIn("203.0.113.9", clients)
        self.assertNotIn("203.0.113.10", clients)
        self.assertIn("10.200.1.1", clients)
        self.assertIn("2001:db8::1", clients)
        self.assertNotIn("2001:db8::2", clients)


class HeloEntryTests(ListTestCase):
    def test_names_and_suffixes(self) -> None:
        helo = access.AccessList(self.writeText("helo", "localhost\n.dyn.example\n"), access.heloKeys)
        self.assertIn("localhost", helo)
        self.assertIn("LocalHost", helo)
        self.assertIn("host-1-2-3-4.dyn.example", helo)
        self.assertIn("a.b.dyn.example", helo)
        self.assertNotIn("dyn.example", helo)
        self.assertNotIn("notdyn.example", helo)
        self.assertNotIn("localhost.example", helo)

    def test_names_in_a_cdb(self) -> None:
        helo = access.AccessList(self.writeCDB("helo.cdb", ["friend.example", ".pool.example"]), access.heloKeys)
        self.assertIn("friend.example", helo)
        self.assertIn("x.pool.example", helo)
        self.assertNotIn("pool.example", helo)


class RereadTests(ListTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = ManualClock()

    def test_a_missing_file_is_an_empty_list_until_it_appears(self) -> None:
        senders = access.AccessList(self.path("senders"), access.addressKeys, self.clock)
        self.assertNotIn("a@bad.example", senders)
        self.writeText("senders", "@bad.example\n")
        self.clock.now += 1
        self.assertIn("a@bad.example", senders)

    def test_a_changed_file_is_read_again_once_a_second(self) -> None:
        path = self.writeText("senders", "one@bad.example\n")
        senders = access.AccessList(path, access.addressKeys, self.clock)
        self.assertIn("one@bad.example", senders)
        self.writeText("senders", "two@bad.example\nthree@bad.example\n")
        self.clock.now += 0.5
        self.assertIn("one@bad.example", senders)  # not looked at again yet
        self.clock.now += 0.5
        self.assertNotIn("one@bad.example", senders)
        self.assertIn("two@bad.example", senders)

    def test_a_file_replaced_by_rename_is_read_again(self) -> None:
        # How tcprules and cdbmake install a new database: write aside, rename over.
        path = self.writeCDB("clients.cdb", ["192.0.2.1"])
        clients = access.AccessList(path, access.clientKeys, self.clock)
        self.assertIn("192.0.2.1", clients)
        os.replace(self.writeCDB("clients.tmp", ["192.0.2.2"]), path)
        self.clock.now += 1
        self.assertNotIn("192.0.2.1", clients)
        self.assertIn("192.0.2.2", clients)

    def test_reload_reads_at_once(self) -> None:
        path = self.writeText("helo", "one.example\n")
        helo = access.AccessList(path, access.heloKeys, self.clock)
        self.writeText("helo", "two.example\n")
        helo.reload()
        self.assertIn("two.example", helo)
        self.assertNotIn("one.example", helo)

    def test_a_removed_file_empties_the_list(self) -> None:
        path = self.writeText("helo", "one.example\n")
        helo = access.AccessList(path, access.heloKeys, self.clock)
        os.unlink(path)
        helo.reload()
        self.assertNotIn("one.example", helo)

    def test_a_text_file_can_become_empty(self) -> None:
        path = self.writeText("clients", "192.0.2.0/24\n")
        clients = access.AccessList(path, access.clientKeys, self.clock)
        self.writeText("clients", "")
        clients.reload()
        self.assertNotIn("192.0.2.1", clients)

    def test_policy_reload_reads_every_list(self) -> None:
        lists = {
            "deny_senders": access.AccessList(self.writeText("s", "a@x.example\n"), access.addressKeys, self.clock),
            "deny_helo": access.AccessList(self.writeText("h", "one.example\n"), access.heloKeys, self.clock),
        }
        policy = access.AccessLists(lists)
        self.writeText("s", "b@x.example\n")
        self.writeText("h", "two.example\n")
        policy.reload()
        self.assertIn("b@x.example", lists["deny_senders"])
        self.assertIn("two.example", lists["deny_helo"])


class RereadInAThreadTests(ListTestCase):
    """With a thread to read in, the reactor thread never reads a list file after the
    first time: the list as it was answers until the thread has read the new one."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = ManualClock()
        self.runInThread = HeldThreads()
        self.hops = self.runInThread.held
        self.runHop = self.runInThread.runNext

    def test_a_changed_file_is_read_in_the_thread_and_the_old_list_answers_meanwhile(self) -> None:
        path = self.writeText("senders", "one@bad.example\n")
        senders = access.AccessList(path, access.addressKeys, self.clock, self.runInThread)
        self.assertEqual(self.hops, [])  # the first read is at once
        self.writeText("senders", "two@bad.example\n")
        self.clock.now += 1
        self.assertIn("one@bad.example", senders)
        self.clock.now += 1
        self.assertIn("one@bad.example", senders)
        self.assertEqual(len(self.hops), 1)  # one read at a time
        self.runHop()
        self.assertNotIn("one@bad.example", senders)
        self.assertIn("two@bad.example", senders)

    def test_an_unreadable_file_leaves_the_list_as_it_was_and_says_so(self) -> None:
        path = self.writeText("clients", "192.0.2.0/24\n")
        clients = access.AccessList(path, access.clientKeys, self.clock, self.runInThread)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        os.unlink(path)
        os.mkdir(path)  # a directory where the file was: it cannot be read
        self.clock.now += 1
        self.assertIn("192.0.2.1", clients)
        self.runHop()
        self.assertIn("192.0.2.1", clients)
        [event] = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertIn("Cannot read the access list", formatEvent(event))
        self.clock.now += 1
        self.assertIn("192.0.2.1", clients)
        self.runHop()  # the same error again: not said again (a read is tried every second)
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.error]), 1)
        os.rmdir(path)
        self.writeText("clients", "203.0.113.0/24\n")
        self.clock.now += 1
        self.assertIn("192.0.2.1", clients)
        self.runHop()  # read again once it can be
        self.assertNotIn("192.0.2.1", clients)
        self.assertIn("203.0.113.1", clients)
        self.assertIn("can be read again", formatEvent(events[-1]))

    def test_a_fifo_in_place_of_the_list_cannot_hold_the_thread(self) -> None:
        """A FIFO where the list was: opening it to read would wait for a writer for
        ever, holding a pool thread (and the shutdown that joins it)."""
        path = self.writeText("helo", "bad.example\n")
        helos = access.AccessList(path, access.heloKeys, self.clock, self.runInThread)
        os.unlink(path)
        os.mkfifo(path)
        self.clock.now += 1
        self.assertIn("bad.example", helos)
        self.runHop()  # returns at once: not a regular file, so the list stays
        self.assertIn("bad.example", helos)
        e = self.assertRaises(OSError, access.AccessList, path, access.heloKeys)
        self.assertEqual(e.strerror, "not a regular file")

    def test_a_file_replaced_while_it_is_opened_is_remembered_as_the_file_read(self) -> None:
        """The stamp that says whether the file changed is the opened file's, not that of
        the name looked at just before: a list renamed into place in between is not
        read twice, nor taken for the one before it."""
        path = self.writeText("senders", "one@bad.example\n")
        senders = access.AccessList(path, access.addressKeys, self.clock, self.runInThread)
        self.writeText("senders.new", "two@bad.example\n")
        realOpen = os.open

        def renameFirst(name: str, *args: Any) -> int:
            if name == path:
                os.rename(self.path("senders.new"), path)
            return realOpen(name, *args)

        self.patch(access.os, "open", renameFirst)
        self.writeText("senders", "one@bad.example\nthree@bad.example\n")  # changed: it is read again
        self.clock.now += 1
        self.assertIn("one@bad.example", senders)
        self.runHop()
        self.assertIn("two@bad.example", senders)
        self.clock.now += 1
        self.assertIn("two@bad.example", senders)
        [(_, read, args)] = self.hops
        self.assertIsNone(read(*args))  # the same file as read: not read again


class DialogTests(ListTestCase):
    """What a client sees, through a real smtpd session."""

    def start(self, options: dict[str, str], clientAddress: str = "192.0.2.1") -> Dialog:
        self.queue = MemoryQueue()
        policy = access.build(options, self.context())
        return Dialog(ServerSettings(hostname="mx.test"), self.queue, policies=[policy], clientAddress=clientAddress)

    def test_denied_client_is_refused_at_connect(self) -> None:
        self.writeText("badclients", "192.0.2.0/24\n")
        d = self.start({"deny_clients": "badclients"})
        self.assertEqual(d.read(), b"554 5.7.1 Access denied for 192.0.2.1\r\n")
        self.assertTrue(d.closed)

    def test_other_clients_are_greeted(self) -> None:
        self.writeText("badclients", "192.0.2.0/24\n")
        d = self.start({"deny_clients": "badclients"}, clientAddress="198.51.100.1")
        self.assertEqual(d.read(), b"220 mx.test ESMTP jsmail ready\r\n")

    def test_ipv4_client_on_a_dual_stack_listener(self) -> None:
        self.writeText("badclients", "192.0.2.0/24\n")
        d = self.start({"deny_clients": "badclients"}, clientAddress="::ffff:192.0.2.1")
        self.assertEqual(d.read(), b"554 5.7.1 Access denied for ::ffff:192.0.2.1\r\n")

    def test_client_in_a_tcprules_cdb(self) -> None:
        self.writeCDB("tcp.cdb", ["203.0.113."])
        d = self.start({"deny_clients": "tcp.cdb"}, clientAddress="203.0.113.50")
        self.assertEqual(d.read(), b"554 5.7.1 Access denied for 203.0.113.50\r\n")

    def test_allowed_client_beats_denied_network(self) -> None:
        self.writeText("deny", "192.0.2.0/24\n")
        self.writeText("allow", "192.0.2.1\n")
        d = self.start({"deny_clients": "deny", "allow_clients": "allow"})
        self.assertEqual(d.read(), b"220 mx.test ESMTP jsmail ready\r\n")

    def test_denied_helo_name(self) -> None:
        self.writeText("helo", ".dyn.example\n")
        d = self.start({"deny_helo": "helo"})
        d.read()
        self.assertEqual(d.send(b"EHLO Host-9.Dyn.Example\r\n"), b"550 5.7.1 HELO name Host-9.Dyn.Example refused\r\n")
        self.assertEqual(d.send(b"HELO host-9.dyn.example\r\n"), b"550 5.7.1 HELO name host-9.dyn.example refused\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<a@b.example>\r\n"), b"503 5.5.1 Send EHLO or HELO first\r\n")
        self.assertTrue(d.send(b"EHLO mail.good.example\r\n").startswith(b"250-mx.test greets mail.good.example\r\n"))

    def test_allowed_helo_beats_denied_suffix(self) -> None:
        self.writeText("deny", ".example\n")
        self.writeText("allow", ".good.example\n")
        d = self.start({"deny_helo": "deny", "allow_helo": "allow"})
        d.read()
        self.assertTrue(d.send(b"EHLO mx.good.example\r\n").startswith(b"250-"))
        self.assertEqual(d.send(b"EHLO mx.bad.example\r\n"), b"550 5.7.1 HELO name mx.bad.example refused\r\n")

    def test_denied_sender(self) -> None:
        self.writeText("badmailfrom", "x@y.example\n@spam.example\n")
        d = self.start({"deny_senders": "badmailfrom"})
        d.read()
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<x@y.example>\r\n"), b"553 5.7.1 Sender address <x@y.example> refused\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<Boss@SPAM.example> SIZE=10\r\n"),
                         b"553 5.7.1 Sender address <Boss@spam.example> refused\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<z@y.example>\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_denied_null_sender(self) -> None:
        self.writeText("badmailfrom", "<>\n")
        d = self.start({"deny_senders": "badmailfrom"})
        d.read()
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<>\r\n"), b"553 5.7.1 Sender address <> refused\r\n")

    def test_allowed_sender_beats_denied_domain(self) -> None:
        self.writeCDB("deny.cdb", ["@partner.example"])
        self.writeText("allow", "billing@partner.example\n")
        d = self.start({"deny_senders": "deny.cdb", "allow_senders": "allow"})
        d.read()
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<billing@partner.example>\r\n"), b"250 2.1.0 Sender OK\r\n")
        d.send(b"RSET\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<sales@partner.example>\r\n"),
                         b"553 5.7.1 Sender address <sales@partner.example> refused\r\n")

    def test_denied_recipient_and_the_message_goes_to_the_others(self) -> None:
        self.writeText("badrcptto", "old@mx.test\nnoreply@\n")
        d = self.start({"deny_recipients": "badrcptto"})
        d.read()
        d.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<old@mx.test>\r\n"), b"550 5.7.1 Recipient address <old@mx.test> refused\r\n")
        self.assertEqual(d.send(b"RCPT TO:<noreply@mx.test>\r\n"),
                         b"550 5.7.1 Recipient address <noreply@mx.test> refused\r\n")
        self.assertEqual(d.send(b"RCPT TO:<new@mx.test>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        d.send(b"DATA\r\n")
        self.assertRegex(d.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"), QUEUED)
        [(envelope, _)] = self.queue.messages.values()
        self.assertEqual([r.address for r in envelope.recipients], ["new@mx.test"])

    def test_allowed_recipient_beats_denied_one(self) -> None:
        self.writeText("deny", "@mx.test\n")
        self.writeText("allow", "postmaster@\n")
        d = self.start({"deny_recipients": "deny", "allow_recipients": "allow"})
        d.read()
        d.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(d.send(b"RCPT TO:<postmaster@mx.test>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send(b"RCPT TO:<Postmaster>\r\n"), b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(d.send(b"RCPT TO:<joe@mx.test>\r\n"), b"550 5.7.1 Recipient address <joe@mx.test> refused\r\n")

    def test_an_allow_list_alone_refuses_nothing(self) -> None:
        self.writeText("allow", "friend@x.example\n")
        d = self.start({"allow_senders": "allow"})
        d.read()
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<stranger@y.example>\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_lists_named_but_missing_refuse_nothing_until_written(self) -> None:
        d = self.start({"deny_senders": "badmailfrom", "deny_clients": "badclients"})
        self.assertEqual(d.read(), b"220 mx.test ESMTP jsmail ready\r\n")
        d.send(b"EHLO client.example\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<x@y.example>\r\n"), b"250 2.1.0 Sender OK\r\n")
        self.writeText("badmailfrom", "x@y.example\n")
        d.listener.phases.policies[0].reload()  # what SIGHUP does
        d.send(b"RSET\r\n")
        self.assertEqual(d.send(b"MAIL FROM:<x@y.example>\r\n"), b"553 5.7.1 Sender address <x@y.example> refused\r\n")

    def test_an_absolute_path_is_used_as_it_is(self) -> None:
        other = self.mktemp()
        os.makedirs(other)
        with open(os.path.join(other, "clients"), "w") as f:
            f.write("192.0.2.1\n")
        d = self.start({"deny_clients": os.path.join(os.path.abspath(other), "clients")})
        self.assertEqual(d.read(), b"554 5.7.1 Access denied for 192.0.2.1\r\n")


class BuildTests(ListTestCase):
    def test_unknown_options_are_refused_by_name(self) -> None:
        e = self.assertRaises(ValueError, access.build, {"deny_sender": "badmailfrom"}, self.context())
        self.assertIn("'deny_sender'", str(e))

    def test_several_unknown_options(self) -> None:
        e = self.assertRaises(ValueError, access.build, {"zzz": "a", "deny_senders": "b", "aaa": "c"}, self.context())
        self.assertIn("'aaa'", str(e))

    def test_a_path_must_be_a_string(self) -> None:
        e = self.assertRaises(ValueError, access.build, {"deny_clients": ["a", "b"]}, self.context())
        self.assertIn("deny_clients", str(e))

    def test_a_list_that_cannot_be_read_is_an_option_error(self) -> None:
        with open(self.path("broken.cdb"), "wb") as f:
            f.write(b"not a cdb")
        os.makedirs(self.path("adirectory"))
        for option, name in [("deny_clients", "broken.cdb"), ("allow_senders", "adirectory")]:
            e = self.assertRaises(ValueError, access.build, {option: name}, self.context())
            self.assertTrue(str(e).startswith(f"{option}: cannot read {self.path(name)}: "), str(e))

    def test_no_lists_is_a_check_that_refuses_nothing(self) -> None:
        policy = access.build({}, self.context())
        self.assertEqual(policy.lists, {})
        self.assertIsNone(policy.checkConnect(type("S", (), {"clientAddress": "192.0.2.1"})()))

    def test_built_by_name_in_a_policy_chain(self) -> None:
        self.writeText("badhelo", "bad.example\n")
        chain = buildChain(["access"], {"access": {"deny_helo": "badhelo"}}, self.context(), PLUGINS)
        [policy] = chain.policies
        self.assertIsInstance(policy, access.AccessLists)
        self.assertEqual(sorted(policy.lists), ["deny_helo"])

    def test_plugin_errors_say_where(self) -> None:
        e = self.assertRaises(PluginError, buildChain, ["access"], {"access": {"deny_everything": "x"}}, self.context(),
                               PLUGINS)
        self.assertEqual(e.key, "plugins.access")
        self.assertIn("'deny_everything'", str(e))

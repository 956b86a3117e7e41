"""Both queue stores against one contract, and the disk store's crash recovery."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
from dataclasses import asdict, fields, replace

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from jsmail._disk import spreadBelow
from jsmail.datadir import SPARE_DIRECTORIES
from jsmail.envelope import Envelope, EnvelopeFormatError, Recipient, RecipientState
from jsmail.interfaces import IQueue
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue
from jsmail.send.dsn import Action, Notice, writeDSN
from jsmail.testing import HeldThreads, filesInTmp


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run "in a thread" synchronously: the same code path, deterministic."""
    return defer.maybeDeferred(f, *args, **kwargs)


ENVELOPE = Envelope(sender="a@b.example", recipients=(Recipient("x@localhost"), Recipient("y@localhost")),
                    mailParams={"BODY": "8BITMIME"}, arrival=1000.0, clientAddress="192.0.2.1", helo="c")


class QueueContract:
    """What every IQueue does; mixed into one TestCase per store."""

    def makeQueue(self) -> IQueue:
        raise NotImplementedError

    def setUp(self) -> None:
        self.queue = self.makeQueue()

    def test_interface(self) -> None:
        verifyObject(IQueue, self.queue)

    @defer.inlineCallbacks
    def test_commit_then_read_back(self):  # type: ignore[no-untyped-def]
        incoming = self.queue.newMessage(ENVELOPE)
        incoming.write(b"Subject: x\r\n\r\n")
        incoming.write(b"body \xe9\r\n")
        self.assertEqual(incoming.size, 22)
        queueId = yield incoming.commit()
        self.assertEqual(queueId, incoming.queueId)
        with self.queue.openMessage(queueId) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody \xe9\r\n")
        found = yield self.queue.recover()
        self.assertEqual(found, [(queueId, ENVELOPE)])

    @defer.inlineCallbacks
    def test_abort_leaves_nothing(self):  # type: ignore[no-untyped-def]
        incoming = self.queue.newMessage(ENVELOPE)
        incoming.write(b"x")
        incoming.abort()
        found = yield self.queue.recover()
        self.assertEqual(found, [])

    @defer.inlineCallbacks
    def test_update_and_remove(self):  # type: ignore[no-untyped-def]
        incoming = self.queue.newMessage(ENVELOPE)
        queueId = yield incoming.commit()
        updated = replace(
            ENVELOPE, recipients=(Recipient("x@localhost", state=RecipientState.DELIVERED, lastReply="ok"), Recipient("y@localhost"))
        )
        yield self.queue.update(queueId, updated)
        found = yield self.queue.recover()
        self.assertEqual(found, [(queueId, updated)])
        yield self.queue.remove(queueId)
        found = yield self.queue.recover()
        self.assertEqual(found, [])

    @defer.inlineCallbacks
    def test_ids_sort_by_arrival(self):  # type: ignore[no-untyped-def]
        ids = []
        for _ in range(5):
            ids.append((yield self.queue.newMessage(ENVELOPE).commit()))
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(len(set(ids)), 5)


class MemoryQueueTests(QueueContract, TestCase):
    def makeQueue(self) -> IQueue:
        return MemoryQueue()


class MaildirQueueTests(QueueContract, TestCase):
    def makeQueue(self) -> IQueue:
        self.directory = self.mktemp()
        return MaildirQueue(self.directory, runNow)

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    @defer.inlineCallbacks
    def test_on_disk_format(self):  # type: ignore[no-untyped-def]
        """An operator can read the envelope with head -1 and the message after it."""
        incoming = self.queue.newMessage(ENVELOPE)
        incoming.write(b"hi\r\n")
        self.assertEqual(os.listdir(self.path("active")), [])
        queueId = yield incoming.commit()
        self.assertEqual(os.listdir(self.path("active")), [queueId])
        with open(self.path("active", queueId), "rb") as f:
            first, rest = f.read().split(b"\n", 1)
        self.assertEqual(Envelope.fromBytes(first), ENVELOPE)
        self.assertIn(b'"version":3', first)
        self.assertEqual(rest, b"hi\r\n")

    @defer.inlineCallbacks
    def test_recovery_of_each_state(self):  # type: ignore[no-untyped-def]
        """A crash at any step leaves a queue that recovers: unfinished receptions and
        half-removed entries are swept, queued and in-delivery ones come back."""
        queued = yield self.queue.newMessage(ENVELOPE).commit()
        inDelivery = yield self.queue.newMessage(ENVELOPE).commit()
        updated = replace(ENVELOPE, recipients=(Recipient("x@localhost", state=RecipientState.FAILED), Recipient("y@localhost")))
        yield self.queue.update(inDelivery, updated)
        receiving = self.queue.newMessage(ENVELOPE)
        receiving.write(b"half")
        with open(self.path("tmp", "X.env"), "wb") as f:
            f.write(b"half-written update")
        with open(self.path("active", "GONE.env"), "wb") as f:
            f.write(updated.toBytes())
        with open(self.path("active", "BROKEN"), "wb") as f:
            f.write(b"not json\nbody")
        with open(self.path("tmp", "3", "spare.LEFT"), "wb") as f:
            f.write(b"")
        restarted = MaildirQueue(self.directory, runNow)
        self.assertEqual(filesInTmp(self.path("tmp")), [])
        self.assertEqual(sorted(os.listdir(self.path("tmp"))), sorted(SPARE_DIRECTORIES))
        found = yield restarted.recover()
        self.assertEqual(found, [(queued, ENVELOPE), (inDelivery, updated)])
        self.assertEqual(sorted(os.listdir(self.path("active"))), sorted([queued, inDelivery, inDelivery + ".env"]))
        self.assertEqual(os.listdir(self.path("corrupt")), ["BROKEN"])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_fsync_failure_is_not_acknowledged(self):  # type: ignore[no-untyped-def]
        def failingThread(f, *a, **kw):  # type: ignore[no-untyped-def]
            return defer.fail(OSError(5, "Input/output error"))

        queue = MaildirQueue(self.directory, failingThread)
        incoming = queue.newMessage(ENVELOPE)
        incoming.write(b"x")
        yield self.assertFailure(incoming.commit(), OSError)
        self.assertEqual(os.listdir(self.path("active")), [])
        self.flushLoggedErrors(OSError)  # making spare files failed the same way

    @defer.inlineCallbacks
    def test_spare_files_are_made_ahead_and_removed_at_close(self):  # type: ignore[no-untyped-def]
        """Files for new messages are made by a thread ahead of need; a message takes
        one, and what is left is removed when the queue closes."""
        threads = HeldThreads()
        queue = MaildirQueue(self.directory, threads, spares=4)
        first = queue.newMessage(ENVELOPE)  # none ready: one made on the spot, and four asked for
        self.assertEqual(len(filesInTmp(self.path("tmp"))), 1)
        threads.runNext()
        self.assertEqual(len(filesInTmp(self.path("tmp"))), 5)
        second = queue.newMessage(ENVELOPE)  # a ready one
        second.write(b"Subject: second\r\n\r\nbody\r\n")
        first.abort()
        self.assertEqual(len(filesInTmp(self.path("tmp"))), 4)
        committed = second.commit()
        while threads.held:  # the sync (the file system looked at first)
            threads.runNext()
        queueId = yield committed
        with open(self.path("active", queueId), "rb") as f:
            self.assertTrue(f.read().endswith(b"\nSubject: second\r\n\r\nbody\r\n"))
        self.assertEqual(len(filesInTmp(self.path("tmp"))), 3)
        self.assertEqual(threads.held, [])
        queue.close()
        self.assertEqual(filesInTmp(self.path("tmp")), [])

    def test_sweep_does_not_follow_a_spare_directory_swapped_for_a_link(self) -> None:
        """The gateway's user may replace ``tmp/3`` with a link to a directory of root's
        between two starts: root's sweep removes nothing through it."""
        victims = os.path.abspath(self.mktemp())
        os.mkdir(victims)
        with open(os.path.join(victims, "authorized_keys"), "wb") as f:
            f.write(b"precious")
        with open(self.path("tmp", "4", "spare.LEFT"), "wb"):
            pass
        os.rmdir(self.path("tmp", "3"))
        os.symlink(victims, self.path("tmp", "3"))
        MaildirQueue(self.directory, runNow)
        self.assertEqual(os.listdir(victims), ["authorized_keys"])
        self.assertFalse(os.path.exists(self.path("tmp", "4", "spare.LEFT")))  # the real directories are swept

    def test_spare_files_are_made_in_each_spare_directory_in_turn(self) -> None:
        """Each batch of spare files goes into the next directory under tmp/, so that
        the files are spread over the file system's block groups (see spreadBelow)."""
        threads = HeldThreads()
        queue = MaildirQueue(self.directory, threads, spares=2)
        batches: list[str] = []
        while len(batches) <= len(SPARE_DIRECTORIES):
            before = set(filesInTmp(self.path("tmp")))
            queue.newMessage(ENVELOPE).abort()  # takes one, and asks for a batch when none is left
            if threads.held:
                threads.runNext()
                made = set(filesInTmp(self.path("tmp"))) - before
                self.assertEqual(len({os.path.dirname(p) for p in made}), 1, made)  # a batch in one directory
                batches.append(os.path.basename(os.path.dirname(made.pop())))
        queue.close()
        self.assertEqual(batches, [*SPARE_DIRECTORIES, SPARE_DIRECTORIES[0]])  # each in turn, and round again


class SpreadDirectoryTests(TestCase):
    """The queue's spare directories are made in block groups of their own, where the
    file system can (ext2, ext3, ext4: ``chattr +T``)."""

    def test_spare_directories_are_spread_where_the_file_system_can(self) -> None:
        directory = os.path.abspath(self.mktemp())
        MaildirQueue(directory, runNow)
        tmp = os.path.join(directory, "tmp")
        if not spreadBelow(tmp):
            raise SkipTest("this file system has no Orlov allocator to tell (not ext2, ext3 or ext4)")
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = array.array("i", [0])
            fcntl.ioctl(fd, 0x80086601, flags, True)  # FS_IOC_GETFLAGS
        finally:
            os.close(fd)
        self.assertTrue(flags[0] & 0x00020000)  # FS_TOPDIR_FL, set before the directories were made
        inodes = [os.stat(os.path.join(tmp, name)).st_ino for name in SPARE_DIRECTORIES]
        # Made one after another in one group, their inodes would be neighbours.
        self.assertGreater(max(inodes) - min(inodes), 1000, inodes)

    def test_nothing_but_a_directory_is_marked(self) -> None:
        path = os.path.abspath(self.mktemp())
        self.assertFalse(spreadBelow(path))  # missing
        with open(path, "wb"):
            pass
        self.assertFalse(spreadBelow(path))  # a file
        os.symlink(os.path.dirname(path), path + ".link")
        self.assertFalse(spreadBelow(path + ".link"))  # a link is not followed


class EnvelopeFormatTests(TestCase):
    VERSION_1 = (b'{"version":1,"sender":"a@b.example","recipients":[{"address":"x@localhost","params":{},'
                 b'"state":"failed","lastReply":"550 5.1.1 no such user","remoteMTA":"dns; mx.test"},'
                 b'{"address":"y@localhost","params":{},"state":"pending","lastReply":"451 try later",'
                 b'"remoteMTA":null},{"address":"z@localhost","params":{},"state":"pending","lastReply":null,'
                 b'"remoteMTA":null}],"mailParams":{},"arrival":1.0,"clientAddress":"","helo":"",'
                 b'"protocol":"ESMTP","attempts":1,"nextAttempt":2.0}')

    def test_envelope_written_by_version_1_still_loads(self) -> None:
        """A queue file written before recipients carried their reply's status (format
        version 1) loads with the status and the smtp label its bounce had then."""
        x, y, z = Envelope.fromBytes(self.VERSION_1).recipients
        self.assertEqual((x.state, x.lastReply, x.lastStatus, x.lastFromPeer, x.remoteMTA),
                         (RecipientState.FAILED, "550 5.1.1 no such user", "5.1.1", True, "dns; mx.test"))
        self.assertEqual((y.lastReply, y.lastStatus, y.lastFromPeer), ("451 try later", "5.0.0", True))
        self.assertEqual(z, Recipient("z@localhost"))

    def test_version_1_bounce_says_what_it_said_before(self) -> None:
        envelope = Envelope.fromBytes(self.VERSION_1)
        out = io.BytesIO()
        writeDSN(out.write, io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"), "Q", envelope,
                 [Notice(envelope.recipients[0], Action.FAILED)], "mx.test", 0.0)
        self.assertIn(b"Status: 5.1.1\r\nRemote-MTA: dns; mx.test\r\n"
                      b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n", out.getvalue())

    def test_round_trip(self) -> None:
        """What versions 2 and 3 add comes back as it was written."""
        envelope = replace(ENVELOPE, delayWarned=True, recipients=(
            Recipient("x@localhost", {"NOTIFY": "FAILURE"}, RecipientState.FAILED, "550 5.4.6 looping", "5.4.6",
                      reported=True),
            Recipient("y@localhost", {}, RecipientState.PENDING, "451 try later", "4.0.0", True, "dns; mx.test")))
        raw = envelope.toBytes()
        self.assertTrue(raw.startswith(b'{"version":3,'), raw)
        self.assertEqual(Envelope.fromBytes(raw), envelope)

    def test_every_field_is_written(self) -> None:
        """The hand-written encoding has every field of both dataclasses, in their order."""
        envelope = replace(ENVELOPE, mailParams={"SIZE": "10"}, attempts=2, nextAttempt=5.5, recipients=(
            Recipient("y@localhost", {"NOTIFY": None}, RecipientState.PENDING, "451 later", "4.0.0", True, "dns; m"),))
        data = json.loads(envelope.toBytes())
        self.assertEqual(list(data), ["version"] + [f.name for f in fields(Envelope)])
        self.assertEqual(list(data["recipients"][0]), [f.name for f in fields(Recipient)])
        self.assertEqual(data["recipients"][0], {**asdict(envelope.recipients[0]), "state": "pending"})
        self.assertEqual({k: v for k, v in data.items() if k not in ("version", "recipients")},
                         {k: v for k, v in asdict(envelope).items() if k != "recipients"})

    def test_version_2_failures_are_still_owed_their_bounce(self) -> None:
        """A version-2 envelope (written before each recipient recorded its report)
        bounced its failures at the message's end: they are still owed a report, its
        delivered recipients nothing."""
        raw = replace(ENVELOPE, recipients=(Recipient("x@localhost", state=RecipientState.FAILED),
                                            Recipient("y@localhost", state=RecipientState.DELIVERED),
                                            Recipient("z@localhost"))).toBytes()
        raw = raw.replace(b'"version":3', b'"version":2').replace(b',"reported":false', b"")
        raw = raw.replace(b',"delayWarned":false', b"")
        self.assertNotIn(b"reported", raw)
        self.assertEqual([r.reported for r in Envelope.fromBytes(raw).recipients], [False, True, False])

    def test_unknown_version_refused(self) -> None:
        raw = self.VERSION_1.replace(b'"version":1', b'"version":4')
        error = self.assertRaises(EnvelopeFormatError, Envelope.fromBytes, raw)
        self.assertEqual(str(error), "envelope format version 4 is not 3")

"""Sessions in receiving processes ([smtp] processes): real child processes, real
sockets on 127.0.0.1, and the attacks that spreading sessions over processes invites."""

from __future__ import annotations

import base64
import glob
import os
import signal
import smtplib
import socket
import ssl
import struct
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, reactor, task
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from jsmail.config import ConfigError, loadConfig
from jsmail.service import MailGateway
from jsmail.testing import filesInTmp
from tests.test_metrics import httpGet, sample

NONE: list[str] = []


def greeting(connection: socket.socket) -> bytes:
    """The server's first reply line (blocking, with the socket's time-out)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def command(connection: socket.socket, line: bytes) -> bytes:
    """Send one command line and read its whole reply (the last line has a space after the code)."""
    connection.sendall(line + b"\r\n")
    data = b""
    while True:
        chunk = connection.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


class ReceivingProcessesTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def startGateway(self, perClient: int = 3, metrics: bool = False, smtps: bool = False) -> Any:
        self.data = os.path.abspath(self.mktemp())
        config = loadConfig(settings={
            "server": {"hostname": "mx.test", "data": self.data},
            "smtp": {"listen": "tcp:0:interface=127.0.0.1", "submission": NONE, "processes": 2,
                     "smtps": "tcp:0:interface=127.0.0.1" if smtps else NONE,
                     "max_connections_per_client": perClient},
            "auth": {"allow_plaintext": True, "max_client_failures": 2, "failure_delay": 0},
            "queue": {"delivery_process": True},
            "metrics": {"listen": "tcp:0:interface=127.0.0.1" if metrics else ""}})
        self.gateway = MailGateway(config)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        port = yield self.gateway.listeners[0].whenListening()
        self.port = port.getHost().port
        yield self.waitFor(lambda: len(self.ready()) == 1, "the receiving process")

    def ready(self) -> list[Any]:
        assert self.gateway.receivers is not None
        return [r for r in self.gateway.receivers.receivers.values() if r.ready]

    def connect(self) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.addCleanup(connection.close)
        return connection

    @defer.inlineCallbacks
    def waitFor(self, predicate, what: str):  # type: ignore[no-untyped-def]
        for _ in range(600):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def counted(self) -> list[int]:
        """Sessions in the main process, then in each ready receiving process, as the main process counts them."""
        assert self.gateway.receivers is not None
        return [len(self.gateway.receivers.local), *(len(r.connections) for r in self.ready())]

    def countedFromThread(self) -> list[int]:
        """:meth:`counted`, asked from a client's thread: read on the reactor thread, so
        never halfway through a hand-over (the session's reply can reach the client
        while the reactor thread waits for the GIL back from sending the descriptor)."""
        return list(blockingCallFromThread(reactor, self.counted))

    def delivered(self, local: str) -> int:
        return len(glob.glob(os.path.join(self.data, "mail", "localhost", local, "new", "*")))

    @defer.inlineCallbacks
    def test_sessions_go_to_the_process_with_fewest_and_mail_is_delivered(self):  # type: ignore[no-untyped-def]
        yield self.startGateway()
        first = self.connect()  # both run none: the main process takes it
        yield deferToThread(greeting, first)

        def send() -> list[int]:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                code, _ = client.ehlo("client.test")
                held = self.countedFromThread()
                client.sendmail("a@example.org", ["x@localhost"], b"Subject: x\r\n\r\nhi\r\n")
            return [code, *held]

        code, *held = yield deferToThread(send)
        self.assertEqual(code, 250)
        self.assertEqual(held, [1, 1])  # the second session ran in the receiving process
        yield self.waitFor(lambda: self.delivered("x") == 1, "the delivery")

    @defer.inlineCallbacks
    def test_connections_spread_over_processes_still_meet_the_per_client_limit(self):  # type: ignore[no-untyped-def]
        """An attacker's connections land in different processes; the limit counts them all."""
        yield self.startGateway(perClient=3)
        held = [self.connect() for _ in range(3)]
        replies = yield deferToThread(lambda: [greeting(c) for c in held])
        self.assertEqual([r[:4] for r in replies], [b"220 "] * 3)
        self.assertEqual(self.counted(), [2, 1])  # spread over both processes
        refused = yield deferToThread(lambda: greeting(self.connect()))
        self.assertTrue(refused.startswith(b"421 4.7.0 "), refused)
        held[0].close()
        yield self.waitFor(lambda: self.counted() == [1, 1], "the slot to be given back")
        again = yield deferToThread(lambda: greeting(self.connect()))
        self.assertEqual(again[:4], b"220 ")

    @defer.inlineCallbacks
    def test_auth_guessing_spread_over_processes_is_counted_in_all_of_them(self):  # type: ignore[no-untyped-def]
        """One failure in each process is two failures from the client, wherever it tries next."""
        yield self.startGateway(perClient=4)
        wrong = b"AUTH PLAIN " + base64.b64encode(b"\0someone\0wrong")

        def guess(connection: socket.socket) -> bytes:
            command(connection, b"EHLO client.test")
            return command(connection, wrong)

        first, second = self.connect(), self.connect()
        yield deferToThread(lambda: [greeting(first), greeting(second)])
        self.assertEqual(self.counted(), [1, 1])  # one session in each process
        replies = yield deferToThread(lambda: [guess(first), guess(second)])
        self.assertEqual([r[:9] for r in replies], [b"535 5.7.8"] * 2)
        yield task.deferLater(reactor, 0.5, lambda: None)  # the counts travel through the main process
        third, fourth = self.connect(), self.connect()
        yield deferToThread(lambda: [greeting(third), greeting(fourth)])
        self.assertEqual(self.counted(), [2, 2])  # one more session in each
        replies = yield deferToThread(lambda: [guess(third), guess(fourth)])
        for refused in replies:
            self.assertTrue(refused.startswith(b"421 4.7.0 "), refused)

    @defer.inlineCallbacks
    def test_killed_receiving_process_frees_its_slots_and_is_started_again(self):  # type: ignore[no-untyped-def]
        yield self.startGateway(perClient=4)
        held = [self.connect() for _ in range(3)]
        yield deferToThread(lambda: [greeting(c) for c in held])
        self.assertEqual(self.counted(), [2, 1])
        victim = self.ready()[0]
        tmp = os.path.join(self.data, "queue", "tmp")
        tag = f"{victim.pid & 0xFFFFF:05X}"  # the pid part of its queue ids, and of its spare files' names

        def itsFiles() -> list[str]:
            return [path for path in filesInTmp(tmp) if os.path.basename(path).removeprefix("spare.")[13:18] == tag]

        def send(local: str) -> dict:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                return client.sendmail("a@example.org", [f"{local}@localhost"], b"Subject: y\r\n\r\nhi\r\n")

        yield deferToThread(send, "w")  # in the receiving process (1 session against 2): it makes spare files
        yield self.waitFor(lambda: itsFiles(), "the receiving process's spare files")
        os.kill(victim.pid, signal.SIGKILL)
        yield self.waitFor(lambda: self.ready() and victim not in self.ready(), "a new receiving process")
        yield self.waitFor(lambda: not itsFiles(), "its files in queue/tmp/ to be removed")
        self.assertEqual(self.counted(), [2, 0])  # the killed process's session is gone, and its slot free
        assert self.gateway.receivers is not None
        self.assertEqual(sum(self.gateway.receivers.ports[0].factory.perClient.values()), 2)
        yield deferToThread(send, "y")  # in the new receiving process, which has fewest
        yield self.waitFor(lambda: self.delivered("y") == 1, "the delivery")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_stuck_receiving_process_gets_no_more_sessions(self):  # type: ignore[no-untyped-def]
        """A flood while the receiving process cannot read its channel: once the channel
        is full the main process runs the sessions itself; none is refused or lost."""
        yield self.startGateway(perClient=100)
        receiver = self.ready()[0]
        receiver.channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the smallest the kernel allows
        os.kill(receiver.transport.pid, signal.SIGSTOP)
        try:
            flood = [self.connect() for _ in range(60)]
            yield self.waitFor(lambda: sum(self.counted()) == 60, "every connection to be placed")
            local, handed = self.counted()
            self.assertLess(handed, 20)  # what fitted in its channel; the main process took the rest
        finally:
            os.kill(receiver.transport.pid, signal.SIGCONT)
        replies = yield deferToThread(lambda: [greeting(c)[:4] for c in flood])
        self.assertEqual(replies, [b"220 "] * 60)

    def reset(self) -> socket.socket:
        """A connection the client resets (RST) as soon as it is made, before the server reads it."""
        connection = self.connect()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return connection

    @defer.inlineCallbacks
    def test_client_reset_before_the_main_process_reads_it_leaks_no_slot(self):  # type: ignore[no-untyped-def]
        """A connection reset while it waits to be accepted: nothing is counted for it,
        and the port goes on accepting (an error there once stopped it for good)."""
        yield self.startGateway(perClient=1)
        self.reset().close()  # the reactor has not run since: it is reset in the listen queue
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.counted(), [0, 0])
        again = yield deferToThread(lambda: greeting(self.connect()))
        self.assertEqual(again[:4], b"220 ")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_client_reset_before_the_receiving_process_reads_it_leaks_no_slot(self):  # type: ignore[no-untyped-def]
        yield self.startGateway(perClient=2)
        held = self.connect()  # runs in the main process, so the next one goes to the receiving process
        yield deferToThread(greeting, held)
        receiver = self.ready()[0]
        os.kill(receiver.transport.pid, signal.SIGSTOP)
        try:
            handedOver = self.reset()
            yield self.waitFor(lambda: self.counted() == [1, 1], "the hand-over")
            handedOver.close()
        finally:
            os.kill(receiver.transport.pid, signal.SIGCONT)
        yield self.waitFor(lambda: self.counted() == [1, 0], "the slot to be given back")
        again = yield deferToThread(lambda: greeting(self.connect()))
        self.assertEqual(again[:4], b"220 ")  # within the limit of 2 again

    @defer.inlineCallbacks
    def test_metrics_count_the_sessions_of_every_process(self):  # type: ignore[no-untyped-def]
        yield self.startGateway(metrics=True)
        metricsPort = (yield self.gateway.operations.listener.whenListening()).getHost().port
        held = [self.connect() for _ in range(2)]
        yield deferToThread(lambda: [command(c, b"QUIT") for c in held if greeting(c)])
        yield self.waitFor(lambda: self.counted() == [0, 0], "both sessions to end")
        yield task.deferLater(reactor, 1.5, lambda: None)  # the receiving process sends its counts once a second
        _, _, text = yield httpGet(metricsPort, "/metrics")
        self.assertEqual(sample(text, "jsmail_smtpd_connections_total", listener="smtp"), 2)
        # each process's reply hook: the receiving process's reach the main one through its log
        self.assertEqual(sample(text, "jsmail_smtpd_replies_total", command="CONNECT", code="220", enhanced=""), 2)

    @defer.inlineCallbacks
    def test_sighup_reloads_in_the_receiving_processes_too(self):  # type: ignore[no-untyped-def]
        yield self.startGateway()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.gateway.reload()  # what SIGHUP calls under twistd
        yield self.waitFor(lambda: len([e for e in events if e.get("log_format", "").startswith("SIGHUP: reloaded")])
                           == 2, "the gateway's and the receiving process's reload lines")

    @defer.inlineCallbacks
    def test_an_error_acting_on_a_message_does_not_stop_the_channel(self):  # type: ignore[no-untyped-def]
        """The gateway keeps reading a receiving process's channel after one message
        raised (the reactor drops a reader whose doRead raises, and with it every slot
        that process would give back)."""
        yield self.startGateway()
        assert self.gateway.receivers is not None

        def broken(queueId: str) -> None:
            raise RuntimeError("the delivery process cannot be told")

        self.gateway.receivers.notify = broken
        held = self.connect()  # in the main process: the message goes to the receiving process
        yield deferToThread(greeting, held)

        def send() -> dict:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:  # queued: the mailbox is new
                return client.sendmail("a@example.org", ["z@localhost"], b"Subject: z\r\n\r\nhi\r\n")

        yield deferToThread(send)
        yield self.waitFor(lambda: self.counted() == [1, 0], "the ended session's slot (read after the error)")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_implicit_tls_sessions_are_handed_over_too(self):  # type: ignore[no-untyped-def]
        """An smtps connection is handed over as TCP; the receiving process does the TLS."""
        yield self.startGateway(smtps=True)
        smtpsPort = (yield self.gateway.listeners[1].whenListening()).getHost().port
        held = self.connect()  # in the main process: the next goes to the receiving process
        yield deferToThread(greeting, held)

        def overTLS() -> tuple[bytes, list[int]]:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the self-signed certificate
            with socket.create_connection(("127.0.0.1", smtpsPort), timeout=30) as raw, \
                    context.wrap_socket(raw) as connection:
                return greeting(connection), self.countedFromThread()

        first, held = yield deferToThread(overTLS)
        self.assertEqual(first[:4], b"220 ")
        self.assertEqual(held, [1, 1])

    @defer.inlineCallbacks
    def test_no_descriptor_is_left_behind_by_sessions_handed_over(self):  # type: ignore[no-untyped-def]
        yield self.startGateway(perClient=100)
        held = self.connect()
        yield deferToThread(greeting, held)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            batch = [self.connect() for _ in range(20)]
            yield deferToThread(lambda b=batch: [command(c, b"QUIT") for c in b if greeting(c)])
            for connection in batch:
                connection.close()
        yield self.waitFor(lambda: self.counted() == [1, 0], "every session to end")
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    @defer.inlineCallbacks
    def test_stopping_the_gateway_stops_the_receiving_processes(self):  # type: ignore[no-untyped-def]
        yield self.startGateway()
        pids = [r.transport.pid for r in self.ready()]
        yield self.gateway.stopService()
        for pid in pids:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    @defer.inlineCallbacks
    def test_bogus_queue_ids_from_a_compromised_receiving_process_do_not_reach_the_delivery_process(self):  # type: ignore[no-untyped-def]
        """A queue id goes to the delivery process as one line and names a file: a new
        line, a path or a non-ASCII id (which raised in the reactor) is dropped; so is a
        connection id that is not a number (a list raised TypeError)."""
        yield self.startGateway()
        receivers = self.gateway.receivers
        assert receivers is not None
        told: list[str] = []
        receivers.notify = told.append
        receiver = self.ready()[0]
        for bogus in ["0000000000000ABCDE001\nX", "../../../etc/passwd", "\u00e9" * 21, ["x"], 7]:
            receivers.heard(["Q", bogus], [], receiver)
        receivers.heard(["R", ["x"]], [], receiver)
        receivers.heard(["Q", "0000000000000ABCDE001"], [], receiver)
        self.assertEqual(told, ["0000000000000ABCDE001"])


class CommandLineCheckersTests(TestCase):
    def test_checkers_from_the_command_line_are_refused_with_receiving_processes(self) -> None:
        """``twistd jsmail --auth`` makes checkers in the gateway's memory, which no
        receiving process could use: refused at start rather than AUTH failing there."""
        config = loadConfig(settings={
            "server": {"hostname": "mx.test", "data": os.path.abspath(self.mktemp())},
            "smtp": {"listen": "tcp:0:interface=127.0.0.1", "submission": NONE, "smtps": NONE, "processes": 2}})
        with self.assertRaises(ConfigError) as caught:
            MailGateway(config, extraCheckers=[InMemoryUsernamePasswordDatabaseDontUse(u=b"p")])
        self.assertIn("set [auth] checkers", str(caught.exception))

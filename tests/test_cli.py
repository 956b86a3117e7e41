"""The jsmail command: passwd, queue list/show (text and JSON), queue flush."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace
from unittest import mock

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jsmail.cli import main
from jsmail.envelope import Envelope, Recipient
from jsmail.queue.store import MaildirQueue


def runNow(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return defer.maybeDeferred(f, *args, **kwargs)


class CommandTests(TestCase):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.queue = MaildirQueue(os.path.join(self.data, "queue"), runNow)

    def run_(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        """Run ``jsmail --data DATA ARGV...``: exit status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch("sys.stdin", io.StringIO(stdin)):
            code = main(["--data", self.data, *argv])
        return code, out.getvalue(), err.getvalue()

    def enqueue(self, envelope: Envelope, data: bytes) -> str:
        incoming = self.queue.newMessage(envelope)
        incoming.write(data)
        return self.successResultOf(incoming.commit())

    def test_passwd(self) -> None:
        code, out, _ = self.run_("passwd", "u", stdin="secret\n")
        self.assertEqual(code, 0)
        with open(os.path.join(self.data, "passwd")) as f:
            self.assertTrue(f.read().startswith("u:$2b$"))

    def test_queue_list_and_show(self) -> None:
        envelope = Envelope("a@example.org", (Recipient("x@localhost"), Recipient("y@example.net")), arrival=1.0)
        first = self.enqueue(envelope, b"Subject: one\r\n\r\nbody\r\n")
        deferred = replace(envelope, recipients=(
            replace(envelope.recipients[0], state=envelope.recipients[0].state.DELIVERED, lastReply="ok"),
            replace(envelope.recipients[1], lastReply="451 4.4.1 Cannot connect"),
        ), attempts=1)
        self.successResultOf(self.queue.update(first, deferred))
        second = self.enqueue(Envelope("", (Recipient("z@localhost"),), arrival=2.0), b"Subject: two\r\n\r\nx\r\n")

        code, out, _ = self.run_("queue", "list")
        self.assertEqual(code, 0)
        self.assertIn(f"{first}", out)
        self.assertIn("    delivered <x@localhost>  ok\n", out)
        self.assertIn("    pending   <y@example.net>  451 4.4.1 Cannot connect\n", out)
        self.assertTrue(out.endswith("-- 2 message(s) in the queue\n"))

        code, out, _ = self.run_("queue", "list", "--json")
        listed = json.loads(out)
        self.assertEqual([e["id"] for e in listed], [first, second])
        self.assertEqual(listed[0]["size"], len(b"Subject: one\r\n\r\nbody\r\n"))
        self.assertEqual(listed[0]["recipients"][1], {"address": "y@example.net", "state": "pending",
                                                       "lastReply": "451 4.4.1 Cannot connect"})
        self.assertEqual((listed[1]["sender"], listed[1]["attempts"]), ("", 0))

        code, out, _ = self.run_("queue", "show", second, "--json")
        self.assertEqual(json.loads(out)["headers"], "Subject: two\r\n")
        code, _, err = self.run_("queue", "show", "NOSUCHID")
        self.assertEqual(code, 1)
        self.assertIn("no message NOSUCHID", err)

    def test_flush_wakes_the_delivery_process(self) -> None:
        """Through the trigger FIFO the delivery process reads (no signal, no pid)."""
        trigger = os.path.join(self.data, "queue", "trigger")
        os.mkfifo(trigger, 0o600)
        reader = os.open(trigger, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        code, out, _ = self.run_("queue", "flush")
        self.assertEqual((code, os.read(reader, 10)), (0, b"!"))
        self.assertIn("asked the delivery process to retry", out)

    def test_flush_without_a_running_gateway(self) -> None:
        code, _, err = self.run_("queue", "flush")
        self.assertEqual(code, 1)
        self.assertIn("no running delivery process", err)


class MoveTests(CommandTests):
    def test_hold_release_delete(self) -> None:
        queueId = self.enqueue(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0), b"S: x\r\n\r\nb\r\n")
        self.assertEqual(self.run_("queue", "hold", queueId)[:2], (0, f"jsmail queue: {queueId} held\n"))
        self.assertEqual(os.listdir(os.path.join(self.data, "queue", "active")), [])
        code, out, _ = self.run_("queue", "list")
        self.assertIn("(held)", out)
        self.assertEqual(json.loads(self.run_("queue", "show", queueId, "--json")[1])["held"], True)
        self.assertEqual(self.run_("queue", "release", queueId)[0], 0)
        self.assertEqual(os.listdir(os.path.join(self.data, "queue", "active")), [queueId])
        self.assertEqual(self.run_("queue", "delete", queueId)[:2], (0, f"jsmail queue: {queueId} deleted\n"))
        self.assertEqual(self.run_("queue", "list", "--json")[1].strip(), "[]")
        code, _, err = self.run_("queue", "delete", queueId)
        self.assertEqual(code, 1)
        self.assertIn("no message", err)

    def test_ids_cannot_name_other_files(self) -> None:
        self.assertEqual(self.run_("queue", "delete", "../../passwd")[0], 1)
        self.assertEqual(self.run_("queue", "show", "x.env")[0], 1)


class RequeueTests(CommandTests):
    def test_requeue_resets_the_schedule(self) -> None:
        envelope = Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0, attempts=4, nextAttempt=9e9)
        queueId = self.enqueue(envelope, b"S: x\r\n\r\nb\r\n")
        self.assertEqual(self.run_("queue", "requeue")[:2], (0, "jsmail queue: 1 message(s) requeued\n"))
        [listed] = json.loads(self.run_("queue", "list", "--json")[1])
        self.assertEqual((listed["id"], listed["attempts"], listed["nextAttempt"]), (queueId, 0, None))
        self.assertEqual(self.run_("queue", "requeue", "NOSUCHID")[0], 1)


class DataDirectoryTests(TestCase):
    """One rule for every command: --data, else $JSMAIL_DATA, else ./jsmail-data."""

    def test_order(self) -> None:
        from jsmail.datadir import dataDirectory

        with mock.patch.dict(os.environ, {"JSMAIL_DATA": "/from/env"}):
            self.assertEqual(dataDirectory("/given"), "/given")
            self.assertEqual(dataDirectory(None), "/from/env")
        with mock.patch.dict(os.environ, {"JSMAIL_DATA": ""}):
            self.assertEqual(dataDirectory(None), "jsmail-data")
            self.assertEqual(dataDirectory(None, default=""), "")


class QueueToolsTests(CommandTests):
    """Newcomer review 12: the queue tools read the gateway's configuration, and a
    wrong or unreadable directory is an error, never an empty queue."""

    def runArgv(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as e:  # argparse's --version and usage errors
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def test_config_names_the_data_directory(self) -> None:
        queueId = self.enqueue(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0),
                               b"S: x\r\n\r\nb\r\n")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'[server]\ndata = "{self.data}"\n')
        for argv in (("--config", path, "queue", "list"), ("queue", "list", "--config", path)):
            code, out, _ = self.runArgv(*argv)
            self.assertEqual(code, 0)
            self.assertIn(queueId, out)

    def test_jsmail_config_in_the_environment_as_jsmail_sendmail_reads_it(self) -> None:
        queueId = self.enqueue(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0),
                               b"S: x\r\n\r\nb\r\n")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'[server]\ndata = "{self.data}"\n')
        with mock.patch.dict(os.environ, {"JSMAIL_CONFIG": path, "JSMAIL_DATA": ""}):
            code, out, _ = self.runArgv("queue", "list")
        self.assertEqual(code, 0)
        self.assertIn(queueId, out)

    def test_a_bad_config_is_one_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\ndata = 3\n")
        self.assertEqual(self.runArgv("--config", path, "queue", "list"),
                         (2, "", f"jsmail: configuration error: {path}: server.data: expected a non-empty string, "
                                 "got 3\n"))

    def test_a_directory_without_a_queue_is_an_error_not_an_empty_list(self) -> None:
        elsewhere = os.path.abspath(self.mktemp())
        code, out, err = self.runArgv("--data", elsewhere, "queue", "list")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"jsmail queue: no queue in {elsewhere}/queue (give the gateway's --config, or --data)\n")

    def test_an_unreadable_queue_is_one_line_not_a_traceback(self) -> None:
        code, out, err = runAsAnotherUser(lambda: self.run_("queue", "list"),
                                          os.path.join(self.data, "queue", "active"))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("cannot read the queue", err)
        self.assertNotIn("Traceback", err)

    def test_json_from_every_queue_command(self) -> None:
        queueId = self.enqueue(Envelope("a@example.org", (Recipient("x@localhost"),), arrival=1.0),
                               b"S: x\r\n\r\nb\r\n")
        self.assertEqual(json.loads(self.run_("queue", "hold", queueId, "--json")[1]), {"id": queueId, "done": "held"})
        self.assertEqual(json.loads(self.run_("queue", "release", queueId, "--json")[1])["done"], "released")
        self.assertEqual(json.loads(self.run_("queue", "requeue", "--json")[1]), {"requeued": [queueId]})
        self.assertEqual(json.loads(self.run_("queue", "delete", queueId, "--json")[1])["done"], "deleted")

    def test_passwd_deletes_a_user(self) -> None:
        self.run_("passwd", "u", stdin="secret\n")
        self.run_("passwd", "v", stdin="other\n")
        self.assertEqual(self.run_("passwd", "--delete", "u")[0], 0)
        with open(os.path.join(self.data, "passwd")) as f:
            self.assertEqual([line.split(":")[0] for line in f], ["v"])
        code, _, err = self.run_("passwd", "--delete", "u")
        self.assertEqual(code, 1)
        self.assertIn("no user u in", err)

    def test_version_is_jsmails(self) -> None:
        from jsmail import __version__

        self.assertEqual(self.runArgv("--version")[:2], (0, f"jsmail {__version__}\n"))


def runAsAnotherUser(command, unreadable: str):  # type: ignore[no-untyped-def]
    """Run ``command`` as a user who may not read ``unreadable``: in a child that has
    become nobody when this is root (root reads everything), else here with the
    directory's permissions taken away."""
    if os.getuid() != 0:
        os.chmod(unreadable, 0)
        try:
            return command()
        finally:
            os.chmod(unreadable, 0o700)
    readFrom, writeTo = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(readFrom)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(writeTo, json.dumps(command()).encode())
        finally:
            os._exit(0)
    os.close(writeTo)
    with os.fdopen(readFrom, "rb") as f:
        result = f.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(result))


class PackagingTests(TestCase):
    """Newcomer review 20: what Python users of the package expect of it."""

    def test_python_dash_m_jsmail_runs_the_command(self) -> None:
        import subprocess
        import sys

        from jsmail import __version__
        from tests.test_plugin import twistdEnvironment

        done = subprocess.run([sys.executable, "-m", "jsmail", "--version"], env=twistdEnvironment(),
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/")
        self.assertEqual((done.returncode, done.stdout), (0, f"jsmail {__version__}\n"))

    def test_the_package_says_it_is_typed(self) -> None:
        """PEP 561: mypy reads an installed package's annotations only beside ``py.typed``."""
        import configparser
        from importlib.resources import files

        self.assertTrue(files("jsmail").joinpath("py.typed").is_file())
        setup = configparser.ConfigParser()
        setup.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
        self.assertIn("py.typed", setup["options.package_data"]["jsmail"])

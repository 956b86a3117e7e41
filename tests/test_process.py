"""jsmail._process: the one child-process runner (descriptors, environment, output
cap, and a time-out that ends the whole process group)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any
from unittest import mock

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from jsmail import _process
from jsmail._process import allowedEnvironment, run

SH = "/bin/sh"


class RunTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def sh(self, command: str, **kwargs: Any) -> defer.Deferred[_process.Finished]:
        return run(reactor, [SH, "-c", command], allowedEnvironment(), **kwargs)

    def pidsIn(self, name: str) -> list[int]:
        with open(os.path.join(self.dir, name)) as f:
            return [int(line) for line in f.read().split()]

    def endLater(self, pid: int) -> None:
        def end() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        self.addCleanup(end)

    def assertGone(self, pid: int) -> None:
        """``pid`` ends within a few seconds (it is reparented and reaped once killed)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return  # killed, waiting for its new parent to reap it
            except FileNotFoundError:
                return
            except OSError:
                pass
            time.sleep(0.05)
        self.fail(f"process {pid} is still running")

    @defer.inlineCallbacks
    def test_exit_status_and_output_in_order(self) -> None:
        finished = yield self.sh("echo out; sleep 0.1; echo err >&2; sleep 0.1; echo more; exit 3", read=(1, 2))
        self.assertEqual((finished.code, finished.timedOut, finished.overflowed), (3, False, frozenset()))
        self.assertEqual(finished.read(), b"out\nerr\nmore\n")
        self.assertEqual((finished.read(1), finished.read(2)), (b"out\nmore\n", b"err\n"))

    @defer.inlineCallbacks
    def test_inputs_and_open_files_on_chosen_descriptors(self) -> None:
        path = os.path.join(self.dir, "message")
        with open(path, "wb") as f:
            f.write(b"from a file\n")
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        finished = yield self.sh("cat; cat <&3; cat <&5", inputs={3: b"on three\n", 5: b"x" * 200_000},
                                 files={0: fd}, read=(1,), outputLimit=1_000_000)
        self.assertEqual(finished.read(), b"from a file\non three\n" + b"x" * 200_000)

    @defer.inlineCallbacks
    def test_a_signal_gives_no_exit_status(self) -> None:
        finished = yield self.sh("kill -TERM $$")
        self.assertEqual((finished.code, finished.timedOut), (None, False))

    @defer.inlineCallbacks
    def test_the_time_out_kills_the_whole_process_group(self) -> None:
        pids = os.path.join(self.dir, "pids")
        started = time.monotonic()
        finished = yield self.sh(f'sleep 60 & echo $! > "{pids}"; echo $$ >> "{pids}"; sleep 60',
                                 read=(1, 2), timeout=0.5)
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(finished.timedOut)
        self.assertIsNone(finished.code)
        for pid in self.pidsIn("pids"):
            self.endLater(pid)
            self.assertGone(pid)

    @defer.inlineCallbacks
    def test_a_descendant_outside_the_group_cannot_keep_the_run_open(self) -> None:
        """It holds our pipes after the program exits; at the time-out the run ends."""
        pids = os.path.join(self.dir, "pids")
        escape = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(60)'"
        finished = yield self.sh(f'{escape} & echo $! > "{pids}"; exit 0', read=(1, 2), timeout=0.5)
        [pid] = self.pidsIn("pids")
        self.endLater(pid)
        self.assertEqual((finished.code, finished.timedOut), (0, True))

    @defer.inlineCallbacks
    def test_without_setsid_python_makes_the_session(self) -> None:
        with mock.patch.object(_process, "_NEW_SESSION", _process._PYTHON_SETSID):
            yield self.test_the_time_out_kills_the_whole_process_group()
            finished = yield run(reactor, [os.path.join(self.dir, "missing")], {}, read=(2,), timeout=5)
        self.assertEqual(finished.code, 127)
        self.assertIn(b"No such file", finished.read())

    @defer.inlineCallbacks
    def test_output_is_capped_and_the_program_is_not_blocked(self) -> None:
        finished = yield self.sh("head -c 1000000 /dev/zero; echo done >&2", read=(1, 2), outputLimit=1000)
        self.assertEqual((finished.code, len(finished.read(1)), finished.overflowed), (0, 1000, frozenset({1})))
        self.assertEqual(finished.read(2), b"done\n")

    @defer.inlineCallbacks
    def test_the_environment_is_not_inherited(self) -> None:
        with mock.patch.dict(os.environ, {"JSMAIL_CONFIG": '{"smarthostPassword": "secret"}', "LANG": "C.UTF-8"}):
            finished = yield self.sh("env", read=(1,))
        names = {line.split(b"=", 1)[0] for line in finished.read().splitlines()}
        self.assertNotIn(b"JSMAIL_CONFIG", names)
        self.assertTrue({b"PATH", b"LANG"} <= names, names)

    def test_allowed_environment(self) -> None:
        source = {"PATH": "/bin", "HOME": "/root", "LANG": "C", "JSMAIL_CONFIG": "{}", "SSH_AUTH_SOCK": "/tmp/s"}
        self.assertEqual(allowedEnvironment(source), {"PATH": "/bin", "HOME": "/root", "LANG": "C"})
        self.assertEqual(allowedEnvironment({}), {})

    def test_a_program_that_cannot_start_fails(self) -> None:
        d = run(reactor, [os.path.join(self.dir, "missing")], {})
        self.failureResultOf(d, OSError)

    @defer.inlineCallbacks
    def test_a_program_that_exits_at_once_leaving_a_child_behind(self) -> None:
        """It may be reaped before the spawn returns; its group is still killed at the
        time-out."""
        pids = os.path.join(self.dir, "pids")
        for _ in range(20):
            finished = yield self.sh(f'sleep 60 & echo $! > "{pids}"', read=(1,), timeout=0.2)
            [pid] = self.pidsIn("pids")
            self.endLater(pid)
            self.assertEqual((finished.code, finished.timedOut), (0, True))
            self.assertGone(pid)

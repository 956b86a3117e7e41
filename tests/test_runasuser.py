"""Running as a user of its own: the data tree made for that user and closed to
everyone else (I-4, newcomer 7), the configuration's secrets kept from every program
and environment (M-2), and ``twistd -n jsmail --uid`` started as root accepting and
delivering mail.

Where privileges matter these run real processes as root, with throwaway system users
made by ``useradd --system`` and removed afterwards; they skip, saying why, when not
run as root.
"""

from __future__ import annotations

import glob
import os
import signal
import smtplib
import socket
import stat
import subprocess
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jsmail._disk import writeAndRename
from jsmail.auth import setPassword
from jsmail.config import loadConfig
from jsmail.datadir import prepareDataTree
from jsmail.interfaces import DeliveryStatus
from jsmail.service import MailGateway
from jsmail.testing import filesInTmp
from tests.privileged import openDirectory, ownerOf, pythonEnvironment, requireRoot, systemUser, userPython, writeAs

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


class DataTreeTests(unittest.TestCase):
    """I-4 and newcomer 7: the tree is the run-as user's, and no one else's to read."""

    timeout = 60

    def gatewayConfig(self, data: str, **local: Any) -> Any:
        return loadConfig(settings={"server": {"hostname": "mx.test", "data": data},
                                    "smtp": {"listen": "tcp:0:interface=127.0.0.1", "submission": [], "smtps": []},
                                    "queue": {"delivery_process": False}, "remote": {"dns_server": "127.0.0.1:53"},
                                    "local": local})

    @defer.inlineCallbacks
    def test_mailboxNamesNotListable(self) -> None:
        base = openDirectory(self) if os.geteuid() == 0 else os.path.abspath(self.mktemp())
        data = os.path.join(base, "data")
        gateway = MailGateway(self.gatewayConfig(data))
        gateway.startService()
        self.addCleanup(gateway.stopService)
        yield gateway.submit("a@example.org", ["secret-name@localhost"], MESSAGE)
        mailbox = os.path.join(data, "mail", "localhost", "secret-name")
        for path in (data, os.path.join(data, "mail"), os.path.join(data, "mail", "localhost"), mailbox,
                     os.path.join(data, "queue"), os.path.join(data, "tls")):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700, path)
        for path in [*glob.glob(os.path.join(mailbox, "new", "*")), *glob.glob(os.path.join(data, "tls", "*")),
                     *filesInTmp(os.path.join(data, "queue", "tmp"))]:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        if os.geteuid() == 0:  # and as another local user, for real
            entry = systemUser(self)
            listing = subprocess.run(["ls", os.path.join(data, "mail", "localhost")], user=entry.pw_uid,
                                     group=entry.pw_gid, extra_groups=[], capture_output=True, text=True)
            self.assertNotEqual(listing.returncode, 0)
            self.assertNotIn("secret-name", listing.stdout)
            self.assertIn("Permission denied", listing.stderr)

    def test_treeLeftByRootHandedOverWithoutFollowingLinks(self) -> None:
        """A tree an earlier run as root made is the run-as user's after start; a
        link planted in it does not make root chown what it points to."""
        requireRoot()
        entry = systemUser(self)
        base = openDirectory(self)
        data = os.path.join(base, "data")
        prepareDataTree(data)
        with open(os.path.join(data, "queue", "active", "Q1"), "w") as f:
            f.write("queued by root\n")
        target = os.path.join(base, "root-file")
        with open(target, "w") as f:
            f.write("root's\n")
        os.symlink(target, os.path.join(data, "queue", "active", "link"))
        changed = prepareDataTree(data, (entry.pw_uid, entry.pw_gid))
        self.assertGreater(changed, 5)
        for path in (data, os.path.join(data, "queue", "active"), os.path.join(data, "queue", "active", "Q1"),
                     os.path.join(data, "mail"), os.path.join(data, "queue", "active", "link")):
            self.assertEqual(ownerOf(path), entry.pw_uid, path)
        self.assertEqual(ownerOf(target), 0)

    def test_filesRootWritesIntoTheTreeAreTheGatewaysAndNeverThroughLinks(self) -> None:
        """``jsmail passwd`` or ``jsmail queue requeue`` run as root: the new file
        belongs to the tree's owner, 0600; a link planted at the temporary name is not written through."""
        requireRoot()
        entry = systemUser(self)
        base = openDirectory(self)
        data = os.path.join(base, "data")
        prepareDataTree(data, (entry.pw_uid, entry.pw_gid))
        passwd = os.path.join(data, "passwd")
        setPassword(passwd, "alice", "secret")
        self.assertEqual((ownerOf(passwd), stat.S_IMODE(os.stat(passwd).st_mode)), (entry.pw_uid, 0o600))
        target = os.path.join(base, "root-file")
        with open(target, "w") as f:
            f.write("root's\n")
        tmp = os.path.join(data, "queue", "tmp", "Q1.env")
        os.symlink(target, tmp)
        final = os.path.join(data, "queue", "active", "Q1.env")
        writeAndRename(tmp, final, b"x")
        with open(target) as f:
            self.assertEqual(f.read(), "root's\n")
        self.assertEqual((ownerOf(final), stat.S_IMODE(os.stat(final).st_mode)), (entry.pw_uid, 0o600))



class SecretsTests(unittest.TestCase):
    """M-2: passwords from the configuration reach neither a ``|program`` nor the
    delivery process's environment (which every program it runs would inherit)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_routePasswordNotInProgramEnvironment(self) -> None:
        data = os.path.abspath(self.mktemp())
        home = os.path.join(data, "users", "localhost", "joe")
        os.makedirs(home)
        with open(os.path.join(home, ".qmail"), "w") as f:
            f.write("|env > env.out\n")
        gateway = MailGateway(loadConfig(settings={
            "server": {"hostname": "mx.test", "data": data},
            "smtp": {"listen": [], "submission": [], "smtps": []},
            "queue": {"delivery_process": True},
            "remote": {"dns_server": "127.0.0.1:53", "smarthost_password": "SmarthostS3cret",
                       "routes": [{"domain": "smarthost.test", "host": "127.0.0.4", "tls": "verify",
                                   "username": "relayuser", "password": "RouteS3cret"}]},
        }))
        gateway.privilegedStartService()
        gateway.startService()
        self.addCleanup(gateway.stopService)
        [result] = yield gateway.submit("a@example.org", ["joe@localhost"], MESSAGE)
        self.assertEqual(result.status, DeliveryStatus.DELIVERED, result.detail)
        with open(os.path.join(home, "env.out")) as f:
            environment = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        self.assertNotIn("S3cret", repr(environment))
        self.assertLessEqual(set(environment) - {"PWD", "SHLVL", "_", "OLDPWD"},
                             {"PATH", "HOME", "LANG", "USER", "SENDER", "NEWSENDER", "RECIPIENT", "LOCAL", "HOST",
                              "HOST2", "HOST3", "HOST4", "EXT", "EXT2", "EXT3", "EXT4", "DEFAULT", "DTLINE",
                              "RPLINE", "UFLINE"})
        child = gateway.delivery.child
        assert child is not None and child.transport is not None
        with open(f"/proc/{child.transport.pid}/environ", "rb") as f:
            self.assertNotIn(b"S3cret", f.read())


class DroppedGatewayTests(unittest.TestCase):
    """The whole gateway: ``twistd -n jsmail --uid --gid`` started as root."""

    timeout = 120

    @defer.inlineCallbacks
    def test_uidDropStillAcceptsAndDelivers(self) -> None:
        """Newcomer 7 and H-1 together: root binds, the tree is made for the jsmail
        user, every process but the spawner runs as that user, a real SMTP session
        gets 250, the mail reaches a Maildir, and a system user's ``|id`` runs as
        that user.  A TLS key only root can read cannot be read again on SIGHUP, and
        the log says how to fix that."""
        requireRoot()
        python = userPython(self)
        base = openDirectory(self)
        daemon = systemUser(self)
        mailUser = systemUser(self, os.path.join(base, "home"))
        writeAs(mailUser, os.path.join(mailUser.pw_dir, ".qmail"), "|id -u > id.out\n./Maildir/\n")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(mailUser.pw_dir, "Maildir", sub))
        subprocess.run(["chown", "-R", f"{mailUser.pw_uid}:{mailUser.pw_gid}", os.path.join(mailUser.pw_dir)],
                       check=True)
        data = os.path.join(base, "data")
        keys = os.path.join(base, "keys")
        os.mkdir(keys, 0o700)
        from jsmail.smtp.tls import ensureSelfSigned

        certificate, key = ensureSelfSigned(keys, "mx.test")
        port = _freePort()
        config = os.path.join(base, "jsmail.toml")
        with open(config, "w") as f:
            f.write(f'[server]\ndata = "{data}"\nhostname = "mx.test"\ntls_certificate = "{certificate}"\n'
                    f'tls_key = "{key}"\n[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nsubmission = []\n'
                    f'smtps = []\n[local]\nhome_dotqmail = true\nminimum_uid = 100\n')
        log = os.path.join(base, "twistd.log")
        with open(log, "wb") as out:
            twistd = subprocess.Popen(
                [*python, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
                 "--uid", str(daemon.pw_uid), "--gid", str(daemon.pw_gid), "jsmail", "--config", config],
                env=pythonEnvironment(), cwd=base, stdout=out, stderr=subprocess.STDOUT)

        def stop() -> None:
            if twistd.poll() is None:
                twistd.send_signal(signal.SIGTERM)
                try:
                    twistd.wait(30)
                except subprocess.TimeoutExpired:
                    twistd.kill()
                    twistd.wait()

        self.addCleanup(stop)

        def readLog() -> str:
            with open(log, encoding="utf-8", errors="replace") as f:
                return f.read()

        def session() -> Any:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    break
                except OSError:
                    if time.monotonic() > deadline or twistd.poll() is not None:
                        raise AssertionError("jsmail did not listen:\n" + readLog()) from None
                    time.sleep(0.1)
            with client:
                client.ehlo("client.test")
                client.mail("a@example.org")
                client.rcpt("someone@localhost")
                client.rcpt(f"{mailUser.pw_name}@localhost")
                return client.data(MESSAGE)

        code, text = yield deferToThread(session)
        self.assertEqual(code, 250, text)
        idFile = os.path.join(mailUser.pw_dir, "id.out")
        ownersMaildir = os.path.join(mailUser.pw_dir, "Maildir", "new", "*")
        yield _waitFor(lambda: os.path.exists(idFile) and glob.glob(ownersMaildir)  # the program, then ./Maildir/
                       and glob.glob(os.path.join(data, "mail", "localhost", "someone", "new", "*")),
                       "both deliveries", readLog)
        with open(idFile) as f:
            self.assertEqual(int(f.read()), mailUser.pw_uid)
        self.assertEqual(len(glob.glob(ownersMaildir)), 1)
        for path in (data, os.path.join(data, "queue", "active"), os.path.join(data, "mail", "localhost", "someone")):
            self.assertEqual(ownerOf(path), daemon.pw_uid, path)
        owners = _processOwners(twistd.pid)
        self.assertEqual(owners[twistd.pid], daemon.pw_uid)
        children = {uid for pid, uid in owners.items() if pid != twistd.pid}
        self.assertEqual(children, {0, daemon.pw_uid}, owners)  # the spawner, and the delivery process
        twistd.send_signal(signal.SIGHUP)
        yield _waitFor(lambda: "cannot be reloaded on SIGHUP" in readLog(), "the reload's explanation", readLog)
        self.assertIn(f"make it readable by {daemon.pw_name}", readLog())


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processOwners(pid: int) -> dict[int, int]:
    """``pid`` and its children, each with its real uid."""
    owners = {}
    for status in glob.glob("/proc/[0-9]*/status"):
        fields = {}
        try:
            with open(status) as f:
                for line in f:
                    name, _, value = line.partition(":")
                    fields[name] = value.split()
        except OSError:
            continue
        thisPid = int(fields["Pid"][0])
        if thisPid == pid or int(fields["PPid"][0]) == pid:
            owners[thisPid] = int(fields["Uid"][0])
    return owners


@defer.inlineCallbacks
def _waitFor(predicate: Any, what: str, log: Any) -> Any:
    for _ in range(400):
        if predicate():
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}:\n{log()}")

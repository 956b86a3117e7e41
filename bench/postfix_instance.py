"""A private, throw-away Postfix instance listening on one loopback port.

Everything (configuration, queue, data, maildirs, log) lives under one
directory; the system's /etc/postfix is only read (for meta files).  Mail
for each of the given local parts @localhost is delivered by the
virtual(8) agent into ``<dir>/mail/localhost/<local-part>/new/`` (Postfix
refuses regular-expression substitution in mailbox maps, so the local parts
are listed).  Needs root.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DELIVERY_USER = "nobody"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = {process_limit}
virtual_mailbox_domains = localhost
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/conf/virtual_mailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_mailbox_limit = 0
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
"""

# chroot is off everywhere so nothing has to be copied into the queue dir.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixInstance:
    """Create, start and stop a private Postfix under ``root``."""

    def __init__(self, root: Path, port: int, locals_: list[str],
                 process_limit: int) -> None:
        self.root = root
        self.port = port
        self.locals = locals_
        self.process_limit = process_limit
        self.conf = root / "conf"

    @staticmethod
    def unavailable() -> str | None:
        """Why a private Postfix cannot run here, or None if it can."""
        if not os.path.exists(POSTFIX):
            return f"{POSTFIX} not installed"
        if os.geteuid() != 0:
            return "needs root"
        try:
            pwd.getpwnam("postfix")
            grp.getgrnam("postdrop")
            pwd.getpwnam(DELIVERY_USER)
        except KeyError as e:
            return f"missing user or group: {e}"
        return None

    def maildir_new(self, local: str) -> Path:
        """The new/ directory that mail for ``local``@localhost lands in."""
        return self.root / "mail" / "localhost" / local / "new"

    def configure(self) -> None:
        """Write main.cf, master.cf and the mailbox map; fix ownerships."""
        nobody = pwd.getpwnam(DELIVERY_USER)
        os.chmod(self.root, 0o755)
        for sub in ("conf", "queue", "data"):
            (self.root / sub).mkdir()
        mail = self.root / "mail"
        mail.mkdir()
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        (self.conf / "main.cf").write_text(MAIN_CF.format(
            root=self.root, uid=nobody.pw_uid, gid=nobody.pw_gid,
            process_limit=self.process_limit))
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.conf / "virtual_mailbox").write_text("".join(
            f"{local}@localhost localhost/{local}/\n" for local in self.locals))
        postfix = pwd.getpwnam("postfix")
        os.chown(self.root / "data", postfix.pw_uid, postfix.pw_gid)

    def start(self) -> None:
        """Configure and start the master; returns once it is running."""
        self.configure()
        self._postfix("start")

    def master_pid(self) -> int:
        """The PID of this instance's master(8) process."""
        pid_file = self.root / "queue" / "pid" / "master.pid"
        return int(pid_file.read_text().split()[0])

    def smtpd_pids(self) -> list[int]:
        """PIDs of the smtpd(8) processes the master has spawned."""
        master = self.master_pid()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == master and comm == "smtpd":
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Stop the master, then kill whatever is left of its process group."""
        try:
            master = self.master_pid()
            group = os.getpgid(master)
        except (OSError, ValueError):
            return
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"],
                       capture_output=True, timeout=30, check=False)
        deadline = time.monotonic() + 10
        while _alive(master) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group != os.getpgrp():
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 20) -> str:
        """The end of this instance's mail log, for error messages."""
        log = self.root / "maillog"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def _postfix(self, command: str) -> None:
        result = subprocess.run([POSTFIX, "-c", str(self.conf), command],
                                capture_output=True, text=True, timeout=60,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix {command} failed: "
                               f"{result.stderr.strip() or result.stdout.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True



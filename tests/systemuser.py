"""Throwaway system users, for tests where the uid is what matters: a real process
run as a user who is neither root nor jsmail's.  Made with ``useradd``, removed with
``userdel`` when the test ends; a test that needs one is skipped, with the reason,
where that is not possible (not root, no useradd).  CI runs as root."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import SkipTest

import jsmail

SRC = os.path.dirname(os.path.dirname(os.path.abspath(jsmail.__file__)))  # the jsmail under test
_LOCKED = 10  # useradd's exit status when /etc/passwd is locked by another one


@dataclass(frozen=True)
class SystemUser:
    """A user that exists only for one test, and a Python it can run jsmail with."""

    name: str
    uid: int
    gid: int
    python: str

    def run(self, argv: list[str], env: dict[str, str], stdin: bytes = b"", cwd: str = "/",
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` (``python`` for "python") as this user, no other groups."""
        argv = [self.python if a == "python" else a for a in argv]
        return subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, timeout=timeout,
                              env={**env, "PYTHONPATH": self.pythonPath, "HOME": "/"},
                              user=self.uid, group=self.gid, extra_groups=[])

    @property
    def pythonPath(self) -> str:
        """The jsmail under test, then the packages of the test's own environment."""
        return os.pathsep.join([SRC, *site.getsitepackages()])


def throwawayUser(testCase: Any) -> SystemUser:
    """A new system user, removed when ``testCase`` ends; raises SkipTest (with the
    reason) where none can be made."""
    if os.geteuid() != 0:
        raise SkipTest("needs root to create a throwaway system user (CI runs as root)")
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    if not useradd or not userdel:
        raise SkipTest("needs useradd and userdel to create a throwaway system user")
    name = f"jsmt{secrets.token_hex(4)}"
    for _ in range(50):  # another test (or engineer) may hold the lock on /etc/passwd for a moment
        result = subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                                 "--shell", "/usr/sbin/nologin", name], capture_output=True, timeout=30)
        if result.returncode != _LOCKED:
            break
        time.sleep(0.1)
    if result.returncode != 0:
        raise SkipTest(f"useradd {name} failed: {result.stderr.decode(errors='replace').strip()}")
    testCase.addCleanup(_remove, userdel, name)
    entry = pwd.getpwnam(name)
    user = SystemUser(name, entry.pw_uid, entry.pw_gid, "")
    return SystemUser(name, entry.pw_uid, entry.pw_gid, _pythonFor(user))


def _remove(userdel: str, name: str) -> None:
    for _ in range(50):
        if subprocess.run([userdel, name], capture_output=True, timeout=30).returncode != _LOCKED:
            return
        time.sleep(0.1)


def _pythonFor(user: SystemUser) -> str:
    """A Python that ``user`` can run jsmail with: this one, or, when it sits where
    other users may not go (a pyenv under /root), the system's of the same version
    with this environment's packages."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if not os.path.exists(candidate):
            continue
        try:
            probe = SystemUser(user.name, user.uid, user.gid, candidate).run(
                ["python", "-c", "import jsmail.qmail.sendmail"], dict(os.environ), timeout=30)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    raise SkipTest(f"no Python {version} that user {user.name} may run jsmail with "
                   f"({sys.executable} is not reachable by other users)")

"""What the tests that need root share: throwaway system users, directories other
users may pass through, and an interpreter such a user can run."""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid

from twisted.trial import unittest

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requireRoot() -> None:
    if os.geteuid() != 0:
        raise unittest.SkipTest("privilege tests need root: they make a system user and switch to it")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        raise unittest.SkipTest("privilege tests need useradd and userdel")


def openDirectory(testCase: unittest.TestCase) -> str:
    """A directory in /tmp every user may pass through (mode 0755), removed after."""
    path = tempfile.mkdtemp(prefix="jsmail-privileges-")
    os.chmod(path, 0o755)
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


def systemUser(testCase: unittest.TestCase, home: str | None = None) -> pwd.struct_passwd:
    """A throwaway system user (and its own group), with ``home`` made and owned by it
    if given; removed after the test."""
    name = "jsm" + uuid.uuid4().hex[:12]
    command = ["useradd", "--system", "--user-group", "--shell", "/bin/sh"]
    command += ["--home-dir", home, "--create-home"] if home else ["--home-dir", "/nonexistent", "--no-create-home"]
    subprocess.run([*command, name], check=True, capture_output=True)
    testCase.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
    entry = pwd.getpwnam(name)
    if home:
        os.chmod(home, 0o755)
    return entry


def writeAs(entry: pwd.struct_passwd, path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def ownerOf(path: str) -> int:
    return os.lstat(path).st_uid


def reachableByOthers(path: str) -> bool:
    """Whether a user with nothing in common with root can run or read ``path``."""
    path = os.path.realpath(path)
    while True:
        st = os.stat(path)
        if not st.st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


#: What a gateway running as another user imports, each of which that user must read.
_NEEDED = ("jsmail", "twisted", "zope.interface", "cryptography", "OpenSSL", "bcrypt")


def _whereIs(name: str) -> str:
    return os.path.dirname(importlib.import_module(name).__file__ or "/")


def userPython(testCase: unittest.TestCase) -> list[str]:
    """An interpreter an unprivileged user can run, with this one's modules: this
    one, or (when it lives under a directory closed to others, as a Python built in
    root's home does) the system's of the same version."""
    closed = [name for name in _NEEDED if not reachableByOthers(_whereIs(name))]
    if closed:
        raise unittest.SkipTest(f"other users cannot read where {', '.join(closed)} is installed (under a "
                                "directory closed to them), so jsmail cannot run as one of them")
    if reachableByOthers(sys.executable) and all(reachableByOthers(p) for p in sys.path if p and os.path.exists(p)):
        return [sys.executable]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and reachableByOthers(system):
        version = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True).stdout.strip()
        if version == str(tuple(sys.version_info[:2])):
            return [system]
    raise unittest.SkipTest(f"{sys.executable} cannot be run by other users, and no system Python of the same "
                            "version can stand in")


def pythonEnvironment() -> dict[str, str]:
    """This interpreter's modules for another one, with PATH and LANG."""
    environment = {name: os.environ[name] for name in ("PATH", "LANG") if name in os.environ}
    environment["PYTHONPATH"] = os.pathsep.join([SRC + "/src", *(p for p in sys.path if p)])
    return environment

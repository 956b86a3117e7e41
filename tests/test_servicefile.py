"""etc/jsmail.service: systemd accepts it, and it starts jsmail the documented way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

UNIT = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "jsmail.service")
INSTALLED = "/opt/jsmail/bin/twistd"


class ServiceFileTests(unittest.TestCase):
    def read(self) -> str:
        with open(UNIT, encoding="utf-8") as f:
            return f.read()

    def test_command(self) -> None:
        self.assertIn(f"\nExecStart={INSTALLED} -n --pidfile= jsmail --config /etc/jsmail/jsmail.toml "
                      "--uid jsmail --gid jsmail\n", self.read())

    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing wrong (it wants the program to
        exist, so the unit is checked with this environment's twistd in its place)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        directory = self.mktemp()
        os.makedirs(directory)
        unit = os.path.join(directory, "jsmail.service")
        with open(unit, "w", encoding="utf-8") as f:
            f.write(self.read().replace(INSTALLED, twistd))
        result = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))

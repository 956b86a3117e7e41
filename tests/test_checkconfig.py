"""``--check-config`` tells the truth and changes nothing (newcomer review 10): it reads
the files the configuration names as the gateway will, creates none, and every bad
configuration is one line naming the file, never a traceback."""

from __future__ import annotations

import os
import subprocess

import trustme
from twisted.trial import unittest

from tests import test_plugin
from tests.test_plugin import runTwistd


class Refusals(unittest.TestCase):
    configFile = test_plugin.CheckConfigTests.configFile
    assertRefused = test_plugin.CheckConfigTests.assertRefused


class FilesTests(Refusals):
    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    def check(self, text: str, *args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        path = self.configFile(f'[server]\ndata = "{self.data}"\n' + text)
        return path, runTwistd("jsmail", "--config", path, *args, "--check-config")

    def test_the_defaults_check_and_nothing_is_made(self) -> None:
        """No data directory and no self-signed certificate: those are made at start."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(test_plugin.twistd("jsmail", "--check-config"), cwd=workdir,
                                env=test_plugin.twistdEnvironment(), capture_output=True, text=True,
                                timeout=test_plugin.COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual((result.returncode, result.stdout), (0, "jsmail: configuration OK (built-in defaults)\n"))
        self.assertEqual(os.listdir(workdir), [])

    def test_a_missing_certificate_is_not_ok(self) -> None:
        path, result = self.check('tls_certificate = "/nonexistent/cert.pem"\n')
        self.assertRefused(result, path, "server.tls_certificate", "cannot read /nonexistent/cert.pem")

    def test_a_certificate_with_another_key_is_not_ok(self) -> None:
        ca = trustme.CA()
        certificate, other = ca.issue_cert("mx.test"), ca.issue_cert("other.test")
        os.makedirs(self.data)
        certificate.cert_chain_pems[0].write_to_path(os.path.join(self.data, "cert.pem"))
        other.private_key_pem.write_to_path(os.path.join(self.data, "key.pem"))
        path, result = self.check(f'tls_certificate = "{self.data}/cert.pem"\ntls_key = "{self.data}/key.pem"\n')
        self.assertRefused(result, path, "is not the key of the certificate")

    def test_a_missing_aliases_file_is_not_ok(self) -> None:
        """It used to pass, and then every local delivery was deferred."""
        path, result = self.check('[local]\naliases = "/nonexistent/aliases"\n')
        self.assertRefused(result, path, "local.aliases", "/nonexistent/aliases", "No such file or directory")

    def test_an_unusable_data_directory_is_one_line_at_check_and_at_start(self) -> None:
        path = self.configFile('[server]\ndata = "/proc/nope"\n')
        self.assertRefused(runTwistd("jsmail", "--config", path, "--check-config"), path, "server.data", "/proc/nope")
        started = runTwistd("-n", "--pidfile=", "jsmail", "--config", path, "--smtp", "tcp:0:interface=127.0.0.1",
                            "--submission", "none", "--smtps", "none")
        self.assertEqual(started.returncode, 2, started.stdout + started.stderr)
        self.assertNotIn("Traceback", started.stdout + started.stderr)
        [line] = (started.stdout + started.stderr).splitlines()
        self.assertIn("server.data", line)
        self.assertIn("/proc/nope", line)

    def test_a_plugin_error_names_the_file(self) -> None:
        path, result = self.check('[policy]\nsmtp = ["spff"]\n')
        self.assertRefused(result, f"{path}: policy.smtp: no policy plugin named 'spff'")

    def test_a_dkim_key_that_cannot_be_made_is_not_ok(self) -> None:
        path, result = self.check('[policy]\nsubmission = ["dkim-sign"]\n[plugins.dkim-sign]\nkeys = [{domain = '
                                  '"example.org", selector = "s", key = "/proc/nope/example.org.s.key"}]\n')
        self.assertRefused(result, path, "plugins.dkim-sign", "cannot make the DKIM key /proc/nope/example.org.s.key")


    def test_a_password_file_that_cannot_be_read_is_not_ok(self) -> None:
        path, result = self.check('[auth]\npassword_file = "/etc"\n')
        self.assertRefused(result, path, "auth.password_file: /etc: not a readable file")

    def test_a_queue_program_that_is_not_there_is_not_ok(self) -> None:
        """It passed, and then every message got 451."""
        path, result = self.check('[queue]\nprogram = "/nonexistent/qmail-queue"\n')
        self.assertRefused(result, path, "queue.program: /nonexistent/qmail-queue: not an executable file")

    def test_an_unknown_auth_checker_is_one_line(self) -> None:
        """twistd printed its whole usage text before the reason."""
        self.assertRefused(runTwistd("jsmail", "--auth", "bogus:x", "--check-config"),
                           "--auth bogus:x", "Auth plugin not recognized: bogus")


    def test_an_option_without_its_value_does_not_swallow_the_next(self) -> None:
        """``--hostname --check-config`` took "--check-config" as the host name."""
        self.assertRefused(runTwistd("jsmail", "--hostname", "--check-config"),
                           "--hostname needs a value, not the option --check-config")


class EndpointTests(Refusals):
    def test_an_unknown_option_is_named_without_twisteds_function_names(self) -> None:
        result = runTwistd("jsmail", "--smtp", "tcp:25:interfac=127.0.0.1", "--check-config")
        self.assertRefused(result, "smtp.listen", "bad endpoint 'tcp:25:interfac=127.0.0.1': unknown option 'interfac'")
        self.assertNotIn("_parse", result.stderr)

    def test_the_readmes_unquoted_ipv6_interface(self) -> None:
        """The shell took the backslashes out of ``interface=\\:\\:``."""
        result = runTwistd("jsmail", "--smtp", "tcp6:25:interface=::", "--check-config")
        self.assertRefused(result, "'interface' given twice", "\\:")
        self.assertNotIn("_TCP6ServerParser", result.stderr)

    def test_an_ssl_endpoint_with_a_missing_key_file_is_one_line(self) -> None:
        result = runTwistd("jsmail", "--smtps", "ssl:2465:privateKey=/nonexistent/x.pem", "--check-config")
        self.assertRefused(result, "smtp.smtps", "cannot read /nonexistent/x.pem: No such file or directory")

    def test_an_implicit_tls_listener_refuses_an_ssl_endpoint(self) -> None:
        """jsmail wraps smtps in TLS itself: an ``ssl:`` endpoint inside made TLS in TLS,
        and the listener never greeted anyone."""
        ca = trustme.CA()
        pem = os.path.abspath(self.mktemp())
        ca.issue_cert("mx.test").private_key_and_cert_chain_pem.write_to_path(pem)
        result = runTwistd("jsmail", "--smtps", f"ssl:2465:privateKey={pem}", "--check-config")
        self.assertRefused(result, "smtp.smtps", "give a plain endpoint such as tcp:465")

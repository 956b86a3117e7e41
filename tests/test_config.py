"""Configuration: defaults, the TOML file, overrides, and one exact error per mistake."""

from __future__ import annotations

import ipaddress
import os
import re

from twisted.trial.unittest import TestCase

from jsmail.config import OPTIONS, Config, ConfigError, loadConfig
from jsmail.smtp.tls import ensureSelfSigned


class ConfigTests(TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertError(self, text: str, message: str) -> None:
        path = self.write(text)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: {message}")

    def test_embedded_default(self) -> None:
        config = loadConfig()
        self.assertEqual(config.listen.smtp, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual((config.server.dataDir, config.server.domains, config.server.trustedNetworks),
                         (os.path.abspath("jsmail-data"), ("localhost",), ()))

    def test_example_file_is_the_defaults(self) -> None:
        """etc/jsmail.toml documents every option with its default."""
        example = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "jsmail.toml")
        with open(example) as f:
            text = f.read()
        settings = re.findall(r"^# ([a-z0-9_]+) = ", text, re.M)
        self.assertEqual(sorted(settings), sorted(o.key for o in OPTIONS if o.key != "*"))
        uncommented = re.sub(r"^# ([a-z0-9_]+ = )", r"\1", text, flags=re.M)
        config = loadConfig(self.write(uncommented.replace('hostname = "mail.example.org"', "")))
        self.assertEqual(config, loadConfig())

    def test_file_and_overrides(self) -> None:
        path = self.write('[server]\ndomains = ["Example.ORG"]\ntrusted_networks = ["10.0.0.0/8"]\n'
                          '[smtp]\nmax_message_size = 1000\n')
        config = loadConfig(path, {"smtp.max_message_size": "2000", "smtp.listen": ["tcp6:25"]})
        self.assertEqual(config.server.domains, ("example.org",))
        self.assertEqual(config.server.trustedNetworks, (ipaddress.ip_network("10.0.0.0/8"),))
        self.assertEqual(config.smtp.maxMessageSize, 2000)
        self.assertEqual(config.listen.smtp, ("tcp6:25",))

    def test_wrong_type(self) -> None:
        self.assertError('[smtp]\nmax_message_size = "big"\n', "smtp.max_message_size: expected a whole number, got 'big'")

    def test_too_small(self) -> None:
        self.assertError("[smtp]\nmax_command_line = 100\n", "smtp.max_command_line: must be at least 512, got 100")

    def test_too_many_processes(self) -> None:
        self.assertError("[smtp]\nprocesses = 65\n", "smtp.processes: must be at most 64, got 65")

    def test_processes_need_the_delivery_process(self) -> None:
        self.assertError("[smtp]\nprocesses = 2\n[queue]\ndelivery_process = false\n",
                         "queue.delivery_process: smtp.processes above 1 needs the delivery process")

    def test_processes_need_listeners_that_can_be_handed_over(self) -> None:
        certificate, key = ensureSelfSigned(os.path.abspath(self.mktemp()), "mx.test")
        endpoint = f"ssl:2587:privateKey={key}:certKey={certificate}"
        self.assertError(f'[smtp]\nprocesses = 2\nsubmission = ["{endpoint}"]\n',
                         f"smtp.submission: {endpoint!r}: with smtp.processes above 1 every listener must be a tcp, "
                         "tcp6 or unix endpoint (its connections are handed to the receiving processes)")

    def test_unknown_key(self) -> None:
        self.assertError("[smtp]\nmax_mesage_size = 1\n", "smtp.max_mesage_size: unknown setting")

    def test_bad_endpoint(self) -> None:
        self.assertError('[smtp]\nlisten = ["bogus:1"]\n', "smtp.listen: bad endpoint 'bogus:1': Unknown endpoint type: 'bogus'")

    def test_bad_network(self) -> None:
        self.assertError('[server]\ntrusted_networks = ["10.0.0.300/8"]\n',
                         "server.trusted_networks: bad network '10.0.0.300/8': '10.0.0.300/8' does not appear to be an IPv4 or IPv6 network")

    def test_bad_submit_senders(self) -> None:
        self.assertError('[submit]\nsenders = { "www-data" = ["shop"] }\n',
                         "submit.senders: www-data: 'shop' is not an address, @domain or *")
        self.assertError('[submit]\nsenders = ["@shop.example"]\n',
                         "submit.senders: expected a table such as { \"www-data\" = [\"@example.org\"] }, "
                         "got ['@shop.example']")

    def test_submit_socket(self) -> None:
        """By default under the data directory; "none" turns local submission off."""
        self.assertEqual(loadConfig(overrides={"server.data": "/srv/jsmail"}).submit.socket,
                         "/srv/jsmail/submit/socket")
        self.assertEqual(loadConfig(overrides={"submit.socket": "none"}).submit.socket, "")

    def test_bad_choice(self) -> None:
        self.assertError('[smtp]\nbare_line_endings = "fix"\n', "smtp.bare_line_endings: must be one of reject, normalise; got 'fix'")

    def test_bad_domain(self) -> None:
        self.assertError('[server]\ndomains = ["not a domain"]\n', "server.domains: Bad domain name 'not a domain'")

    def test_not_toml(self) -> None:
        path = self.write("[smtp\n")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: not valid TOML: "))

    def test_missing_file(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig("/nonexistent/jsmail.toml")
        self.assertEqual(str(caught.exception), "/nonexistent/jsmail.toml: cannot read the file: No such file or directory")

    def test_command_line_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig(None, {"smtp.max_message_size": "lots"})
        self.assertEqual(str(caught.exception), "command line: smtp.max_message_size: expected a whole number, got 'lots'")

    def test_smarthostCredentialsOverUnverifiedTLSRefused(self) -> None:
        """Security review M-3: credentials over TLS nobody checks go to whoever is in the path."""
        self.assertError('[remote]\nsmarthost = "relay.example.net:587"\nsmarthost_tls = "opportunistic"\n'
                         'smarthost_username = "u"\nsmarthost_password = "p"\n',
                         'remote.smarthost_tls: smarthost_username and smarthost_password: credentials go only over '
                         'TLS with a verified certificate, not tls = "opportunistic"; use tls = "verify" or "implicit" '
                         '(the default with credentials), or set remote.allow_insecure_auth = true to send them anyway')

    def test_routeCredentialsInPlaintextRefused(self) -> None:
        self.assertError('[remote]\nroutes = [{domain = "b.test", host = "relay.b.test", tls = "none", '
                         'username = "u", password = "p"}]\n',
                         'remote.routes: the route for b.test: credentials go only over TLS with a verified '
                         'certificate, not tls = "none"; use tls = "verify" or "implicit" (the default with '
                         'credentials), or set remote.allow_insecure_auth = true to send them anyway')

    def test_credentialsMeanVerifyByDefault(self) -> None:
        path = self.write('[remote]\nsmarthost = "relay.example.net:587"\nsmarthost_username = "u"\n'
                          'smarthost_password = "p"\nroutes = [{domain = "b.test", host = "relay.b.test", '
                          'username = "u", password = "p"}, {domain = "c.test", host = "relay.c.test"}]\n')
        remote = loadConfig(path).remote
        smarthost = remote.smarthostRoute
        assert smarthost is not None
        self.assertEqual([smarthost.tls, *(route.tls for route in remote.routes)], ["verify", "verify", "opportunistic"])
        anonymous = loadConfig(None, {"remote.smarthost": "relay.example.net"}).remote.smarthostRoute
        self.assertEqual(anonymous and anonymous.tls, "opportunistic")

    def test_insecureAuthWhenAllowed(self) -> None:
        config = loadConfig(None, {"remote.smarthost": "relay.example.net", "remote.smarthost_tls": "none",
                                   "remote.smarthost_username": "u", "remote.smarthost_password": "p",
                                   "remote.allow_insecure_auth": True})
        self.assertEqual(config.remote.smarthostRoute.tls, "none")  # type: ignore[union-attr]

    def test_usernameWithoutPasswordRefused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig(None, {"remote.smarthost": "relay.example.net", "remote.smarthost_username": "u"})
        self.assertEqual(str(caught.exception), "command line: remote.smarthost_tls: smarthost_username and "
                         "smarthost_password: a user name and a password go together; one is missing")


class ControlDirectoryTests(TestCase):
    """qmail control files read with qmail's rules into the one Config."""

    def control(self, **files: str) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        for name, text in files.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
        return directory

    def test_files_map_onto_settings(self) -> None:
        directory = self.control(
            me="mx.example.org  \n", locals="# ours\nexample.org\n\nEXAMPLE.net\n", databytes="1000000 bytes\n",
            timeoutsmtpd="0\n", queuelifetime="86400\n", concurrencyremote="x10\n",
            smtproutes=":relay.example.org:587\nlist.example.org:lists.internal\nnocolon\n",
        )
        config = loadConfig(None, {"server.control_dir": directory})
        self.assertEqual((config.server.hostname, config.server.domains),
                         ("mx.example.org", ("example.org", "example.net")))
        self.assertEqual((config.smtp.maxMessageSize, config.smtp.idleTimeout, config.queue.giveUp),
                         (1000000, 1.0, 86400.0))
        self.assertEqual(config.queue.concurrency, Config().queue.concurrency, "not a number: the default stays")
        self.assertEqual(config.remote.smarthost, "relay.example.org:587")
        self.assertEqual([(r.domain, r.host, r.port) for r in config.remote.routes],
                         [("list.example.org", "lists.internal", 25)])

    def test_me_is_the_default_local_domain(self) -> None:
        config = loadConfig(None, {"server.control_dir": self.control(me="host.example.org\n")})
        self.assertEqual(config.server.domains, ("host.example.org",))

    def test_conflict_names_both_places(self) -> None:
        directory = self.control(databytes="5000\n")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'[server]\ncontrol_dir = "{directory}"\n[smtp]\nmax_message_size = 1000\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: smtp.max_message_size: also set by the control file "
                                                f"{directory}/databytes; set it in one place")

    def test_missing_directory(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            loadConfig(None, {"server.control_dir": "/nonexistent/control"})
        self.assertEqual(str(caught.exception), "command line: server.control_dir: /nonexistent/control is not a directory")


class BuiltInCodeTests(TestCase):
    """Newcomer review 11: a ``Config(...)`` an embedder builds in code is checked and
    completed as a TOML file is, when the gateway is made from it."""

    def gateway(self, config: Config):  # type: ignore[no-untyped-def]
        from twisted.internet.testing import MemoryReactorClock

        from jsmail.service import MailGateway

        return MailGateway(config, reactor=MemoryReactorClock())

    def test_a_wrong_value_is_the_error_a_file_would_get(self) -> None:
        from jsmail.config import GatewaySettings
        from jsmail.smtp.settings import ServerSettings

        data = os.path.abspath(self.mktemp())
        with self.assertRaises(ConfigError) as caught:
            self.gateway(Config(server=GatewaySettings(dataDir=data), smtp=ServerSettings(maxMessageSize="10M")))
        self.assertEqual(str(caught.exception),
                         "Config(...): smtp.max_message_size: expected a whole number, got '10M'")
        self.assertFalse(os.path.exists(data))

    def test_settings_are_completed_as_from_a_file(self) -> None:
        """A string for a list is one item (it was iterated as characters); the host
        name is the machine's, as under twistd; the local domains and paths follow."""
        from jsmail.config import GatewaySettings, defaultHostname

        data = os.path.abspath(self.mktemp())
        gateway = self.gateway(Config(server=GatewaySettings(dataDir=data, domains="myapp.example")))
        self.addCleanup(gateway.queue.close)
        config = gateway.config
        self.assertEqual((config.server.domains, config.local.localDomains), (("myapp.example",),) * 2)
        self.assertEqual((config.server.hostname, config.smtp.hostname), (defaultHostname(),) * 2)
        self.assertEqual(config.server.postmaster, "postmaster@myapp.example")
        self.assertEqual(config, loadConfig(settings={"server": {"data": data, "domains": ["myapp.example"]}}))

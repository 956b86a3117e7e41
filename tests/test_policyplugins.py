"""Policy plugins: found with twisted.plugin, enabled by name per listener, their options
checked at start with errors that name the key; a third party's plugin dropped into a
jsmail/plugins directory on sys.path; etc/policy.toml starts as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from jsmail.config import ConfigError, loadConfig
from jsmail.policy.chain import availablePlugins
from jsmail.policy.dnsbl import DNSBL
from jsmail.policy.emailauth import DKIMCheck, DMARCCheck, SPFCheck
from jsmail.service import policyChains
from tests.test_plugin import twistd, twistdEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def runInThread(f, *args):  # type: ignore[no-untyped-def]
    raise AssertionError("building a chain does no blocking work")


class DiscoveryTests(TestCase):
    def test_builtin_plugins(self) -> None:
        self.assertEqual(sorted(availablePlugins()), ["access", "arc", "arc-seal", "dkim", "dkim-sign", "dmarc",
                                                      "dnsbl", "filter", "rcptcheck", "spf"])

    def test_each_listener_gets_its_own_chain_in_order(self) -> None:
        config = loadConfig(settings={"server": {"data": self.mktemp()}, "remote": {"dns_server": "127.0.0.1:1"},
                                      "policy": {"smtp": ["dnsbl", "spf", "dkim", "dmarc"], "smtps": ["spf"]},
                                      "plugins": {"dnsbl": {"zones": ["bl.test"]}}})
        chains = policyChains(config, reactor, runInThread)
        self.assertEqual([type(p) for p in chains["smtp"].policies], [DNSBL, SPFCheck, DKIMCheck, DMARCCheck])
        self.assertEqual(chains["submission"].policies, ())
        self.assertEqual([type(p) for p in chains["smtps"].policies], [SPFCheck])
        self.assertIsNot(chains["smtps"].policies[0], chains["smtp"].policies[1])

    def test_no_checks_no_resolver(self) -> None:
        chains = policyChains(loadConfig(settings={"server": {"data": self.mktemp()}}), reactor, runInThread)
        self.assertEqual({kind: (c.policies, c.modifiers) for kind, c in chains.items()},
                         {"smtp": ((), ()), "submission": ((), ()), "smtps": ((), ())})


class ErrorTests(TestCase):
    def assertConfigError(self, message: str, **policy: object) -> None:
        """``policy``: the [policy] table, with "plugins" the [plugins] tables."""
        plugins = policy.pop("plugins", {})
        config = loadConfig(settings={"server": {"data": self.mktemp()}, "remote": {"dns_server": "127.0.0.1:1"},
                                      "policy": policy, "plugins": plugins})
        with self.assertRaises(ConfigError) as caught:
            policyChains(config, reactor, runInThread)
        self.assertEqual(str(caught.exception), message)

    def test_unknown_plugin(self) -> None:
        self.assertConfigError(
            "configuration: policy.submission: no policy plugin named 'spff' (known: access, arc, arc-seal, dkim, "
            "dkim-sign, dmarc, dnsbl, filter, rcptcheck, spf)", submission=["spff"])

    def test_unknown_option(self) -> None:
        self.assertConfigError("configuration: plugins.dnsbl: unknown option 'zone'",
                               smtp=["dnsbl"], plugins={"dnsbl": {"zones": ["a.test"], "zone": "b"}})

    def test_bad_choice(self) -> None:
        self.assertConfigError("configuration: plugins.spf: fail: must be one of reject, tag; got 'bounce'",
                               smtp=["spf"], plugins={"spf": {"fail": "bounce"}})

    def test_wrong_type(self) -> None:
        self.assertConfigError("configuration: plugins.dmarc: timeout: expected float, got 'soon'",
                               smtp=["dmarc"], plugins={"dmarc": {"timeout": "soon"}})

    def test_missing_required_option(self) -> None:
        self.assertConfigError("configuration: plugins.filter: command: give the program to run",
                               smtp=["filter"])

    def test_plugin_tables_come_from_toml(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[policy]\nsmtp = ["dnsbl"]\n[plugins.dnsbl]\nzones = ["bl.test"]\naction = "tag"\n')
        config = loadConfig(path)
        self.assertEqual(config.policy.smtp, ("dnsbl",))
        self.assertEqual(config.policy.plugins, {"dnsbl": {"zones": ["bl.test"], "action": "tag"}})

    def test_a_plugin_section_must_hold_tables(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[plugins]\ndnsbl = "zen"\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertIn(f"{path}: plugins: expected [plugins.NAME] tables", str(caught.exception))


class ThirdPartyTests(TestCase):
    def test_example_plugin_is_found_where_the_docs_say(self) -> None:
        """docs/example_plugin.py copied into a jsmail/plugins directory on sys.path is
        found and builds, in a fresh interpreter as twistd would run."""
        self.assertPluginBuilds(os.path.join(TOP, "docs", "example_plugin.py"))

    def test_pluginWrittenFor01StillWorks(self) -> None:
        """A plugin written against 0.1's flat package (``jsmail.plugin``,
        ``jsmail.policy.Policy``, ``jsmail.verdict``, ``jsmail.reply``,
        ``jsmail.address``) keeps working after the package was split up."""
        self.assertPluginBuilds(os.path.join(TOP, "tests", "data", "plugin_written_for_0_1.py"))

    def assertPluginBuilds(self, source: str) -> None:
        top = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(top, "jsmail", "plugins"))
        shutil.copy(source, os.path.join(top, "jsmail", "plugins"))
        program = ("from twisted.internet import reactor\n"
                   "from jsmail.config import loadConfig\n"
                   "from jsmail.service import policyChains\n"
                   "config = loadConfig(settings={'server': {'data': 'd'}, 'remote': {'dns_server': '127.0.0.1:1'},"
                   " 'policy': {'smtp': ['sender-domain']}})\n"
                   "chains = policyChains(config, reactor, None)\n"
                   "print(type(chains['smtp'].policies[0]).__name__)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(TOP, "src"), top]))
        result = subprocess.run([sys.executable, "-c", program], cwd=top, env=env, capture_output=True, timeout=60)
        self.assertEqual(result.stdout, b"SenderDomain\n", result.stderr)


class ExampleConfigurationTests(TestCase):
    def test_policy_example_checks_as_it_is(self) -> None:
        """etc/policy.toml passes --check-config, which writes nothing: it used to make
        the DKIM private key the example names, and a data directory for it."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(
            twistd("-n", "jsmail", "--config", os.path.join(TOP, "etc", "policy.toml"), "--dns-server", "127.0.0.1:53",
                   "--check-config"),
            cwd=workdir, env=twistdEnvironment(), capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"configuration OK", result.stdout)
        self.assertEqual(os.listdir(workdir), [])


class ExamplePluginTests(TestCase):
    def test_the_servers_own_domains_are_good_senders(self) -> None:
        """docs/example_plugin.py as shipped refused mail from the server's own local
        domains ("Sender domain localhost does not accept mail")."""
        import importlib.util

        from jsmail.address import Address
        from jsmail.policy import PolicyContext

        spec = importlib.util.spec_from_file_location("example_plugin", os.path.join(TOP, "docs", "example_plugin.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        class NoDNS:
            def lookupMailExchange(self, name: str, timeout: object = None) -> None:
                raise AssertionError(f"looked {name} up")

        context = PolicyContext(reactor, NoDNS(), None, "mx.test", "mx.test", self.mktemp(),  # type: ignore[arg-type]
                                frozenset({"localhost"}))
        check = module.senderDomain.build({}, context)
        self.assertIsNone(check.checkSender(None, Address("someone", "localhost"), {}))

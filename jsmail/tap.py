"""``twistd jsmail``: command-line options, turned into a :class:`MailGateway`."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from jsmail.config import Config, ConfigError, loadConfig
from jsmail.service import MailGateway


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the jsmail mail gateway. With no options: SMTP on 127.0.0.1:2525, data under "
        "./jsmail-data, mail for any local part @localhost delivered to "
        "jsmail-data/mail/localhost/<local-part>/. Options override the --config file."
    )
    optParameters = [
        ["config", "c", None, "Read settings from this TOML file (see etc/jsmail.toml)."],
        ["data", "d", None, "Data directory (queue and mail) [default: ./jsmail-data]."],
        ["hostname", None, None, "This server's host name, used in greetings and headers."],
        ["max-message-size", None, None, "Largest message accepted, in octets."],
    ]
    optFlags = [["check-config", None, "Check the configuration, report, and exit."]]

    def __init__(self) -> None:
        super().__init__()
        self["smtp"] = []
        self["domain"] = []
        self["trusted-network"] = []
        self.config: Config | None = None

    def opt_smtp(self, description: str) -> None:
        """Listen for SMTP on this endpoint, e.g. tcp:25 or tcp6:2525:interface=\\:\\:1
        (repeatable) [default: tcp:2525:interface=127.0.0.1]."""
        self["smtp"].append(description)

    def opt_domain(self, name: str) -> None:
        """Accept and deliver locally mail for this domain (repeatable) [default: localhost]."""
        self["domain"].append(name)

    def opt_trusted_network(self, network: str) -> None:
        """Relay mail from clients in this network, e.g. 192.0.2.0/24 (repeatable)."""
        self["trusted-network"].append(network)

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {}
        for option, field in (("data", "dataDir"), ("hostname", "hostname"),
                              ("max-message-size", "maxMessageSize")):
            if self[option] is not None:
                overrides[field] = self[option]
        for option, field in (("smtp", "smtpListeners"), ("domain", "domains"),
                              ("trusted-network", "trustedNetworks")):
            if self[option]:
                overrides[field] = self[option]
        try:
            self.config = loadConfig(self["config"], overrides)
        except ConfigError as e:
            sys.stderr.write(f"jsmail: configuration error: {e}\n")
            sys.exit(2)
        if self["check-config"]:
            sys.stdout.write(f"jsmail: configuration OK ({self['config'] or 'built-in defaults'})\n")
            sys.exit(0)


def makeService(options: Options) -> MailGateway:
    assert options.config is not None
    return MailGateway(options.config)

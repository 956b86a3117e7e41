"""``twistd jsmail``: command-line options, turned into a :class:`MailGateway`.

twistd's ``--uid`` and ``--gid`` are taken as ``[server] user`` and ``group``: the
gateway gives up root itself, right after binding its ports and starting the local
spawner, and makes the data tree for that user before (see :mod:`jsmail.privileges`);
twistd is then left nothing to switch.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.python import usage

from jsmail.config import Config, ConfigError, loadConfig
from jsmail.ops import logformat
from jsmail.service import MailGateway, checkPolicies
from jsmail.smtp.tls import TLSError


class Options(usage.Options, AuthOptionMixin):
    synopsis = "[options]"
    # SMTP AUTH carries a user name and password; --auth refuses (and --help-auth hides)
    # checkers that cannot judge one, such as anonymous or sshkey.
    supportedInterfaces = (IUsernamePassword,)
    longdesc = (
        "Run the jsmail mail gateway. With no options: SMTP on 127.0.0.1:2525, submission "
        "(STARTTLS + AUTH) on 127.0.0.1:2587, implicit TLS on 127.0.0.1:2465, data under "
        "./jsmail-data, mail for any local part @localhost delivered to "
        "jsmail-data/mail/localhost/<local-part>/. Options override the --config file."
    )
    optParameters = [
        ["config", "c", None, "Read settings from this TOML file (see etc/jsmail.toml)."],
        ["data", "d", None, "Data directory (queue, mail, TLS, passwd) [default: ./jsmail-data]."],
        ["hostname", None, None, "This server's host name, used in greetings and headers."],
        ["max-message-size", None, None, "Largest message accepted, in octets."],
        ["tls-certificate", None, None, "PEM certificate (chain allowed) [default: self-signed, made at start]."],
        ["tls-key", None, None, "PEM private key for --tls-certificate [default: in the certificate file]."],
        ["smarthost", None, None, "Send all non-local mail to HOST[:PORT] (TLS and AUTH: see the config file)."],
        ["dns-server", None, None, "Resolve MX and addresses with this DNS server, HOST:PORT [default: resolv.conf]."],
        ["control-dir", None, None, "Read qmail control files (me, locals, smtproutes, ...) from this directory."],
        ["log-format", None, "text", "Log as text lines, or as one JSON object per line (json)."],
    ]
    optFlags = [["check-config", None, "Check the configuration, report, and exit."]]

    # option -> the setting it overrides, named as in TOML
    _repeatable = {
        "smtp": "smtp.listen",
        "submission": "smtp.submission",
        "smtps": "smtp.smtps",
        "domain": "server.domains",
        "trusted-network": "server.trusted_networks",
    }
    _single = {
        "data": "server.data",
        "hostname": "server.hostname",
        "max-message-size": "smtp.max_message_size",
        "tls-certificate": "server.tls_certificate",
        "tls-key": "server.tls_key",
        "smarthost": "remote.smarthost",
        "dns-server": "remote.dns_server",
        "control-dir": "server.control_dir",
    }

    def __init__(self) -> None:
        super().__init__()
        for option in self._repeatable:
            self[option] = []
        self.config: Config | None = None

    def opt_smtp(self, description: str) -> None:
        """Listen for SMTP (port 25 rules) on this endpoint, e.g. tcp:25 or
        tcp6:25:interface=\\:\\: (repeatable; "none" turns it off) [default: tcp:2525:interface=127.0.0.1]."""
        self["smtp"].append(description)

    def opt_submission(self, description: str) -> None:
        """Listen for submission (STARTTLS and AUTH required) on this endpoint
        (repeatable; "none" turns it off) [default: tcp:2587:interface=127.0.0.1]."""
        self["submission"].append(description)

    def opt_smtps(self, description: str) -> None:
        """Listen for submission over implicit TLS on this plain tcp:/tcp6: endpoint
        (repeatable; "none" turns it off) [default: tcp:2465:interface=127.0.0.1]."""
        self["smtps"].append(description)

    def opt_domain(self, name: str) -> None:
        """Accept and deliver locally mail for this domain (repeatable) [default: localhost]."""
        self["domain"].append(name)

    def opt_trusted_network(self, network: str) -> None:
        """Relay mail from clients in this network, e.g. 192.0.2.0/24 (repeatable)."""
        self["trusted-network"].append(network)

    def postOptions(self) -> None:
        self._logFormat()
        overrides: dict[str, Any] = {}
        parent = getattr(self, "parent", None)  # twistd's own options
        if parent is not None and parent.get("uid") is not None:
            overrides["server.user"] = str(parent["uid"])
            if parent.get("gid") is not None:
                overrides["server.group"] = str(parent["gid"])
        for option, field in self._single.items():
            if self[option] is not None:
                overrides[field] = self[option]
        for option, field in self._repeatable.items():
            if self[option]:
                overrides[field] = self[option]
        try:
            self.config = loadConfig(self["config"], overrides)
        except ConfigError as e:
            sys.stderr.write(f"jsmail: configuration error: {e}\n")
            sys.exit(2)
        if self["check-config"]:
            try:
                from twisted.internet import reactor

                checkPolicies(self.config, reactor)
            except ConfigError as e:
                sys.stderr.write(f"jsmail: configuration error: {e}\n")
                sys.exit(2)
            sys.stdout.write(f"jsmail: configuration OK ({self['config'] or 'built-in defaults'})\n")
            sys.exit(0)


    def _logFormat(self) -> None:
        """Name jsmail's log observer as twistd's ``--logger``: JSON lines for
        ``--log-format json``, twistd's text lines written faster otherwise (unless
        twistd was asked for syslog or a logger of its own)."""
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        parent = self.parent
        if parent is None:
            return
        if self["log-format"] == "text":
            if parent.get("logger") is None and not parent.get("syslog"):
                logformat.configure(parent.get("logfile"), bool(parent.get("nodaemon")))
                parent["logger"] = logformat.TEXT_FACTORY
            return
        if parent.get("logger") is not None:
            raise usage.UsageError("--log-format json and twistd's --logger are two ways of saying one thing")
        logformat.configure(parent.get("logfile"), bool(parent.get("nodaemon")))
        parent["logger"] = logformat.FACTORY


def makeService(options: Options) -> MailGateway:
    assert options.config is not None
    parent = getattr(options, "parent", None)
    if parent is not None:
        parent["uid"] = parent["gid"] = None  # taken as [server] user and group: the gateway switches itself
    try:
        gateway = MailGateway(options.config, extraCheckers=options.get("credCheckers", []), standalone=True)
        if parent is not None and parent.get("umask") is not None:
            gateway.umask = None  # twistd --umask has set one already
        return gateway
    except TLSError as e:
        sys.stderr.write(f"jsmail: TLS configuration error: {e}\n")
        sys.exit(2)
    except ConfigError as e:
        sys.stderr.write(f"jsmail: configuration error: {e}\n")
        sys.exit(2)

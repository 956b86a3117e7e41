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
from jsmail.ops import logformat, preflight
from jsmail.service import MailGateway
from jsmail.smtp.tls import TLSError


def _oneLine(method: Any) -> Any:
    """--help prints an option's docstring as it is written, indentation and all."""
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


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

    @_oneLine
    def opt_smtp(self, description: str) -> None:
        """Listen for SMTP (port 25 rules) on this endpoint, e.g. tcp:25, or 'tcp6:25:interface=\\:\\:' (quoted)
        for IPv6 and IPv4 at once on Linux (repeatable; "none" turns it off) [default: tcp:2525:interface=127.0.0.1]."""
        self["smtp"].append(description)

    @_oneLine
    def opt_submission(self, description: str) -> None:
        """Listen for submission (STARTTLS and AUTH required) on this endpoint
        (repeatable; "none" turns it off) [default: tcp:2587:interface=127.0.0.1]."""
        self["submission"].append(description)

    @_oneLine
    def opt_smtps(self, description: str) -> None:
        """Listen for submission over implicit TLS on this plain tcp:/tcp6: endpoint
        (repeatable; "none" turns it off) [default: tcp:2465:interface=127.0.0.1]."""
        self["smtps"].append(description)

    def opt_auth(self, description: str) -> None:
        """Specify an authentication method for the server."""
        try:
            super().opt_auth(description)
        except usage.UsageError as e:  # one line, not twistd's whole usage text before it
            sys.stderr.write(f"jsmail: configuration error: command line: --auth {description}: {e}\n")
            sys.exit(2)

    def opt_version(self) -> None:
        """Print jsmail's version (and Twisted's) and exit."""
        from jsmail import __version__
        from twisted import __version__ as twistedVersion

        sys.stdout.write(f"jsmail {__version__} (Twisted {twistedVersion})\n")
        sys.exit(0)

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
            if self[option] is not None and str(self[option]).startswith("--"):  # "--hostname --check-config"
                sys.stderr.write(f"jsmail: configuration error: command line: --{option} needs a value, "
                                 f"not the option {self[option]}\n")
                sys.exit(2)
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
            sys.exit(preflight.checkConfig(self.config, self["config"], sys.stdout, sys.stderr))


    def _logFormat(self) -> None:
        """Name jsmail's log observer as twistd's ``--logger``: JSON lines for
        ``--log-format json``, twistd's text lines written faster otherwise, either
        without Twisted's chatter (unless twistd was asked for syslog or a logger of
        its own)."""
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        parent = self.parent
        if parent is None:
            return
        if parent.get("logger") is not None or parent.get("syslog"):
            if self["log-format"] == "json":
                raise usage.UsageError("--log-format json and twistd's --logger are two ways of saying one thing")
            return
        logformat.configure(parent.get("logfile"), bool(parent.get("nodaemon")))
        parent["logger"] = logformat.FACTORY if self["log-format"] == "json" else logformat.TEXT_FACTORY


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
        sys.stderr.write(f"jsmail: configuration error: {preflight.named(e, options['config'])}\n")
        sys.exit(2)
    except OSError as e:  # the data directory cannot be made or used
        sys.stderr.write(f"jsmail: cannot use {e.filename}: {e.strerror} (--check-config tells more)\n")
        sys.exit(2)

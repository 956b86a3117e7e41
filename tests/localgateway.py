"""A whole gateway with its local submission socket, for the tests of jsmail-sendmail and
of the socket: a configuration file (what jsmail-sendmail reads too), the gateway
started from it, and the mailboxes it delivers to."""

from __future__ import annotations

import glob
import io
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from jsmail.config import loadConfig
from jsmail.qmail.sendmail import main as sendmailMain
from jsmail.service import MailGateway

DELIVERY_TIMEOUT = 10.0


class LocalGateway:
    """Mixed into a trial TestCase: :meth:`startGateway`, :meth:`sendmail`,
    :meth:`mailbox`."""

    def writeConfig(self, extra: str = "", smtp: str = "", reachable: bool = False) -> str:
        """A configuration file for a gateway on a fresh, absolute data directory, no
        TCP listeners, delivery in this process; ``smtp``: more lines of ``[smtp]``,
        ``extra``: more tables.  With ``reachable`` the configuration is in a directory
        every user can reach (trial's own are under a 0700 directory), beside the data
        directory (0700 once the gateway has started, as every data tree is)."""
        if reachable:  # the configuration beside the data directory, which the gateway closes to others
            base = tempfile.mkdtemp(prefix="jsmail-test-")
            os.chmod(base, 0o755)
            self.addCleanup(shutil.rmtree, base, True)  # type: ignore[attr-defined]
            self.data = os.path.join(base, "data")
            self.configPath = os.path.join(base, "jsmail.toml")
        else:
            self.data = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
            self.configPath = os.path.join(self.data, "jsmail.toml")
        os.makedirs(self.data)
        with open(self.configPath, "w") as f:
            f.write(f'[server]\nhostname = "mx.test"\ndata = "{self.data}"\ndomains = ["localhost"]\n'
                    f'[smtp]\nlisten = "none"\nsubmission = "none"\nsmtps = "none"\n{smtp}'
                    f'[queue]\ndelivery_process = false\n[remote]\ndns_server = "127.0.0.1:1"\n{extra}')
        if reachable:
            os.chmod(self.configPath, 0o644)  # what a packaged /etc/jsmail/jsmail.toml without secrets is
        return self.configPath

    @defer.inlineCallbacks
    def startGateway(self, extra: str = "", smtp: str = "", reachable: bool = False) -> Any:
        config = loadConfig(self.writeConfig(extra, smtp, reachable))
        self.socketPath = config.submit.socket
        self.gateway = MailGateway(config)
        self.gateway.privilegedStartService()
        self.gateway.startService()
        self.addCleanup(lambda: self.gateway.stopService() if self.gateway.running else None)  # type: ignore[attr-defined]
        yield self.gateway.localSubmission.whenListening()
        return self.gateway

    def sendmail(self, *argv: str, stdin: bytes = b"Subject: s\n\nx\n",
                 environ: dict[str, str] | None = None) -> defer.Deferred[tuple[int, str, str]]:
        """Run jsmail-sendmail's main in a thread (the gateway needs the reactor):
        exit status, stdout, stderr."""
        environ = {"JSMAIL_CONFIG": self.configPath} if environ is None else environ

        def run() -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = sendmailMain(list(argv), io.BytesIO(stdin), out, err, environ)
            return code, out.getvalue(), err.getvalue()

        return deferToThread(run)

    def mailbox(self, local: str, domain: str = "localhost") -> list[bytes]:
        messages = []
        for path in sorted(glob.glob(os.path.join(self.data, "mail", domain, local, "new", "*"))):
            with open(path, "rb") as f:
                messages.append(f.read())
        return messages

    @defer.inlineCallbacks
    def delivered(self, local: str, count: int = 1) -> Any:
        """Wait until ``local``@localhost has ``count`` messages; return them."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(self.mailbox(local)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{local}@localhost got {len(self.mailbox(local))} messages, not {count}")
            yield task.deferLater(reactor, 0.02, lambda: None)
        return self.mailbox(local)

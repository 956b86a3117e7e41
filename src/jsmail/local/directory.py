"""Whether a local address has somewhere to go: the answer smtpd gives at RCPT, so that
mail for nobody is refused in the dialogue (550 5.1.1) instead of bounced later, and a
stranger cannot make a mailbox for every name they try (security review M-1, M-8).

An address is known when local delivery would find something for it (qmail-getpw's
and qmail-local's lookups, section 8 and 9 of the qmail-interfaces reference): an
alias, a virtual user's or a system user's directory (an extension of it only when a
``.qmail`` file for it exists), a ``.qmail`` file in a domain directory, a Maildir
already made for it, or a user in the AUTH password file.  ``postmaster`` always is
(RFC 5321 section 4.5.1).  Everything here looks at the disk: run it in a thread.
"""

from __future__ import annotations

import os
from typing import Callable

from jsmail.address import BadMailbox, mailboxName
from jsmail.error import DeliveryError
from jsmail.local.aliases import AliasesFile
from jsmail.local.dotqmail import fileCandidates, findMailbox
from jsmail.local.settings import LocalSettings
from jsmail.route import VirtualDomains


class RecipientDirectory:
    """Local recipients that exist, looked up the way local delivery finds them.

    ``mailRoot`` holds the default Maildirs (``<root>/<domain>/<local>/``);
    ``accountNames`` gives the AUTH password file's user names (a bare name is a user
    of every local domain)."""

    def __init__(self, mailRoot: str, settings: LocalSettings, hostname: str = "",
                 accountNames: Callable[[], frozenset[str]] = frozenset) -> None:
        self.mailRoot = mailRoot
        self.settings = settings
        self.virtual = VirtualDomains(settings.virtualDomains)
        self.aliases = AliasesFile(settings.aliases, settings.noAtHost or hostname) if settings.aliases else None
        self.accountNames = accountNames
        self._locals = frozenset(d.lower() for d in settings.localDomains)

    def isLocal(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered here: a local or a virtual domain."""
        domain = domain.lower()
        return domain in self._locals or self.virtual.prepend("@" + domain) is not None

    def exists(self, recipient: str) -> bool:
        """Whether local delivery has somewhere to put mail for ``recipient`` (blocking)."""
        local, _, domain = recipient.rpartition("@")
        if local.lower() == "postmaster":
            return True
        usersDomain = domain
        if self._locals and domain.lower() not in self._locals:
            prepend = self.virtual.prepend(recipient)
            if prepend is not None:
                local, usersDomain = f"{prepend}-{local}", self.settings.localDomains[0]
        separators = self.settings.separators
        try:
            if self.aliases is not None and self.aliases.lookup(local, domain, separators) is not None:
                return True
        except DeliveryError:
            return True  # a broken aliases file: local delivery defers, so the mail must not be refused
        mailbox = findMailbox(local, usersDomain, self.settings.usersDir, self.settings.homeDotQmail, separators,
                              self.settings.minimumUid)
        if mailbox.home is not None:
            if not mailbox.dash and not mailbox.alias:
                return True  # a user, by name
            if self._hasInstructions(mailbox.home, mailbox.dash, mailbox.ext, separators):
                return True
        try:
            if os.path.isdir(os.path.join(self.mailRoot, domain.lower(), mailboxName(local))):
                return True
        except BadMailbox:
            return False
        names = self.accountNames()
        return f"{local}@{domain}".lower() in names or local.lower() in names

    @staticmethod
    def _hasInstructions(home: str, dash: str, ext: str, separators: str) -> bool:
        for name, _ in fileCandidates(dash, ext, separators):
            try:
                os.stat(os.path.join(home, name))
                return True
            except PermissionError:
                return True  # a home this process may not look into: local delivery decides
            except OSError:
                continue
        return False

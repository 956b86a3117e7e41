"""An example third-party policy plugin for jsmail: refuse senders at domains that have
no MX or address records (a null-MX or typo domain can never receive the bounce).

Install it by copying this file into a ``jsmail/plugins/`` directory on ``sys.path``
(for example ``site-packages/jsmail/plugins/``, or a directory of your own named
``jsmail/plugins`` that you put on ``PYTHONPATH``), then enable it::

    [policy]
    smtp = ["sender-domain"]

    [plugins.sender-domain]
    timeout = 5.0

Everything a plugin needs is in :mod:`jsmail.policy`: :class:`~jsmail.policy.PolicyPlugin`
(a name, a description and a factory), :class:`~jsmail.policy.Policy` (a base whose
phases all say yes; override the ones you need) and :class:`~jsmail.policy.Verdict`
(accept, perhaps adding header fields or Authentication-Results entries, or refuse with
a reply).
A check that raises anything but :class:`jsmail.error.SMTPReplyError` gives the client
451 4.3.0 and is logged; it never takes the session down.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.names import error as dnserror

from jsmail.address import Address
from jsmail.policy import Options, Policy, PolicyContext, PolicyPlugin, Verdict
from jsmail.reply import Reply

NO_SUCH_DOMAIN = Reply(550, "5.1.8", "Sender domain {} does not accept mail")  # RFC 3463: bad sender's system address


class SenderDomain(Policy):
    """Refuses MAIL FROM at a domain without MX and without an address (RFC 5321
    section 5.1: such a domain cannot receive a bounce)."""

    def __init__(self, resolver: Any, timeout: float, localDomains: frozenset[str] = frozenset()) -> None:
        self.resolver, self.timeout, self.localDomains = resolver, timeout, localDomains

    def checkSender(self, session: Any, address: Address, params: dict) -> Any:
        if not address.domain or address.domain.lower() in self.localDomains:  # <>, or this server's own
            return None
        d = self.resolver.lookupMailExchange(address.domain, timeout=(self.timeout,))

        def found(result: Any) -> Verdict | None:
            answers = result[0]
            if any(getattr(a.payload, "name", None) is not None and str(a.payload.name) == "" for a in answers):
                return Verdict.reject(NO_SUCH_DOMAIN.format(address.domain), "null MX (RFC 7505)")
            return None

        def missing(failure: Any) -> Verdict | None:
            failure.trap(dnserror.DomainError)
            return Verdict.reject(NO_SUCH_DOMAIN.format(address.domain), "NXDOMAIN")

        return d.addCallbacks(found, missing)


def build(options: Mapping[str, Any], context: PolicyContext) -> SenderDomain:
    o = Options(options)  # refuses unknown options, so typos fail at start
    check = SenderDomain(context.resolver, o.get("timeout", 5.0), context.localDomains)
    o.done()
    return check


senderDomain = PolicyPlugin("sender-domain", "refuse senders whose domain cannot receive mail", build)

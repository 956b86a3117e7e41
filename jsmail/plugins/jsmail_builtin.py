"""The policy plugins jsmail ships (see :mod:`jsmail.plugin`)."""

from jsmail import access, dnsbl, hooks
from jsmail.plugin import PolicyPlugin

accessLists = PolicyPlugin("access", "allow and deny lists of clients, HELO names, senders and recipients",
                           access.build)
dnsBlockLists = PolicyPlugin("dnsbl", "DNS block and allow lists (RFC 5782), refusing or tagging listed clients",
                             dnsbl.build)
recipientCheck = PolicyPlugin("rcptcheck", "a program that accepts or refuses each recipient by exit code",
                              hooks.buildRecipientCheck)
contentFilter = PolicyPlugin("filter", "a program that accepts or refuses each message by exit code",
                             hooks.buildContentFilter)

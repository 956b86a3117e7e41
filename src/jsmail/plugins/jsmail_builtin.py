"""The policy plugins jsmail ships (see :mod:`jsmail.policy.plugin`)."""

from jsmail.policy import access, dnsbl, emailauth
from jsmail.policy import programs as hooks
from jsmail.policy.plugin import PolicyPlugin

accessLists = PolicyPlugin("access", "allow and deny lists of clients, HELO names, senders and recipients",
                           access.build)
dnsBlockLists = PolicyPlugin("dnsbl", "DNS block and allow lists (RFC 5782), refusing or tagging listed clients",
                             dnsbl.build)
recipientCheck = PolicyPlugin("rcptcheck", "a program that accepts or refuses each recipient by exit code",
                              hooks.buildRecipientCheck)
contentFilter = PolicyPlugin("filter", "a program that accepts or refuses each message by exit code",
                             hooks.buildContentFilter)
spf = PolicyPlugin("spf", "SPF (RFC 7208) at MAIL FROM: Received-SPF, and reject or tag on fail", emailauth.buildSPF)
dkim = PolicyPlugin("dkim", "DKIM (RFC 6376) verification of each signature at the end of the message",
                    emailauth.buildDKIM)
arc = PolicyPlugin("arc", "ARC (RFC 8617) chain validation at the end of the message", emailauth.buildARC)
dmarc = PolicyPlugin("dmarc", "DMARC (RFC 7489) from the SPF and DKIM results: reject or tag", emailauth.buildDMARC)
dkimSign = PolicyPlugin("dkim-sign", "DKIM signing of mail from authenticated users", emailauth.buildDKIMSign)
arcSeal = PolicyPlugin("arc-seal", "ARC sealing (RFC 8617) of the results of the arc check", emailauth.buildARCSeal)

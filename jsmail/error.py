"""Errors that carry a public SMTP reply apart from a private reason for the log."""

from __future__ import annotations

from jsmail.reply import Reply


class SMTPReplyError(Exception):
    """Refuse something with ``reply``; ``reason`` goes to the operator log only.

    Raise it (or fail a Deferred with it) from any check: smtpd sends ``reply`` to the
    client and logs ``reason``, so a reason can name internals a client must not see.
    """

    def __init__(self, reply: Reply, reason: str | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.reason = reason if reason is not None else reply.text

"""Errors that carry a public reply apart from a private reason for the log: one for
refusing something in the SMTP dialogue, one for a delivery that failed."""

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


class DeliveryError(Exception):
    """A delivery (or a step of one) failed: ``reply`` is what a bounce may show,
    ``permanent`` whether trying again is pointless, and ``detail`` the private why
    (paths, host names, exception texts) for the operator log only."""

    def __init__(self, reply: Reply, permanent: bool, detail: str = "") -> None:
        super().__init__(f"{reply} ({detail})" if detail else str(reply))
        self.reply = reply
        self.permanent = permanent
        self.detail = detail

"""Who is owed which delivery status notification, and when (RFC 3461 sections 4.1 and
5; the notice itself is written by :mod:`jsmail.send.dsn`).

After each attempt the scheduler asks :func:`noticesOwed`.  A recipient is reported
once, as soon as its end is known, whatever its message's other recipients are still
waiting for: a permanent failure is reported at once, not days later when the last
deferred recipient is given up on.  The envelope records it (``Recipient.reported``),
so a restart does not report it again.

- A failure is reported unless the recipient's NOTIFY leaves out FAILURE.
- A success is reported only when NOTIFY asks for SUCCESS, and only where jsmail is
  the last to know: a final delivery ("delivered"), a forward ("expanded") or a relay
  to a next hop without DSN ("relayed").  A next hop that offered DSN got NOTIFY and
  ORCPT with the message and reports from there (section 5.2.1).
- A delay warning goes once per message, about the recipients whose NOTIFY has DELAY,
  once the message has waited ``queue.delay_warning`` seconds (4 hours by default, as
  Postfix's usual setting; 0: never).  No NOTIFY means FAILURE,DELAY (section 4.1 lets
  the MTA choose between that and FAILURE alone): a sender who did not say otherwise
  learns that a message is stuck, hours before it comes back.
- Notices go from the null reverse-path, so they never cause another (RFC 5321
  section 4.5.5).  A bounce (sender ``<>``) is never bounced: one that fails goes to the
  postmaster, once, as a double bounce (:attr:`Envelope.isDoubleBounce`), and a double
  bounce that fails is dropped (qmail's rule).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from jsmail.envelope import Envelope, Recipient, RecipientState
from jsmail.interfaces import Handoff
from jsmail.send.dsn import Action, Notice

_SUCCESS = {Handoff.DELIVERED: Action.DELIVERED, Handoff.EXPANDED: Action.EXPANDED, Handoff.RELAYED: Action.RELAYED}


def wantsNotice(recipient: Recipient, kind: str) -> bool:
    """Whether the recipient's NOTIFY (RFC 3461 section 4.1) asks for ``kind``
    (SUCCESS, FAILURE or DELAY); no NOTIFY means FAILURE,DELAY."""
    notify = recipient.params.get("NOTIFY")
    if notify is None:
        return kind in ("FAILURE", "DELAY")
    return kind in notify.upper().split(",")


def noticesOwed(envelope: Envelope, handoffs: Mapping[str, Handoff], now: float,
                delayWarning: float) -> tuple[list[Notice], Envelope]:
    """The notices owed now, and the envelope that records them as sent.

    ``handoffs`` says what became of each recipient delivered in this attempt; a
    bounce's failures are owed to the postmaster, whatever NOTIFY said."""
    notices, recipients = [], []
    for r in envelope.recipients:
        if r.isDone and not r.reported:
            if r.state is RecipientState.FAILED:
                action: Action | None = Action.FAILED
                wanted = envelope.isBounce or wantsNotice(r, "FAILURE")
            else:
                action = _SUCCESS.get(handoffs.get(r.address, Handoff.PASSED_ON))
                wanted = not envelope.isBounce and wantsNotice(r, "SUCCESS")
            if action is not None and wanted:
                notices.append(Notice(r, action))
            r = replace(r, reported=True)
        recipients.append(r)
    warn = (delayWarning > 0 and not envelope.delayWarned and bool(envelope.pending)
            and now - envelope.arrival >= delayWarning)
    if warn and not envelope.isBounce:
        notices += [Notice(r, Action.DELAYED) for r in envelope.pending if wantsNotice(r, "DELAY")]
    return notices, replace(envelope, recipients=tuple(recipients), delayWarned=envelope.delayWarned or warn)

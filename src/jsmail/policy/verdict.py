"""What a policy check decides (see :class:`jsmail.interfaces.IPolicy`).

A check answers ``None`` (no objection) or a :class:`Verdict`: accept, perhaps adding
header fields and Authentication-Results entries (RFC 8601) to the message; or refuse
with a reply from :mod:`jsmail.reply` (a 5xx reply rejects, a 4xx reply asks the client
to try again later) and a private reason for the operator log.  Raising
:class:`jsmail.error.SMTPReplyError` refuses in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from jsmail.error import SMTPReplyError
from jsmail.reply import Reply


@dataclass(frozen=True)
class Verdict:
    """One check's decision: ``refusal`` is None to accept."""

    refusal: Reply | None = None
    reason: str = ""  # for the log only, never shown to the client
    headers: tuple[str, ...] = ()  # whole header fields ("Name: value", no CR LF) to add above the message
    results: tuple[Any, ...] = ()  # authres result objects for the one Authentication-Results field

    @classmethod
    def accept(cls, headers: Iterable[str] = (), results: Iterable[Any] = ()) -> Verdict:
        return cls(headers=tuple(headers), results=tuple(results))

    @classmethod
    def reject(cls, refusal: Reply, reason: str = "") -> Verdict:
        """Refuse for good: ``refusal`` must be a 5xx reply."""
        if not 500 <= refusal.code < 600:
            raise ValueError(f"a rejection needs a 5xx reply, not {refusal.code}")
        return cls(refusal=refusal, reason=reason or refusal.text)

    @classmethod
    def tempfail(cls, refusal: Reply, reason: str = "") -> Verdict:
        """Refuse for now: ``refusal`` must be a 4xx reply."""
        if not 400 <= refusal.code < 500:
            raise ValueError(f"a temporary failure needs a 4xx reply, not {refusal.code}")
        return cls(refusal=refusal, reason=reason or refusal.text)

    def raiseIfRefused(self) -> None:
        if self.refusal is not None:
            raise SMTPReplyError(self.refusal, self.reason)


ACCEPT = Verdict()


def asVerdict(answer: object) -> Verdict:
    """A check's answer (None or a Verdict) as a Verdict; anything else is a bug in the
    check, reported as such rather than taken for a yes."""
    if answer is None:
        return ACCEPT
    if isinstance(answer, Verdict):
        return answer
    raise TypeError(f"a policy check answered {answer!r}; expected None or a Verdict")

"""The sendmail command line that ``jsmail-sendmail`` understands: one table of
options (what each does here), the parser, and the usage text made from the table.

Programs call sendmail with options meant for sendmail itself, Postfix or Exim (cron:
``-FCronDaemon -i -B8BITMIME -oem``; PHP: ``-t -i``; mutt: ``-oem -oi``, ``-N``, ``-R``,
``-V``); refusing one loses their mail, so every option those mailers document is
accepted: honoured where jsmail can do the same (the DSN options become the SMTP
parameters RFC 3461 defines), ignored where it means nothing here (delivery and error
modes: the gateway always queues, and errors are reported by the exit status).  An
option that is not in the table is a usage error (exit 64), as with sendmail.

Parsing is getopt's (options first, clustered flags, a value attached or in the next
argument), but for ``-q`` and ``-d``, whose value is optional and only attached, and
``-h``: sendmail's hop count when a number follows, else help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jsmail.smtp.params import encodeXtext

FLAG, VALUE, ATTACHED = "flag", "value", "attached"

#: letter -> (how it takes a value, what jsmail-sendmail does with it)
OPTIONS: dict[str, tuple[str, str]] = {
    "A": (VALUE, "ignored (-Ac, -Am: which sendmail configuration file)"),
    "B": (VALUE, "body type, 7BIT or 8BITMIME: passed on as BODY="),
    "b": (VALUE, "mode: -bm send (the default), -bs SMTP on stdin/stdout, -bp list the queue, -bi nothing to do"),
    "C": (VALUE, "the jsmail configuration file to read"),
    "d": (ATTACHED, "ignored (debugging)"),
    "F": (VALUE, "full name in the From field added to a message without one"),
    "f": (VALUE, "envelope sender (yours, unless you are trusted: see docs/submission.rst)"),
    "G": (FLAG, "ignored (gateway submission)"),
    "h": (VALUE, "-h N: hop count, ignored; -h alone: this help"),
    "i": (FLAG, "a line of a single dot does not end the message"),
    "L": (VALUE, "ignored (syslog label)"),
    "m": (FLAG, "ignored (the sender is always among the recipients if named)"),
    "N": (VALUE, "delivery notices: never, or success,failure,delay: passed on as NOTIFY="),
    "n": (FLAG, "ignored (no aliasing)"),
    "O": (VALUE, "ignored (option=value)"),
    "o": (VALUE, "-oi as -i; the others (-oem, -oee, -odi, -odb, -odq, ...) ignored"),
    "p": (VALUE, "ignored (protocol and host)"),
    "q": (ATTACHED, "ask the delivery process to retry the queue now (its owner only; else nothing to do)"),
    "R": (VALUE, "what a bounce returns, full or hdrs: passed on as RET="),
    "r": (VALUE, "envelope sender, as -f"),
    "t": (FLAG, "recipients from the To, Cc and Bcc fields too (Bcc is removed)"),
    "U": (FLAG, "ignored (initial user submission)"),
    "V": (VALUE, "envelope id for delivery notices: passed on as ENVID="),
    "v": (FLAG, "show the SMTP dialogue with the gateway on stderr"),
    "X": (VALUE, "ignored (traffic log file)"),
}

MODES = {"m": "send", "s": "smtp", "p": "list", "i": "aliases"}
NOT_HERE = {
    "a": "ARPANET mode is long gone",
    "d": "the gateway is run by twistd jsmail, not by sendmail",
    "D": "the gateway is run by twistd jsmail, not by sendmail",
    "h": "jsmail keeps no host status",
    "H": "jsmail keeps no host status",
    "P": "see jsmail queue list",
    "t": "jsmail has no address test mode",
    "v": "jsmail-sendmail cannot verify addresses; send a message",
}
BODY_TYPES = ("7BIT", "8BITMIME")
NOTIFY = ("SUCCESS", "FAILURE", "DELAY")

USAGE_HEAD = """\
usage: jsmail-sendmail [options] [recipient ...]
       jsmail-sendmail -bs | -bp | -q | --help

Reads a message from stdin and hands it to the jsmail gateway through its local
submission socket (the configuration comes from -C, $JSMAIL_CONFIG or
/etc/jsmail/jsmail.toml).  Exit status: 0 queued, 64 usage, 65 bad message,
67 recipient refused, 69 no gateway configured, 75 gateway not running or busy
(try again), 77 sender not allowed, 78 configuration error.

options:
"""


def usage() -> str:
    """The usage text, made from :data:`OPTIONS`."""
    lines = [f"  -{letter}{'' if kind == FLAG else ' X' if kind == VALUE else 'X'}  {what}"
             for letter, (kind, what) in sorted(OPTIONS.items(), key=lambda item: (item[0].lower(), item[0]))]
    lines += ["  --data DIR  the data directory, without a configuration file (or $JSMAIL_DATA)",
              "  --help  this help"]
    return USAGE_HEAD + "\n".join(lines) + "\n"


class UsageError(ValueError):
    """The command line cannot be followed: the message says why."""


@dataclass
class Invocation:
    """What the command line asks for."""

    mode: str = "send"  # send, smtp, list, aliases, flush, help
    fromHeaders: bool = False
    dotEnds: bool = True
    sender: str | None = None
    fullName: str | None = None
    body: str | None = None
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    verbose: bool = False
    config: str | None = None
    data: str | None = None
    recipients: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def mailOptions(self) -> list[str]:
        """ESMTP parameters of MAIL FROM."""
        return [f"{name}={value}" for name, value in (("BODY", self.body), ("RET", self.ret), ("ENVID", self.envid))
                if value is not None]

    @property
    def rcptOptions(self) -> list[str]:
        """ESMTP parameters of each RCPT TO."""
        return [f"NOTIFY={self.notify}"] if self.notify else []


def parse(arguments: list[str], program: str = "sendmail") -> Invocation:
    """The :class:`Invocation` that ``arguments`` ask for (raises :class:`UsageError`).
    Run as ``mailq`` it lists the queue, as ``newaliases`` it has nothing to do."""
    invocation = Invocation(mode={"mailq": "list", "newaliases": "aliases"}.get(program, "send"))
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        i += 1
        if argument == "--":
            break
        if argument == "--help":
            invocation.mode = "help"
            continue
        if argument == "--data" or argument.startswith("--data="):
            if argument == "--data":
                if i == len(arguments):
                    raise UsageError("--data needs a directory")
                argument, i = "--data=" + arguments[i], i + 1
            invocation.data = argument.partition("=")[2]
            continue
        if not argument.startswith("-") or argument == "-":
            i -= 1
            break
        j = 1
        while j < len(argument):
            letter, attached = argument[j], argument[j + 1 :]
            j += 1
            if letter not in OPTIONS:
                raise UsageError(f"unknown option -{letter} (jsmail-sendmail --help lists the options)")
            kind = OPTIONS[letter][0]
            if letter == "h":
                if attached.isdigit():
                    break
                if not attached and i < len(arguments) and arguments[i].isdigit():
                    i += 1
                    break
                invocation.mode = "help"
                break
            if kind == FLAG:
                _flag(invocation, letter)
                continue
            if kind == VALUE and not attached:
                if i == len(arguments):
                    raise UsageError(f"option -{letter} needs a value")
                attached, i = arguments[i], i + 1
            _value(invocation, letter, attached)
            break
    invocation.recipients = arguments[i:]
    return invocation


def _flag(invocation: Invocation, letter: str) -> None:
    if letter == "t":
        invocation.fromHeaders = True
    elif letter == "i":
        invocation.dotEnds = False
    elif letter == "v":
        invocation.verbose = True
    else:
        invocation.ignored.append(f"-{letter}")


def _value(invocation: Invocation, letter: str, value: str) -> None:
    if letter in ("f", "r"):
        invocation.sender = value.strip().removeprefix("<").removesuffix(">") if value.strip() != "<>" else ""
    elif letter == "F":
        invocation.fullName = value
    elif letter == "C":
        invocation.config = value
    elif letter == "o" and value == "i":
        invocation.dotEnds = False
    elif letter == "b":
        if value in MODES:
            invocation.mode = MODES[value]
        elif value in NOT_HERE:
            raise UsageError(f"-b{value} is not supported: {NOT_HERE[value]}")
        else:
            raise UsageError(f"unknown mode -b{value} (jsmail-sendmail --help lists the modes)")
    elif letter == "q":
        invocation.mode = "flush"
    elif letter == "B":
        if value.upper() not in BODY_TYPES:
            raise UsageError(f"-B {value}: the body type is 7BIT or 8BITMIME")
        invocation.body = value.upper()
    elif letter == "N":
        notify = [word.strip().upper() for word in value.split(",")]
        if notify != ["NEVER"] and not (notify and set(notify) <= set(NOTIFY)):
            raise UsageError(f"-N {value}: give never, or some of success,failure,delay")
        invocation.notify = ",".join(notify)
    elif letter == "R":
        if value.upper() not in ("FULL", "HDRS"):
            raise UsageError(f"-R {value}: give full or hdrs")
        invocation.ret = value.upper()
    elif letter == "V":
        if not value or len(value) > 100:
            raise UsageError("-V: the envelope id is 1 to 100 characters")
        invocation.envid = encodeXtext(value)
    else:
        invocation.ignored.append(f"-{letter}{value}")

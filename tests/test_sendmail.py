"""jsmail-sendmail: the sendmail command line, handing mail to the gateway's local
submission socket (or, for the queue's owner with no gateway, to the queue)."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

import jsmail
from jsmail.qmail import sendmail
from jsmail.qmail.sendmail import EX_CONFIG, EX_NOPERM, EX_NOUSER, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, main
from jsmail.qmail.sendmailoptions import Invocation, UsageError, parse, usage
from jsmail.queue.admin import listQueue, openEntry
from jsmail.queue.store import MaildirQueue
from jsmail.smtp.params import encodeXtext
from jsmail.submit.settings import WELL_KNOWN_SOCKET
from tests.localgateway import LocalGateway
from tests.systemuser import throwawayUser

SRC = os.path.dirname(os.path.dirname(os.path.abspath(jsmail.__file__)))  # the jsmail under test, not an installed one
CRON = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "user"]  # Debian cron's exact call (cron's do_command.c)


def environment(**more: str) -> dict[str, str]:
    """This environment with the jsmail under test and no jsmail settings of the caller's."""
    base = {k: v for k, v in os.environ.items() if k not in ("JSMAIL_CONFIG", "JSMAIL_DATA")}
    return {**base, "PYTHONPATH": SRC, **more}


# -- the command line ----------------------------------------------------------------------

#: (arguments, what parse gives: Invocation fields that differ from the defaults)
ACCEPTED: list[tuple[list[str], dict]] = [
    (CRON, {"fullName": "CronDaemon", "dotEnds": False, "body": "8BITMIME", "recipients": ["user"],
            "ignored": ["-oem"]}),
    (["-t", "-i"], {"fromHeaders": True, "dotEnds": False}),  # PHP's sendmail_path
    (["-ti", "a@x"], {"fromHeaders": True, "dotEnds": False, "recipients": ["a@x"]}),
    (["-oi", "-oem", "a@x"], {"dotEnds": False, "ignored": ["-oem"], "recipients": ["a@x"]}),
    (["-odi", "-odb", "-odq", "a@x"], {"ignored": ["-odi", "-odb", "-odq"], "recipients": ["a@x"]}),
    (["-f", "me@x", "a@x"], {"sender": "me@x", "recipients": ["a@x"]}),
    (["-fme@x", "a@x"], {"sender": "me@x", "recipients": ["a@x"]}),
    (["-r", "<me@x>", "a@x"], {"sender": "me@x", "recipients": ["a@x"]}),
    (["-f", "<>", "a@x"], {"sender": "", "recipients": ["a@x"]}),
    (["-f", "", "a@x"], {"sender": "", "recipients": ["a@x"]}),
    (["-F", "Full Name", "a@x"], {"fullName": "Full Name", "recipients": ["a@x"]}),
    (["-B", "7bit", "a@x"], {"body": "7BIT", "recipients": ["a@x"]}),
    (["-N", "never", "a@x"], {"notify": "NEVER", "recipients": ["a@x"]}),
    (["-N", "success,delay", "a@x"], {"notify": "SUCCESS,DELAY", "recipients": ["a@x"]}),
    (["-R", "hdrs", "a@x"], {"ret": "HDRS", "recipients": ["a@x"]}),
    (["-V", "id+1 x", "a@x"], {"envid": "id+2B1+20x", "recipients": ["a@x"]}),
    (["-v", "a@x"], {"verbose": True, "recipients": ["a@x"]}),
    (["-O", "DeliveryMode=b", "a@x"], {"ignored": ["-ODeliveryMode=b"], "recipients": ["a@x"]}),
    (["-Ac", "a@x"], {"ignored": ["-Ac"], "recipients": ["a@x"]}),
    (["-Am", "a@x"], {"ignored": ["-Am"], "recipients": ["a@x"]}),
    (["-L", "label", "-X", "/dev/null", "-n", "-m", "-U", "-G", "a@x"],
     {"ignored": ["-Llabel", "-X/dev/null", "-n", "-m", "-U", "-G"], "recipients": ["a@x"]}),
    (["-d0.1", "a@x"], {"ignored": ["-d0.1"], "recipients": ["a@x"]}),
    (["-h", "17", "a@x"], {"recipients": ["a@x"]}),  # sendmail's hop count
    (["-bm", "a@x"], {"recipients": ["a@x"]}),
    (["-bs"], {"mode": "smtp"}),
    (["-bp"], {"mode": "list"}),
    (["-bi"], {"mode": "aliases"}),
    (["-q"], {"mode": "flush"}),
    (["-q1h"], {"mode": "flush"}),
    (["-h"], {"mode": "help"}),
    (["--help"], {"mode": "help"}),
    (["-C", "/etc/other.toml", "a@x"], {"config": "/etc/other.toml", "recipients": ["a@x"]}),
    (["--data", "/var/lib/jsmail", "a@x"], {"data": "/var/lib/jsmail", "recipients": ["a@x"]}),
    (["--", "-odd@x"], {"recipients": ["-odd@x"]}),
    (["a@x", "-t"], {"recipients": ["a@x", "-t"]}),  # options first, as getopt
]

#: (arguments, part of the error)
REFUSED: list[tuple[list[str], str]] = [
    (["-B", "BINARYMIME", "a@x"], "7BIT or 8BITMIME"),
    (["-N", "sometimes", "a@x"], "never, or some of success,failure,delay"),
    (["-R", "most", "a@x"], "full or hdrs"),
    (["-f"], "option -f needs a value"),
    (["-Z", "a@x"], "unknown option -Z"),
    (["-bv", "a@x"], "-bv is not supported"),
    (["-bd"], "-bd is not supported"),
    (["-bx"], "unknown mode -bx"),
]


class OptionTests(SynchronousTestCase):
    """Every usual sendmail invocation is understood (instant: the parser alone)."""

    def test_acceptedInvocations(self) -> None:
        for arguments, expected in ACCEPTED:
            with self.subTest(arguments=arguments):
                self.assertEqual(parse(arguments), Invocation(**expected))

    def test_refusedInvocations(self) -> None:
        for arguments, error in REFUSED:
            with self.subTest(arguments=arguments):
                with self.assertRaises(UsageError) as caught:
                    parse(arguments)
                self.assertIn(error, str(caught.exception))

    def test_dsnOptionsBecomeSMTPParameters(self) -> None:
        invocation = parse(["-B8BITMIME", "-R", "full", "-V", "q1", "-N", "failure", "a@x"])
        self.assertEqual((invocation.mailOptions, invocation.rcptOptions),
                         (["BODY=8BITMIME", "RET=FULL", "ENVID=q1"], ["NOTIFY=FAILURE"]))

    def test_xtext(self) -> None:
        self.assertEqual(encodeXtext("a+b=c d\u00e9"), "a+2Bb+3Dc+20d+C3+A9")

    def test_namesAsMailqAndNewaliases(self) -> None:
        self.assertEqual((parse([], "mailq").mode, parse([], "newaliases").mode), ("list", "aliases"))

    def test_helpPrintsUsageAndSucceeds(self) -> None:
        for arguments in (["-h"], ["--help"]):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(main(arguments, io.BytesIO(), out, err, {}), 0)
            self.assertEqual(out.getvalue(), usage())
            self.assertIn("-B X  body type, 7BIT or 8BITMIME", out.getvalue())

    def test_unknownOptionIsAUsageErrorWithItsName(self) -> None:
        err = io.StringIO()
        self.assertEqual(main(["-Z"], io.BytesIO(), io.StringIO(), err, {}), EX_USAGE)
        self.assertIn("unknown option -Z", err.getvalue())


# -- through the gateway's socket ---------------------------------------------------------


class SubmissionTests(LocalGateway, TestCase):
    """jsmail-sendmail hands mail to a running gateway over its socket."""

    timeout = 60

    def setUp(self) -> Any:
        return self.startGateway()

    @defer.inlineCallbacks
    def test_cronInvocationAccepted(self):  # type: ignore[no-untyped-def]
        """Debian cron's exact call: delivered to user@ the local domain, with cron's
        name in the From field it adds and the caller in the Received field."""
        code, out, err = yield self.sendmail(*CRON, stdin=b"Subject: Cron <root@host> true\n\nout\n.\nmore\n")
        self.assertEqual((code, err), (0, ""))
        [message] = yield self.delivered("user")
        login = pwd.getpwuid(os.getuid()).pw_name
        self.assertIn(f"Received: by mx.test (jsmail, from userid {os.getuid()} ({login}) pid {os.getpid()})".encode(),
                      message)
        self.assertIn(f"From: CronDaemon <{login}@localhost>\n".encode(), message)
        self.assertTrue(message.endswith(b"\nout\n.\nmore\n"), message)  # -i: the dot line is text
        self.assertRegex(message, rb"\nDate: .+\nMessage-ID: <\d{14}\.[0-9A-F]+\.jsmail@mx.test>\n")

    @defer.inlineCallbacks
    def test_invocationsReachTheQueueAsAsked(self):  # type: ignore[no-untyped-def]
        """Table: each invocation's envelope, as the gateway queued it."""
        self.gateway.delivery.scheduler.stopService()  # keep what is queued there to look at
        table = [
            (["-f", "<>", "a@localhost"], "", {"a@localhost": None}, {}),
            (["-N", "success,failure", "-R", "hdrs", "-V", "env 1", "b@localhost"], "root@localhost",
             {"b@localhost": "SUCCESS,FAILURE"}, {"RET": "HDRS", "ENVID": "env+201"}),
            (["-t", "-oi", "-B", "7BIT"], "root@localhost", {"c@localhost": None, "d@localhost": None},
             {"BODY": "7BIT"}),
        ]
        login = pwd.getpwuid(os.getuid()).pw_name
        for argv, sender, recipients, params in table:
            before = {e.queueId for e in listQueue(os.path.join(self.data, "queue"))}
            code, _, err = yield self.sendmail(*argv, stdin=b"To: c@localhost\nBcc: d\n\nx\n")
            self.assertEqual((argv, code, err), (argv, 0, ""))
            [entry] = [e for e in listQueue(os.path.join(self.data, "queue")) if e.queueId not in before]
            envelope = entry.envelope
            self.assertEqual(envelope.sender, sender.replace("root", login))
            self.assertEqual({r.address: r.params.get("NOTIFY") for r in envelope.recipients}, recipients)
            self.assertEqual({k: v for k, v in envelope.mailParams.items() if k in ("RET", "ENVID", "BODY")}, params)
            with openEntry(os.path.join(self.data, "queue"), entry.queueId) as f:
                self.assertEqual(b"\r\nBcc: d\r\n" in f.read(), "-t" not in argv)  # -t took its recipient

    @defer.inlineCallbacks
    def test_longLinesBareCarriageReturnsAndDotsArrive(self):  # type: ignore[no-untyped-def]
        """What programs write (a progress bar's bare CRs, a 5,000-octet line, a line
        starting with a dot) reaches the mailbox instead of being refused."""
        body = b"50%\r100%\n" + b"x" * 5000 + b"\n.hidden\n"
        code, _, err = yield self.sendmail("-i", "lines@localhost", stdin=b"Subject: lines\n\n" + body)
        self.assertEqual((code, err), (0, ""))
        [message] = yield self.delivered("lines")
        text = message.split(b"\n\n", 1)[1]
        self.assertEqual(text, b"50%\n100%\n" + (b"x" * 996 + b"\n") * 5 + b"x" * 20 + b"\n.hidden\n")

    @defer.inlineCallbacks
    def test_sendmailFromAnotherDirectoryIsDelivered(self):  # type: ignore[no-untyped-def]
        """Newcomer review 6a: run from any directory (a real process), the mail goes
        to the configured gateway and nothing is made where it runs."""
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        result = yield deferToThreadRun(
            [sys.executable, "-m", "jsmail.qmail.sendmail", "-t"], elsewhere,
            environment(JSMAIL_CONFIG=self.configPath), b"To: elsewhere@localhost\nSubject: lost?\n\nHello.\n")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        yield self.delivered("elsewhere")
        self.assertEqual(os.listdir(elsewhere), [])



class UnknownRecipientTests(LocalGateway, TestCase):
    timeout = 60

    def setUp(self) -> Any:
        return self.startGateway("[local]\ncatch_all = false\n")

    @defer.inlineCallbacks
    def test_unknownLocalRecipientIsRefusedNotBounced(self):  # type: ignore[no-untyped-def]
        """Without a catch-all, a typo in a local address is told to the program at
        once (550 5.1.1, exit 67), as on port 25, instead of a bounce later."""
        code, _, err = yield self.sendmail("nosuch@localhost")
        self.assertEqual(code, EX_NOUSER)
        self.assertIn("jsmail-sendmail: <nosuch@localhost>: 550 5.1.1 ", err)
        self.assertEqual(listQueue(os.path.join(self.data, "queue")), [])


class BatchTests(LocalGateway, TestCase):
    timeout = 60

    def setUp(self) -> Any:
        return self.startGateway(smtp="max_recipients = 2\n")

    @defer.inlineCallbacks
    def test_tooManyRecipientsGoInSeveralTransactions(self):  # type: ignore[no-untyped-def]
        """A list longer than the gateway takes at once (452 4.5.3) is sent in parts."""
        recipients = [f"r{i}@localhost" for i in range(5)]
        code, _, err = yield self.sendmail(*recipients)
        self.assertEqual((code, err), (0, ""))
        for recipient in recipients:
            yield self.delivered(recipient.partition("@")[0])


def deferToThreadRun(argv: list[str], cwd: str, env: dict[str, str], stdin: bytes) -> defer.Deferred:
    return deferToThread(subprocess.run, argv, cwd=cwd, env=env, input=stdin, capture_output=True, timeout=60)


# -- as another local user, a real process --------------------------------------------------


class OtherUserTests(LocalGateway, TestCase):
    """A user who is neither root nor the gateway's, in a process of their own: the
    uid the gateway sees is the kernel's, and the queue stays closed to them."""

    timeout = 120

    def setUp(self) -> Any:
        self.user = throwawayUser(self)
        run = tempfile.mkdtemp(prefix="jsmail-run-")  # as /run/jsmail: outside the (closed) data directory
        os.chmod(run, 0o755)
        self.addCleanup(shutil.rmtree, run, True)
        return self.startGateway(f'[submit]\nsocket = "{run}/jsmail/submit.sock"\n', reachable=True)

    def sendmailAs(self, *argv: str, stdin: bytes) -> defer.Deferred[subprocess.CompletedProcess[bytes]]:
        return deferToThread(self.user.run, ["python", "-m", "jsmail.qmail.sendmail", *argv],
                             environment(JSMAIL_CONFIG=self.configPath), stdin)

    @defer.inlineCallbacks
    def test_sendmailTAsAnotherUserDelivers(self):  # type: ignore[no-untyped-def]
        """Issue 11: `jsmail-sendmail -t` run as another unprivileged user delivers,
        with that user's uid in the Received field and their address as sender."""
        result = yield self.sendmailAs("-t", stdin=b"To: someone@localhost\nSubject: from cron\n\nhello\n")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        [message] = yield self.delivered("someone")
        name, uid = self.user.name, self.user.uid
        self.assertTrue(message.startswith(f"Return-Path: <{name}@localhost>\n".encode()), message)
        self.assertIn(f"\nReceived: by mx.test (jsmail, from userid {uid} ({name}) pid ".encode(), message)
        self.assertIn(f"\nFrom: {name}@localhost\n".encode(), message)
        self.assertTrue(message.endswith(b"\n\nhello\n"), message)

    @defer.inlineCallbacks
    def test_forgedEnvelopeSenderOfAnotherUser(self):  # type: ignore[no-untyped-def]
        """A user may not give another user's address (nor root's, nor one outside
        this host) as the envelope sender: not with -f, not in their own SMTP (-bs).
        Refused at MAIL (553 5.7.1, exit 77): nothing is queued."""
        name = self.user.name
        for sender in ("root", "root@localhost", "ceo@bank.example"):
            result = yield self.sendmailAs("-f", sender, "victim@localhost", stdin=b"Subject: forged\n\nx\n")
            address = sender if "@" in sender else f"{sender}@localhost"
            self.assertEqual(result.returncode, EX_NOPERM, result.stderr)
            self.assertIn(f"553 5.7.1 Sender <{address}> not allowed for user {name}".encode(), result.stderr)
        result = yield self.sendmailAs("-bs", stdin=b"EHLO x\r\nMAIL FROM:<root@localhost>\r\nQUIT\r\n")
        replies = [line for line in result.stdout.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(replies[2], f"553 5.7.1 Sender <root@localhost> not allowed for user {name}".encode())
        self.assertEqual((listQueue(os.path.join(self.data, "queue")), self.mailbox("victim")), ([], []))

    @defer.inlineCallbacks
    def test_cronMailOfAnotherUserIsDelivered(self):  # type: ignore[no-untyped-def]
        """cron runs sendmail as the job's user with its own From field ("root (Cron
        Daemon)"): delivered, the envelope sender and the trace still the user's."""
        result = yield self.sendmailAs(*CRON[:-1], "cronjob", stdin=(
            b"From: root (Cron Daemon)\nTo: cronjob\nSubject: Cron <job@host> backup\n\nbackup done\n"))
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        [message] = yield self.delivered("cronjob")
        name = self.user.name
        self.assertTrue(message.startswith(f"Return-Path: <{name}@localhost>\n".encode()), message)
        self.assertIn(f"(jsmail, from userid {self.user.uid} ({name}) pid ".encode(), message)
        self.assertIn(b"\nFrom: root (Cron Daemon)\n", message)

    @defer.inlineCallbacks
    def test_ownAddressAndNullSenderAreAllowed(self):  # type: ignore[no-untyped-def]
        for sender in (self.user.name, "<>"):
            result = yield self.sendmailAs("-f", sender, "own@localhost", stdin=b"Subject: mine\n\nx\n")
            self.assertEqual((result.returncode, result.stderr), (0, b""))
        messages = yield self.delivered("own", 2)
        self.assertEqual(sorted(m.split(b"\n", 1)[0] for m in messages),
                         [b"Return-Path: <>", f"Return-Path: <{self.user.name}@localhost>".encode()])

    @defer.inlineCallbacks
    def test_unreadableConfigurationLeadsToTheWellKnownSocket(self):  # type: ignore[no-untyped-def]
        """A configuration file with passwords (0600) tells another user nothing:
        they try the packaged socket, and are told when nothing listens there."""
        if os.path.exists(WELL_KNOWN_SOCKET):
            raise SkipTest(f"{WELL_KNOWN_SOCKET} exists on this host: a real gateway may take the test's mail")
        os.chmod(self.configPath, 0o600)
        result = yield self.sendmailAs("-t", stdin=b"To: someone@localhost\n\nx\n")
        self.assertEqual(result.returncode, EX_TEMPFAIL)
        self.assertIn(f"no jsmail gateway listens on {WELL_KNOWN_SOCKET}".encode(), result.stderr)

    @defer.inlineCallbacks
    def test_queueStaysClosedWhenNoGatewayListens(self):  # type: ignore[no-untyped-def]
        """With the gateway down, another user is told to try again (75) and queues
        nothing: only the queue's owner writes it directly."""
        yield self.gateway.stopService()
        result = yield self.sendmailAs("-t", stdin=b"To: someone@localhost\n\nx\n")
        self.assertEqual(result.returncode, EX_TEMPFAIL)
        self.assertIn(b"no jsmail gateway listens on", result.stderr)
        self.assertIn(b"the mail is not sent", result.stderr)
        self.assertEqual(listQueue(os.path.join(self.data, "queue")), [])


# -- when no gateway takes the mail -------------------------------------------------------


class NoGatewayTests(LocalGateway, SynchronousTestCase):
    """Never exit 0 for mail nobody will deliver."""

    def run_(self, *argv: str, environ: dict[str, str], stdin: bytes = b"Subject: s\n\nx\n") -> tuple[int, str]:
        err = io.StringIO()
        code = main(list(argv), io.BytesIO(stdin), io.StringIO(), err, environ)
        return code, err.getvalue()

    def test_noGatewayIsAnError(self) -> None:
        """A configuration whose gateway is not running, and whose queue this user
        does not own (here: no queue at all): 75, and nothing is queued anywhere."""
        self.writeConfig()
        code, err = self.run_("a@localhost", environ={"JSMAIL_CONFIG": self.configPath})
        self.assertEqual(code, EX_TEMPFAIL)
        self.assertIn(f"no jsmail gateway listens on {self.data}/submit/socket", err)
        self.assertIn("the mail is not sent", err)
        self.assertEqual(sorted(os.listdir(self.data)), ["jsmail.toml"])

    def test_noConfigurationIsAnError(self) -> None:
        """No file, no JSMAIL_CONFIG, no JSMAIL_DATA: 69, and no ./jsmail-data."""
        cwd = os.getcwd()
        self.patch(sendmail, "DEFAULT_CONFIG", "/nonexistent/jsmail.toml")
        code, err = self.run_("a@localhost", environ={})
        self.assertEqual(code, EX_UNAVAILABLE)
        self.assertIn("no jsmail gateway is configured here", err)
        self.assertFalse(os.path.exists(os.path.join(cwd, "jsmail-data")))

    def test_relativeDataDirectoryIsRefused(self) -> None:
        """A file whose data directory depends on the gateway's working directory
        cannot say where the socket is: 78, not a guess from this one's."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[server]\ndata = "jsmail-data"\n')
        code, err = self.run_("a@localhost", environ={"JSMAIL_CONFIG": path})
        self.assertEqual(code, EX_CONFIG)
        self.assertIn("gives no absolute [server] data", err)

    def test_localSubmissionTurnedOff(self) -> None:
        self.writeConfig('[submit]\nsocket = "none"\n')
        code, err = self.run_("a@localhost", environ={"JSMAIL_CONFIG": self.configPath})
        self.assertEqual(code, EX_UNAVAILABLE)
        self.assertIn("local submission is turned off", err)

    def test_queueOwnerWritesTheQueueWhenNoGatewayListens(self) -> None:
        """The jsmail user (whoever owns the queue) may still queue; the gateway takes
        it up when it starts.  Anyone else got 75 above."""
        self.writeConfig()
        MaildirQueue(os.path.join(self.data, "queue"), defer.maybeDeferred).close()
        code, err = self.run_("-f", "me@example.org", "a", environ={"JSMAIL_CONFIG": self.configPath})
        self.assertEqual((code, err), (0, ""))
        [entry] = listQueue(os.path.join(self.data, "queue"))
        self.assertEqual((entry.envelope.sender, [r.address for r in entry.envelope.recipients]),
                         ("me@example.org", ["a@localhost"]))
        with openEntry(os.path.join(self.data, "queue"), entry.queueId) as f:
            data = f.read()
        self.assertRegex(data, rb"^Received: \(jsmail-queue \d+ invoked by uid \d+\);\r\n\t.+\r\nSubject: s\r\n"
                               rb"From: me@example.org\r\nDate: .+\r\nMessage-ID: <.+>\r\n\r\nx\r\n$")

    def test_listingTheQueueNeedsItsOwner(self) -> None:
        self.writeConfig()
        code, err = self.run_("-bp", environ={"JSMAIL_CONFIG": self.configPath})
        self.assertEqual(code, EX_NOPERM)  # no queue here to read at all
        self.assertIn("only the queue's owner", err)


# -- sendmail -bs and the owner's fallback, as real processes ---------------------------------


class ProcessTests(TestCase):
    """The commands as programs: -bs, -bp, and the owner's direct queueing."""

    timeout = 60

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        MaildirQueue(os.path.join(self.data, "queue"), defer.maybeDeferred).close()  # a gateway ran here once

    def sendmail(self, *arguments: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jsmail.qmail.sendmail", "--data", self.data, *arguments],
                              input=stdin, capture_output=True, timeout=30, env=environment())

    def queued(self) -> list:
        entries = listQueue(os.path.join(self.data, "queue"))
        return [(e, openEntry(os.path.join(self.data, "queue"), e.queueId).read()) for e in entries]

    def test_t_takes_recipients_from_headers_and_drops_bcc(self) -> None:
        result = self.sendmail("-t", "-f", "me@example.org", stdin=(
            b"To: Bob <bob@example.org>, carol@example.net\nCc: dave@localhost\nBcc: eve@localhost,\n frank\n"
            b"Subject: hi\n\nbody\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        [(entry, data)] = self.queued()
        self.assertEqual(entry.envelope.sender, "me@example.org")
        self.assertEqual([r.address for r in entry.envelope.recipients],
                         ["bob@example.org", "carol@example.net", "dave@localhost", "eve@localhost",
                          "frank@localhost"])
        self.assertNotIn(b"eve@localhost", data)
        self.assertNotIn(b"frank", data)
        self.assertRegex(data, rb"\r\nSubject: hi\r\nFrom: me@example.org\r\nDate: .+\r\nMessage-ID: <\d{14}\."
                         + entry.queueId.encode() + rb"\.jsmail@.+>\r\n\r\nbody\r\n$")

    def test_arguments_and_full_name_and_dot(self) -> None:
        result = self.sendmail("-F", "Alice Example", "x@localhost", stdin=b"Subject: s\n\nline\n.\nnot sent\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        [(entry, data)] = self.queued()
        login = pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual([r.address for r in entry.envelope.recipients], ["x@localhost"])
        self.assertEqual(entry.envelope.sender, f"{login}@localhost")
        self.assertIn(f"From: Alice Example <{login}@localhost>".encode(), data)
        self.assertTrue(data.endswith(b"\r\n\r\nline\r\n"), data)

    def test_no_recipients_is_a_usage_error(self) -> None:
        result = self.sendmail(stdin=b"Subject: s\n\nx\n")
        self.assertEqual(result.returncode, 64)
        self.assertIn(b"no recipients", result.stderr)

    def test_bs_speaks_smtp_on_stdio(self) -> None:
        """No gateway listens, and this user owns the queue: jsmail's SMTP server in
        the process itself, its mail a local submission."""
        result = self.sendmail("-bs", stdin=(
            b"EHLO local\r\nMAIL FROM:<a@localhost>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            b"Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        codes = [line[:3] for line in result.stdout.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(codes, [b"220", b"250", b"250", b"250", b"354", b"250", b"221"])
        [(entry, data)] = self.queued()
        self.assertEqual([r.address for r in entry.envelope.recipients], ["b@example.org"])
        self.assertRegex(data, rb"^Received: from local [^\r]*(?:\r\n\t[^\r]*)*\r\nSubject: bs\r\nDate: .+\r\n"
                               rb"Message-ID: <\d{14}\." + entry.queueId.encode() + rb"\.jsmail@.+>\r\n\r\nhi\r\n$")

    def test_bp_lists_the_queue(self) -> None:
        self.sendmail("x@localhost", stdin=b"Subject: s\n\nx\n")
        result = self.sendmail("-bp", stdin=b"")
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"<x@localhost>", result.stdout)
        self.assertIn(b"-- 1 message(s) in the queue", result.stdout)

"""One delivery done as the mailbox's owner (qmail-local, as qmail-lspawn starts it).

The local spawner (:mod:`jsmail.local.spawner`) starts this process as root with the
user's uid, gid and groups as arguments; :func:`main` loads the code it needs and
then, before reading anything, sets the groups, the gid and the uid (real, effective
and saved) and checks that root cannot be taken back.  Only then does it read its
request (descriptor 3), look at the home (which must be the user's own), read the
``.qmail`` file and carry out its lines (:mod:`jsmail.local.follow`) with the message
on stdin: programs, mbox and Maildir lines all with the user's rights and nothing
more.  Forwards are not queued here (the user may not write the queue); they go back
to the delivery process in the result, one JSON object on stdout:

- ``{"instructions": false, "newSender": ...}``: no instructions, the default delivery;
- ``{"files": n, "programs": n, "forwards": [...], "outputs": [...], "newSender": ...}``;
- ``{"failed": {"code": ..., "enhanced": ..., "text": ..., "detail": ...}}``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any


def main(arguments: list[str]) -> None:
    """``arguments``: uid, gid and groups (comma-separated) to run as."""
    # Everything this process will run is loaded now, while it may still read
    # jsmail's own installation, which the user may not be able to.
    from twisted.internet import process, reactor, task, threads  # noqa: F401

    from jsmail._disk import syncFileSystem
    from jsmail._process import allowedEnvironment
    from jsmail.error import DeliveryError
    from jsmail.local import dotqmail, follow, program  # noqa: F401
    from jsmail.local.spawn import MAX_REQUEST, readRequest
    from jsmail.privileges import Identity, PrivilegeError, becomeUser

    uid, gid = int(arguments[0]), int(arguments[1])
    groups = tuple(int(g) for g in arguments[2].split(",") if g)
    try:
        becomeUser(Identity(str(uid), uid, gid, groups))
    except PrivilegeError as e:
        sys.stderr.write(f"{e}\n")
        os._exit(111)
    if uid == 0 or os.getuid() == 0:
        os._exit(111)
    os.umask(0o077)
    with os.fdopen(3, "rb") as f:
        request = readRequest(f.read(MAX_REQUEST))
    if request.uid != uid:
        sys.stderr.write(f"asked to deliver for uid {request.uid} as uid {uid}\n")
        os._exit(111)
    message = os.fdopen(0, "rb", closefd=False)

    def rewound() -> Any:
        message.seek(0)
        return message

    def sync(path: str) -> Any:
        return threads.deferToThread(syncFileSystem, path)

    def run(theReactor: Any) -> Any:
        d = _deliver(theReactor, request, rewound, sync, allowedEnvironment())
        d.addErrback(lambda f: f.trap(DeliveryError) and _failed(f.value))
        return d.addCallback(lambda result: sys.stdout.write(json.dumps(result)))

    task.react(run)


def _failed(error: Any) -> dict[str, Any]:
    return {"failed": {"code": error.reply.code, "enhanced": error.reply.enhanced, "text": error.reply.text,
                       "detail": error.detail}}


def _deliver(reactor: Any, request: Any, message: Any, sync: Any, base: dict[str, str]) -> Any:
    from twisted.internet import defer, threads

    from jsmail import reply
    from jsmail.error import DeliveryError
    from jsmail.local.dotqmail import Mailbox, commandEnvironment, newSender, readInstructions
    from jsmail.local.follow import Where, follow, placeAnywhere

    home = request.home
    try:
        st = os.stat(home)
    except OSError as e:
        return defer.fail(DeliveryError(reply.DELIVERY_ERROR, False, f"unable to switch to {home}: {e.strerror}"))
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return defer.fail(DeliveryError(reply.INSTRUCTIONS_UNSAFE, False,
                                        f"{home} is not a directory of uid {os.getuid()}"))
    os.chdir(home)
    mailbox = Mailbox(request.local, request.domain, request.mailboxUser, home, request.dash, request.ext,
                      request.alias, owner=os.getuid())
    lines = tuple(line.encode("utf-8") for line in (request.ufline, request.rpline, request.dtline))

    @defer.inlineCallbacks
    def deliver() -> Any:
        found = yield threads.deferToThread(readInstructions, mailbox, request.separators,
                                            frozenset({0, os.getuid()}))
        sender = yield threads.deferToThread(newSender, mailbox, request.sender)
        if found.instructions is None:
            return {"instructions": False, "newSender": sender}
        where = Where(reactor, threads.deferToThread, request.hostname, home, request.timeout, message,
                      placeAnywhere(home), sync,
                      lambda: commandEnvironment(mailbox, request.sender, sender, request.recipient, found.default,
                                                 request.separators, lines, base),
                      deadline=reactor.seconds() + request.timeout)
        followed = yield follow(found.instructions, lines[1] + lines[2], lines[0], where)
        return {"files": followed.files, "programs": followed.programs, "forwards": list(followed.forwards),
                "outputs": list(followed.outputs), "newSender": sender}

    return deliver()

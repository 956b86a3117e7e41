"""Every provider of every jsmail interface keeps its promise: ``verifyObject`` on an
instance of each, and a check that no provider in the package is missing from the list
(so a new sink, agent or check is verified the day it is written)."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import Interface
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

import jsmail
from jsmail import interfaces
from jsmail.auth import IMailUser, MailUser
from jsmail.envelope import Envelope, Recipient
from jsmail.local.agent import LocalDelivery
from jsmail.local.directory import RecipientDirectory
from jsmail.local.session import SessionDelivery
from jsmail.local.settings import LocalSettings
from jsmail.policy.access import AccessLists
from jsmail.policy.base import MessagePolicy, Policy
from jsmail.policy.dnsbl import DNSBL
from jsmail.policy.emailauth import ARCCheck, ARCSeal, DKIMCheck, DKIMSign, DMARCCheck, SPFCheck
from jsmail.policy.plugin import IPolicyPlugin, PolicyPlugin
from jsmail.policy.programs import ContentFilter, Program, RecipientCheck
from jsmail.policy.recipients import KnownRecipients
from jsmail.policy.relay import BadMailFrom, RelayControl, TrustedClient
from jsmail.qmail.queuesink import ProgramQueue
from jsmail.qmail.tcpserver import RBLRefusal
from jsmail.queue.funnel import Funnel, Owed
from jsmail.queue.memory import MemoryQueue
from jsmail.queue.store import MaildirQueue
from jsmail.remote.agent import RemoteDelivery
from jsmail.remote.settings import RemoteSettings
from jsmail.route import NoRemoteDelivery, Router
from jsmail.smtp.session import Session
from jsmail.submit.listener import LocalUser
from jsmail.testing import RecordingAgent, runNow

ENVELOPE = Envelope("a@b.example", (Recipient("x@localhost"),))
COMPLETE = Owed(complete=True, hostname="mx.test")
INTERFACES = [v for v in vars(interfaces).values() if isinstance(v, InterfaceClass) and v is not Interface] + [
    IMailUser, IPolicyPlugin]


def _inSession(test: TestCase, queue: MaildirQueue, clock: Clock, known: bool = True) -> SessionDelivery:
    """A sink for delivery during the session that knows ENVELOPE's recipient's plan
    (else its first message for that recipient is queued)."""
    root = test.mktemp()
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, "localhost", "x", sub))
    local = LocalDelivery(root, runNow, "mx.test", reactor=clock)
    sink = SessionDelivery(queue, local, Router(["localhost"], local), clock)
    if known:
        sink.newMessage(ENVELOPE).abort()  # looks at the plan, at once with runNow
    return sink


def _builders(test: TestCase) -> dict[type, Callable[[], Any]]:
    """One way to make an instance of each provider (by class)."""
    clock = Clock()
    queue = MemoryQueue()
    maildir = MaildirQueue(test.mktemp(), runNow, spares=0)
    test.addCleanup(maildir.close)
    program = Program(clock, "true", 1.0)
    return {
        MemoryQueue: lambda: queue,
        MaildirQueue: lambda: maildir,
        Funnel: lambda: Funnel(queue, lambda queueId, envelope: None),
        type(Funnel(queue, lambda *a: None).owing(COMPLETE)): lambda: Funnel(queue, lambda *a: None).owing(COMPLETE),
        type(Funnel(queue, lambda *a: None).newMessage(ENVELOPE, COMPLETE)): lambda: Funnel(
            queue, lambda *a: None).newMessage(ENVELOPE, COMPLETE),
        ProgramQueue: lambda: ProgramQueue("/bin/true", clock),
        type(queue.newMessage(ENVELOPE)): lambda: queue.newMessage(ENVELOPE),
        type(maildir.newMessage(ENVELOPE)): lambda: maildir.newMessage(ENVELOPE),
        type(Funnel(queue, lambda *a: None).newMessage(ENVELOPE)): lambda: Funnel(queue, lambda *a: None).newMessage(
            ENVELOPE),
        type(ProgramQueue("/bin/true", clock).newMessage(ENVELOPE)): lambda: ProgramQueue(
            "/bin/true", clock).newMessage(ENVELOPE),
        LocalDelivery: lambda: LocalDelivery(test.mktemp(), runNow, "mx.test", reactor=clock),
        SessionDelivery: lambda: _inSession(test, maildir, clock),
        type(_inSession(test, maildir, clock).newMessage(ENVELOPE)): lambda: _inSession(test, maildir, clock).newMessage(
            ENVELOPE),
        type(_inSession(test, maildir, clock, known=False).newMessage(ENVELOPE)): lambda: _inSession(
            test, maildir, clock, known=False).newMessage(ENVELOPE),
        RemoteDelivery: lambda: RemoteDelivery(clock, runNow, object(), RemoteSettings()),
        NoRemoteDelivery: NoRemoteDelivery,
        RecordingAgent: RecordingAgent,
        Router: lambda: Router(["localhost"], RecordingAgent()),
        Policy: Policy,
        MessagePolicy: MessagePolicy,
        RelayControl: lambda: RelayControl(lambda domain: True),
        BadMailFrom: lambda: BadMailFrom(["@bad.example"]),
        TrustedClient: TrustedClient,
        KnownRecipients: lambda: KnownRecipients(RecipientDirectory(test.mktemp(), LocalSettings()), runNow),
        RBLRefusal: lambda: RBLRefusal("-listed"),
        AccessLists: lambda: AccessLists({}),
        DNSBL: lambda: DNSBL(object(), ["bl.test"]),
        SPFCheck: lambda: SPFCheck(object(), "mx.test", {}),  # type: ignore[arg-type]
        DKIMCheck: lambda: DKIMCheck(object()),
        ARCCheck: lambda: ARCCheck(object()),  # type: ignore[arg-type]
        DMARCCheck: lambda: DMARCCheck(object()),
        DKIMSign: lambda: DKIMSign(object()),  # type: ignore[arg-type]
        ARCSeal: lambda: ARCSeal(object(), "mx.test"),  # type: ignore[arg-type]
        RecipientCheck: lambda: RecipientCheck(program),
        ContentFilter: lambda: ContentFilter(program),
        Session: lambda: Session("192.0.2.1"),
        MailUser: lambda: MailUser("u"),
        LocalUser: lambda: LocalUser("u", 1000),
        PolicyPlugin: lambda: PolicyPlugin("x", "a plugin", lambda options, context: Policy()),
    }


def _providers() -> set[type]:
    """Every class in the package that declares an interface of jsmail's."""
    found = set()
    for info in pkgutil.walk_packages(jsmail.__path__, "jsmail."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__
                    and any(interface.implementedBy(cls) for interface in INTERFACES)):
                found.add(cls)
    return found


class InterfaceTests(TestCase):
    def test_everyProviderKeepsItsInterfaces(self) -> None:
        """verifyObject passes for an instance of every provider, for every interface
        it declares."""
        for cls, build in _builders(self).items():
            instance = build()
            declared = [i for i in INTERFACES if i.providedBy(instance)]
            self.assertTrue(declared, cls)
            for interface in declared:
                self.assertTrue(verifyObject(interface, instance), f"{cls.__name__} and {interface.__name__}")

    def test_noProviderIsLeftOut(self) -> None:
        """Each class of the package that declares a jsmail interface is verified above."""
        self.assertEqual({c.__qualname__ for c in _providers() - set(_builders(self))}, set())

"""Opening ESMTP client sessions: a connection to one peer made ready for mail, with the
one retry in plaintext after a failed opportunistic TLS handshake written once for
remote delivery and for :func:`sendmail` (embedders' one message, without a queue)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsmail import reply
from jsmail._threads import RunInThread, reactorThreads
from jsmail.error import DeliveryError
from jsmail.interfaces import DeliveryResult
from jsmail.smtp.client import ClientSettings, ESMTPClient
from jsmail.smtp.commands import CHUNK, OutgoingMessage, bareLineEnding

__all__ = ["connectTo", "readySession", "sendmail"]

_log = Logger()


def connectTo(reactor: Any, host: str, port: int, settings: ClientSettings) -> Deferred[ESMTPClient]:
    """A new session with ``host`` on ``port``, inside TLS from the first byte for
    ``implicit``.  An IPv4 or IPv6 address is connected to as it is; a name through
    :class:`HostnameEndpoint`, which tries its addresses in turn.  Fails with
    :class:`DeliveryError` when no connection is made."""
    endpoint: Any
    if isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=settings.connectTimeout)
    elif isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=settings.connectTimeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=settings.connectTimeout)
    if settings.tls == "implicit":
        endpoint = wrapClientTLS(settings.tlsOptions(), endpoint)

    def refused(failure: Failure) -> None:
        raise DeliveryError(reply.CANNOT_CONNECT, False, f"cannot connect to {host} port {port}: "
                                                         f"{failure.getErrorMessage()}")

    return connectProtocol(endpoint, ESMTPClient(settings, reactor)).addErrback(refused)


async def readySession(connect: Callable[[ClientSettings], Deferred[ESMTPClient]],
                       settings: ClientSettings) -> ESMTPClient:
    """A session set up with ``connect(settings)``; with opportunistic TLS and no
    credentials, a failed TLS handshake is followed by one more try in plaintext
    (RFC 7435; never with TLSA records, whose sessions never report ``tlsFailed``, nor
    with credentials, which go only over TLS).  Fails with :class:`DeliveryError`."""
    client = await connect(settings)
    try:
        await client.ready
        return client
    except DeliveryError as e:
        if not (client.tlsFailed and settings.tls == "opportunistic" and settings.username is None):
            raise
        _log.warn("TLS with {peer} failed ({error}); trying again without TLS", peer=client.peer, error=str(e))
    client = await connect(replace(settings, tls="none", tlsHostname=None, tlsa=()))
    await client.ready
    return client


def sendmail(reactor: Any, host: str, port: int, message: OutgoingMessage,
             settings: ClientSettings = ClientSettings(),
             runInThread: RunInThread | None = None) -> Deferred[list[DeliveryResult]]:
    """Connect to ``host`` (a name or an IPv4 or IPv6 address), deliver ``message``, say
    QUIT.  ``reactor`` provides TCP and time.  Never fails: not reaching the peer is a
    temporary result for every recipient (see :func:`readySession` for TLS).

    When ``message.eightBit`` is not given, the message is read with ``runInThread``
    (the reactor's thread pool by default), never on the reactor thread: for 8-bit
    octets, and for line ends other than CR LF, which are refused at once, before
    connecting (a peer would refuse the message after DATA, or pass it on damaged);
    :meth:`OutgoingMessage.fromBytes` converts them."""
    return Deferred.fromCoroutine(_sendmail(reactor, host, port, message, settings,
                                            runInThread or reactorThreads(reactor)))


def _measure(message: OutgoingMessage) -> tuple[bool, bool]:
    """Whether the message has octets above 127, and whether it has a CR or LF outside
    a CR LF: one read, in chunks (blocking)."""
    eightBit, tail = False, b""
    with message.open() as f:
        while chunk := f.read(CHUNK):
            eightBit = eightBit or not chunk.isascii()
            window = tail + chunk
            held = window.endswith(b"\r")  # its LF may start the next chunk
            if bareLineEnding(window[:-1] if held else window):
                return eightBit, True
            tail = window[-2:]
    return eightBit, tail.endswith(b"\r")


async def _sendmail(reactor: Any, host: str, port: int, message: OutgoingMessage,
                    settings: ClientSettings, runInThread: RunInThread) -> list[DeliveryResult]:
    if message.eightBit is None:
        try:
            eightBit, bare = await runInThread(_measure, message)
        except OSError as e:
            return DeliveryResult.forAll(message.recipients, DeliveryError(reply.CANNOT_READ_MESSAGE, False, str(e)))
        if bare:
            detail = "lines must end with CR LF; OutgoingMessage.fromBytes converts them"
            return DeliveryResult.forAll(message.recipients, DeliveryError(reply.BARE_LINE_ENDING, True, detail))
        message = replace(message, eightBit=eightBit)
    try:
        client = await readySession(lambda s: connectTo(reactor, host, port, s), settings)
    except DeliveryError as e:
        return DeliveryResult.forAll(message.recipients, e)
    results = await client.send(message)
    await client.quit()
    return results

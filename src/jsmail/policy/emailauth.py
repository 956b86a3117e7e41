"""SPF, DKIM, DMARC and ARC as policy checks, and DKIM signing and ARC sealing as
modifiers (maddy's split: verifying is a check, signing is a modifier).

Each check records its result for the ones after it in ``session.transactionNotes``
("spf", "dkim", "arc") and contributes an Authentication-Results entry (RFC 8601);
smtpd joins the entries into one field.  DMARC reads the SPF and DKIM results, so it
comes after them in a listener's list.  Mail from an authenticated user is not
checked: its sender is vouched for by AUTH, not by DNS.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Any, Mapping, Sequence

import authres
import authres.arc
import authres.dmarc
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jsmail import reply
from jsmail._threads import RunInThread, runNow
from jsmail.address import Address
from jsmail.headers import fields as headerFields
from jsmail.headers import fromDomain, hasName, headerOf, mailboxes, splitHeader
from jsmail.interfaces import IModifier
from jsmail.policy.arc import ARCSealer, ARCVerifier
from jsmail.policy.authresults import claimsAuthservId
from jsmail.policy.base import MessagePolicy, Policy
from jsmail.policy.dkim import DKIMResult, DKIMSigner, SigningKey, keyRecord, writeNewKey, zoneEntry
from jsmail.policy.dmarc import Discovery, DMARCTemporaryError, evaluate
from jsmail.policy.plugin import Options, PolicyContext
from jsmail.policy.spf import SPFChecker, SPFResult
from jsmail.policy.verdict import Verdict

_log = Logger()


def _isTrusted(session: Any) -> bool:
    return session.user is not None


class SPFCheck(Policy):
    """SPF (RFC 7208) at MAIL FROM, or of the HELO name for the null sender (section
    2.4).  Adds Received-SPF (section 9.1).  ``actions`` maps a result (fail, softfail,
    temperror, permerror) to "reject" (or "tempfail" for temperror) or "tag"."""

    def __init__(self, checker: SPFChecker, receiver: str, actions: Mapping[str, str]) -> None:
        self.checker, self.receiver, self.actions = checker, receiver, dict(actions)

    def checkSender(self, session: Any, address: Address, params: dict) -> Any:
        if _isTrusted(session):
            return None
        d = self.checker.check(session.clientAddress, str(address), session.helo or "")
        return d.addCallback(self._verdict, session)

    def _verdict(self, spf: SPFResult, session: Any) -> Verdict:
        session.transactionNotes["spf"] = spf
        if spf.identity == "helo":
            entry = authres.SPFAuthenticationResult(result=spf.result, smtp_helo=spf.helo)
        else:
            entry = authres.SPFAuthenticationResult(result=spf.result, smtp_mailfrom=spf.sender)
        action = self.actions.get(spf.result, "tag")
        text = spf.explanation or spf.result
        if action == "reject" and spf.result in ("fail", "softfail"):
            return Verdict.reject(reply.SPF_FAILED.format(text), f"SPF {spf.result} for {spf.domain}")
        if action == "reject" and spf.result == "permerror":
            return Verdict.reject(reply.SPF_PERMERROR.format(text), f"SPF permerror for {spf.domain}")
        if action == "tempfail" and spf.result == "temperror":
            return Verdict.tempfail(reply.SPF_TEMPORARY.format(text), f"SPF temperror for {spf.domain}")
        return Verdict.accept([spf.receivedSPF(self.receiver)], [entry])


def _dkimEntry(result: DKIMResult) -> Any:
    entry = authres.DKIMAuthenticationResult(result=result.result, header_d=result.domain or None,
                                             header_i=result.identity or None, header_s=result.selector or None,
                                             header_a=result.algorithm or None, reason=result.reason or None)
    if result.headerB:
        entry.properties.append(authres.core.AuthenticationResultProperty("header", "b", result.headerB))
    return entry


class DKIMCheck(MessagePolicy):
    """DKIM (RFC 6376) verification of every signature (up to a limit)."""

    def __init__(self, verifier: Any) -> None:
        self.verifier = verifier

    def checkMessage(self, session: Any, content: Any) -> Any:
        if _isTrusted(session):
            return None
        return self.verifier.verifyChunks(content.chunks).addCallback(self._verdict, session)

    def _verdict(self, results: list[DKIMResult], session: Any) -> Verdict:
        session.transactionNotes["dkim"] = results
        if not results:
            return Verdict.accept(results=[authres.DKIMAuthenticationResult(result="none")])
        return Verdict.accept(results=[_dkimEntry(r) for r in results])


class ARCCheck(MessagePolicy):
    """ARC (RFC 8617) chain validation on arrival."""

    def __init__(self, verifier: ARCVerifier) -> None:
        self.verifier = verifier

    def checkMessage(self, session: Any, content: Any) -> Any:
        if _isTrusted(session):
            return None
        return self.verifier.verifyChunks(content.chunks).addCallback(self._verdict, session)

    def _verdict(self, arc: Any, session: Any) -> Verdict:
        session.transactionNotes["arc"] = arc
        entry = authres.arc.ARCAuthenticationResult(result=arc.result, reason=arc.reason or None,
                                                    smtp_remote_ip=session.clientAddress)
        return Verdict.accept(results=[entry])


class DMARCCheck(MessagePolicy):
    """DMARC (RFC 9989) from the SPF and DKIM results before it.  ``onReject`` and
    ``onQuarantine`` say what a failing message under that policy gets: "reject" (550
    5.7.1) or "tag" (the Authentication-Results entry only)."""

    def __init__(self, resolver: Any, onReject: str = "reject", onQuarantine: str = "tag",
                 timeout: float = 5.0, runInThread: RunInThread = runNow) -> None:
        self.resolver, self.onReject, self.onQuarantine, self.timeout = resolver, onReject, onQuarantine, timeout
        self._runInThread = runInThread

    def checkMessage(self, session: Any, content: Any) -> Any:
        if _isTrusted(session):
            return None
        # Only the header section is read (at most 256 KiB), in a thread: the spool
        # may be on disk.
        d = self._runInThread(lambda: splitHeader(iter(content.chunks())).header)
        return d.addCallback(self._evaluate, session).addCallback(self._verdict)

    @defer.inlineCallbacks
    def _evaluate(self, message: bytes, session: Any) -> Any:
        author = fromDomain(message)
        if author is None:
            return None, "permerror", "not exactly one usable author address in From"
        spf = session.transactionNotes.get("spf")
        spfDomain = spf.domain if spf is not None and spf.identity == "mailfrom" else ""
        # rsa-sha1 is never a pass here, and never counts (RFC 8301 section 3.1)
        dkim = [r.domain for r in session.transactionNotes.get("dkim", ())
                if r.result == "pass" and not r.algorithm.lower().endswith("-sha1")]
        try:
            evaluation = yield evaluate(Discovery(self.resolver, self.timeout), author,
                                        spf.result if spf else "none", spfDomain, dkim)
        except DMARCTemporaryError as e:
            return author, "temperror", str(e)
        return author, evaluation, ""

    def _verdict(self, outcome: tuple[Any, Any, str]) -> Verdict:
        author, evaluation, reason = outcome
        if isinstance(evaluation, str):  # permerror or temperror
            entry = authres.dmarc.DMARCAuthenticationResult(result=evaluation, header_from=author, reason=reason)
            return Verdict.accept(results=[entry])
        entry = authres.dmarc.DMARCAuthenticationResult(result=evaluation.result, header_from=author,
                                                        policy=evaluation.policy)
        if evaluation.result == "fail" and evaluation.applied:
            action = {"reject": self.onReject, "quarantine": self.onQuarantine}.get(evaluation.policy, "tag")
            if action == "reject":
                return Verdict.reject(reply.DMARC_REJECTED.format(author),
                                      f"DMARC {evaluation.policy} for {author}: {evaluation.reason}")
        return Verdict.accept(results=[entry])


@implementer(IModifier)
class DKIMSign:
    """Signs mail whose From domain has a key (DKIM, RFC 6376 section 5): mail from
    authenticated users, or with ``everything`` all mail on the listener."""

    def __init__(self, signer: DKIMSigner, everything: bool = False) -> None:
        self.signer, self.everything = signer, everything

    def modify(self, session: Any, message: bytes) -> Any:
        user = session.user
        if user is None and not self.everything:
            return []
        if user is not None and not _authorsAllowed(user, message):
            return []  # smtpd refuses such mail first; this keeps the key from ever vouching for it
        domain = fromDomain(message)  # the one From domain, as DMARC finds it
        if domain is None or self.signer.keyFor(domain) is None:
            return []
        return self.signer.sign(message, domain).addCallback(lambda field: [field.decode("ascii").rstrip("\r\n")])


def _authorsAllowed(user: Any, message: bytes) -> bool:
    """Whether every From and Sender address is one ``user`` may send as."""
    for field in headerFields(headerOf(message)):
        if hasName(field, "from") or hasName(field, "sender"):
            found = mailboxes(field)
            if found is None or not all(user.maySendAs(a.strip()) for a in found):
                return False
    return True


@implementer(IModifier)
class ARCSeal:
    """Adds this host's ARC set (RFC 8617 section 5.1) over the Authentication-Results
    smtpd put on top, so that a forwarded message's authentication survives."""

    def __init__(self, sealer: ARCSealer, authservId: str) -> None:
        self.sealer, self.authservId = sealer, authservId

    def modify(self, session: Any, message: bytes) -> Any:
        header = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        ours = [f for f in headerFields(header) if claimsAuthservId(f, self.authservId)]
        if not ours or b"arc=" not in ours[0]:
            return []  # nothing verified here to seal: the arc check must run on this listener
        return self.sealer.seal(message, ours[0]).addCallback(
            lambda fields: [f.decode("ascii") for f in headerFields(fields)])


# -- plugin factories (see jsmail.plugins.jsmail_builtin) ----------------------------


def buildSPF(options: Mapping[str, Any], context: PolicyContext) -> SPFCheck:
    o = Options(options)
    actions = {
        "fail": o.choice("fail", "reject", "reject", "tag"),
        "softfail": o.choice("softfail", "tag", "reject", "tag"),
        "permerror": o.choice("permerror", "tag", "reject", "tag"),
        "temperror": o.choice("temperror", "tag", "tempfail", "tag"),
    }
    checker = SPFChecker(context.reactor, context.resolver, o.get("timeout", 20.0))
    o.done()
    return SPFCheck(checker, context.hostname, actions)


def buildDKIM(options: Mapping[str, Any], context: PolicyContext) -> DKIMCheck:
    from jsmail.policy.dkim import DKIMVerifier

    o = Options(options)
    verifier = DKIMVerifier(context.reactor, context.resolver, o.get("timeout", 10.0),
                            o.get("max_signatures", 5), runInThread=context.runInThread,
                            rsaSha1=o.choice("rsa_sha1", "fail", "fail", "neutral"))
    o.done()
    return DKIMCheck(verifier)


def buildARC(options: Mapping[str, Any], context: PolicyContext) -> ARCCheck:
    o = Options(options)
    verifier = ARCVerifier(context.reactor, context.resolver, o.get("timeout", 10.0), context.runInThread)
    o.done()
    return ARCCheck(verifier)


def buildDMARC(options: Mapping[str, Any], context: PolicyContext) -> DMARCCheck:
    o = Options(options)
    check = DMARCCheck(context.resolver, o.choice("reject", "reject", "reject", "tag"),
                       o.choice("quarantine", "tag", "reject", "tag"), o.get("timeout", 5.0), context.runInThread)
    o.done()
    return check


def _signingKeys(value: Any, context: PolicyContext) -> Sequence[SigningKey]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of {domain, selector, key} tables")
    keys = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"domain", "selector", "key"}:
            raise ValueError(f"a key is a table of domain, selector and key (a file); got {entry!r}")
        path = _path(context, entry["key"])
        if not os.path.exists(path) and context.checkOnly:
            keys.append(_keyToBeMade(path, entry["domain"], entry["selector"]))
            continue
        if not os.path.exists(path):
            _makeKey(path, entry["domain"], entry["selector"])
        keys.append(SigningKey.load(entry["domain"], entry["selector"], path))
    return keys


def _keyToBeMade(path: str, domain: str, selector: str) -> SigningKey:
    """For ``--check-config``: whether the key could be made at start, and a throwaway
    key in its place (made outside the data directory, which is left as it is)."""
    from jsmail.ops.preflight import writableDirectory

    problem = writableDirectory(os.path.dirname(path))
    if problem is not None:
        raise ValueError(f"cannot make the DKIM key {path}: {problem}")
    with tempfile.TemporaryDirectory() as scratch:
        stand = os.path.join(scratch, "key")
        writeNewKey(stand, "ed25519")
        return replace(SigningKey.load(domain, selector, stand), keyFile=path)


def _makeKey(path: str, domain: str, selector: str) -> None:
    """A key named in the configuration but not there yet is made on first start (as
    the self-signed TLS certificate is), and the log says what to publish."""
    try:
        key = writeNewKey(path)
    except OSError as e:
        raise ValueError(f"cannot make the DKIM key {path}: {e.strerror}") from None
    _log.warn("Made a new DKIM key {path} for {domain}; publish it in DNS before relying on it: {record}",
              path=path, domain=domain, record=zoneEntry(selector, domain, keyRecord(key)))


def _path(context: PolicyContext, path: str) -> str:
    """A file named in a plugin's options: relative names are under the data directory."""
    return os.path.join(context.dataDir, path)


def buildDKIMSign(options: Mapping[str, Any], context: PolicyContext) -> DKIMSign:
    o = Options(options)
    keys = o.get("keys", None, lambda v: _signingKeys(v, context))
    if keys is None:
        raise ValueError("keys: list the signing keys, e.g. [{domain = ..., selector = ..., key = ...}]")
    everything = o.choice("sign", "authenticated", "authenticated", "all") == "all"
    o.done()
    return DKIMSign(DKIMSigner(context.reactor, keys, runInThread=context.runInThread), everything)


def buildARCSeal(options: Mapping[str, Any], context: PolicyContext) -> ARCSeal:
    o = Options(options)
    [key] = o.get("key", None, lambda v: _signingKeys([v], context)) or [None]
    if key is None:
        raise ValueError("key: give the sealing key as {domain = ..., selector = ..., key = ...}")
    o.done()
    return ARCSeal(ARCSealer(context.reactor, key, context.authservId), context.authservId)

"""TLS for the SMTP listeners: certificates, a modern server context, reload on SIGHUP.

The context allows TLS 1.2 and 1.3 only, with forward-secret AEAD ciphers
(RFC 7525 / BCP 195 recommendations, as RFC 8314 asks of mail).  :class:`ServerTLS`
holds the current context; sessions ask it for the context when they start TLS, so a
reload (new certificate on SIGHUP) applies to new handshakes without dropping sessions.

The embedded default has no certificate configured: :func:`ensureSelfSigned` makes one
for the host name under the data directory on first start, so STARTTLS works at once.

The ESMTP client's options are here too: :func:`clientTLS`.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from jsmail._disk import makeDirectories, openNew

_log = Logger()

# TLS 1.2 AEAD suites with forward secrecy; TLS 1.3 suites are all acceptable.
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256"
)


class TLSError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def loadServerContext(certificatePath: str, keyPath: str) -> ssl.CertificateOptions:
    """A server context from PEM files: the certificate file may hold a chain.  The pair
    and the chain are checked here, not at the first handshake: a key that belongs to
    another certificate, or a chain out of order, would make every handshake fail."""
    try:
        with open(certificatePath, "rb") as f:
            chainPEM = f.read()
        with open(keyPath, "rb") as f:
            keyPEM = f.read()
    except OSError as e:
        raise TLSError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(chainPEM)
    except ValueError as e:
        raise TLSError(f"{certificatePath}: no PEM certificate: {e}") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPEM)
    except crypto.Error as e:
        raise TLSError(f"{keyPath}: not a PEM private key: {e}") from None
    publicKey = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    private = key.to_cryptography_key()
    if not hasattr(private, "public_key"):
        raise TLSError(f"{keyPath}: holds a public key, not a private one")
    if (private.public_key().public_bytes(*publicKey)
            != certificates[0].public_key().public_bytes(*publicKey)):
        raise TLSError(f"the key in {keyPath} is not the key of the certificate in {certificatePath}")
    for issued, issuer in zip(certificates, certificates[1:], strict=False):
        if issued.issuer != issuer.subject:
            raise TLSError(f"{certificatePath}: the chain is out of order: {issued.subject.rfc4514_string()} "
                           f"is not issued by the next certificate, {issuer.subject.rfc4514_string()}")
    expires = certificates[0].not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        _log.warn("The TLS certificate in {path} expired on {date}", path=certificatePath, date=expires.isoformat())
    leaf = crypto.X509.from_cryptography(certificates[0])
    chain = [crypto.X509.from_cryptography(c) for c in certificates[1:]]
    try:
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=leaf,
            extraCertChain=chain,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        )
        options.getContext()  # OpenSSL's own checks, now rather than at the first handshake
    except (SSL.Error, ValueError) as e:
        raise TLSError(f"{certificatePath} and {keyPath} do not go together: {e}") from None
    return options


def ensureSelfSigned(directory: str, hostname: str) -> tuple[str, str]:
    """Make a self-signed certificate for ``hostname`` in ``directory`` unless one is
    there; return the (certificate, key) paths.

    Under tcpserver every connection is a process of its own, and the first few may all
    find no certificate: an exclusive lock makes one of them write the pair, the others
    then use it, so no process reads a key from one run and a certificate from another.
    """
    certificatePath = os.path.join(directory, "selfsigned-cert.pem")
    keyPath = os.path.join(directory, "selfsigned-key.pem")
    if os.path.exists(certificatePath) and os.path.exists(keyPath):
        return certificatePath, keyPath
    makeDirectories(directory)
    lockFd = os.open(os.path.join(directory, ".selfsigned.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lockFd, fcntl.LOCK_EX)
        if not (os.path.exists(certificatePath) and os.path.exists(keyPath)):
            _writeSelfSigned(certificatePath, keyPath, hostname)
    finally:
        os.close(lockFd)
    return certificatePath, keyPath


def _writeSelfSigned(certificatePath: str, keyPath: str, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    altNames: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname == "localhost":
        altNames += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(altNames), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyBytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with os.fdopen(openNew(keyPath + ".tmp", exclusive=False), "wb") as f:
        f.write(keyBytes)
    with os.fdopen(openNew(certificatePath + ".tmp", exclusive=False), "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(keyPath + ".tmp", keyPath)
    os.replace(certificatePath + ".tmp", certificatePath)
    _log.info("Made a self-signed TLS certificate for {hostname} in {path}", hostname=hostname, path=certificatePath)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The current server context for one certificate/key pair; :meth:`reload` reads
    the files again (on SIGHUP) and keeps the old context if the new files are bad.

    It is what listeners and STARTTLS are given, so a reload reaches new handshakes."""

    def __init__(self, certificatePath: str, keyPath: str) -> None:
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.options = loadServerContext(certificatePath, keyPath)

    def getContext(self) -> SSL.Context:
        """The current context (for ``ITLSTransport.startTLS``)."""
        return self.options.getContext()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A connection on the current context (for ``TLSMemoryBIOFactory``)."""
        return SSL.Connection(self.options.getContext(), None)

    def reload(self) -> bool:
        try:
            self.options = loadServerContext(self.certificatePath, self.keyPath)
        except TLSError as e:
            _log.error("TLS certificate not reloaded, keeping the old one: {error}", error=e)
            return False
        _log.info("TLS certificate reloaded from {path}", path=self.certificatePath)
        return True


def clientTLS(hostname: str | None, verify: bool, trustRoot: Any = None, dane: bool = False) -> Any:
    """Client TLS options: with TLSA records (``dane``), naming ``hostname`` but checking
    nothing (the records are matched after the handshake); with ``verify``, checking
    the certificate is valid for ``hostname`` under ``trustRoot`` (the platform's when
    None); else encrypting without checking the certificate."""
    if dane and hostname is not None:
        return _UncheckedWithServerName(hostname)
    if verify and hostname is not None:
        return ssl.optionsForClientTLS(hostname, trustRoot=trustRoot)
    return ssl.CertificateOptions()


@implementer(IOpenSSLClientConnectionCreator)
class _UncheckedWithServerName:
    """TLS that checks no certificate but still sends the host name (SNI, RFC 6066), so
    a server with several certificates shows the one its TLSA records are for (RFC 7672
    section 8.1)."""

    def __init__(self, hostname: str) -> None:
        self._options = ssl.CertificateOptions()
        self._hostname = hostname.rstrip(".").encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection

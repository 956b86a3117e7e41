"""When the TLS certificate expires: for the status page and ``jsmail check``."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificate:
    """The leaf certificate of a PEM file: its subject's common name and expiry, or
    the problem reading it."""

    path: str
    subject: str = ""
    notAfter: float | None = None  # seconds since the epoch
    problem: str = ""


def readCertificate(path: str) -> Certificate:
    """The first certificate in ``path`` (the leaf, in a chain file); never raises."""
    try:
        with open(path, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        return Certificate(path, problem=e.strerror or str(e))
    except ValueError as e:
        return Certificate(path, problem=f"not a PEM certificate: {e}")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else leaf.subject.rfc4514_string()
    return Certificate(path, subject, leaf.not_valid_after_utc.timestamp())

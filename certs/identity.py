"""Facts read from a certificate, and the verified :class:`Identity` of a peer.

:class:`CertificateInfo` is what a certificate *says* (subject, role, signing key,
serial, validity); :func:`describe_certificate` builds it without judging anything,
for display. :class:`Identity` is what a certificate *proves*: only
:mod:`certs.verify` constructs one, after checking the issuer, validity,
revocation, usage and role. Code past the verifier relies on the type.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs.errors import CertificateInvalid, InvalidReason
from certs.extensions import read_role, read_signing_key
from certs.roles import Kind, Role

__all__ = [
    "CertificateInfo",
    "Identity",
    "certificate_fingerprint",
    "check_name",
    "describe_certificate",
    "key_fingerprint",
    "parse_serial",
    "serial_hex",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{1,40}")


def check_name(name: str) -> str | None:
    """Return why ``name`` is not a valid node/user name, or ``None`` if it is."""
    if _NAME.fullmatch(name) is None:
        return (
            f"name {name!r} must be 1-64 characters of letters, digits, '.', '_', '@', '-'"
            " and start with a letter or digit"
        )
    return None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_fingerprint(raw_public_key: bytes) -> str:
    """SHA-256 of a raw Ed25519 public key, lowercase hex."""
    return hashlib.sha256(raw_public_key).hexdigest()


def serial_hex(serial: int) -> str:
    """A certificate serial as lowercase hex without prefix (how the CLI shows it)."""
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Parse a serial as printed by :func:`serial_hex` (``0x`` and ``:`` allowed).

    Raises:
        ValueError: ``text`` is not a hex serial of at most 20 bytes.
    """
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if _HEX.fullmatch(cleaned) is None:
        raise ValueError(f"serial {text!r} is not a hex number of at most 20 bytes")
    return int(cleaned, 16)


def _first_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attributes = name.get_attributes_for_oid(oid)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateInfo:
    """What a certificate says about its holder. Not verified: for display only."""

    subject: str
    issuer: str
    name: str
    organization: str | None
    role: Role | None
    signing_key: bytes | None = field(repr=False)
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str

    @property
    def serial_hex(self) -> str:
        """The serial as lowercase hex."""
        return serial_hex(self.serial)

    @property
    def signing_key_fingerprint(self) -> str | None:
        """SHA-256 of the bound Ed25519 signing key, or ``None`` if none is bound."""
        return None if self.signing_key is None else key_fingerprint(self.signing_key)


def describe_certificate(cert: x509.Certificate) -> CertificateInfo:
    """Read the facts a certificate states, without verifying any of them.

    Args:
        cert: any X.509 certificate.

    Returns:
        The certificate's facts.

    Raises:
        CertificateInvalid: (``MISSING_EXTENSION``) a Greenhouse extension is
            present but malformed.
    """
    try:
        role = read_role(cert)
        signing_key = read_signing_key(cert)
    except ValueError as exc:
        raise CertificateInvalid(
            InvalidReason.MISSING_EXTENSION,
            f"certificate serial {serial_hex(cert.serial_number)} has a malformed "
            f"Greenhouse extension: {exc}",
        ) from None
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        name=_first_attribute(cert.subject, NameOID.COMMON_NAME) or "",
        organization=_first_attribute(cert.subject, NameOID.ORGANIZATION_NAME),
        role=role,
        signing_key=signing_key,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=certificate_fingerprint(cert),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A verified peer: built only by :mod:`certs.verify` after every check passed."""

    role: Role
    name: str
    organization: str | None
    serial: int
    signing_key: bytes | None = field(repr=False)
    not_after: datetime
    certificate_fingerprint: str

    @property
    def kind(self) -> Kind:
        """Node, user or server, derived from the role."""
        return self.role.kind

    @property
    def serial_hex(self) -> str:
        """The serial as lowercase hex."""
        return serial_hex(self.serial)

    @property
    def signing_key_fingerprint(self) -> str | None:
        """SHA-256 of the bound Ed25519 signing key, or ``None`` if none is bound."""
        return None if self.signing_key is None else key_fingerprint(self.signing_key)

    def describe(self) -> str:
        """A short human label, e.g. ``node st-marys (serial 1f...)``."""
        return f"{self.kind.value} {self.name} (role {self.role.value}, serial {self.serial_hex})"

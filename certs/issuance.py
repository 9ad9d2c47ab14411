"""Building certificates and CRLs: the CA's pure core (no files, no clock).

Guarantees of what is built:

- the CA certificate is ECDSA P-256, ``basicConstraints CA:TRUE, pathlen:0``
  (critical), key usage ``keyCertSign, cRLSign`` only;
- end-entity certificates are ``CA:FALSE``, key usage ``digitalSignature``, one
  extended key usage (``clientAuth`` for nodes and users, ``serverAuth`` for the
  SuperLink), a fresh random 159-bit serial, and carry the role and (when given)
  the Ed25519 signing key in Greenhouse's extensions (:mod:`certs.extensions`);
- lifetimes are bounded by :data:`MAX_LIFETIME_DAYS`; defaults are short
  (:data:`certs.roles.DEFAULT_LIFETIME`);
- CRLs carry a CRL number and a ``nextUpdate``.

The shell that stores keys, writes files and keeps the ledger is :mod:`certs.ca`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import RequestInvalid
from certs.extensions import role_extension, signing_key_extension
from certs.roles import DEFAULT_LIFETIME, Kind, Role

__all__ = [
    "MAX_LIFETIME_DAYS",
    "Revocation",
    "Validity",
    "build_ca_certificate",
    "build_certificate",
    "build_crl",
    "validity_window",
]

MAX_LIFETIME_DAYS = 397
_BACKDATE = timedelta(minutes=5)  # tolerate small clock skew between hosts


@dataclass(frozen=True, slots=True, kw_only=True)
class Validity:
    """A certificate's validity window (UTC, whole seconds)."""

    not_before: datetime
    not_after: datetime

    def __post_init__(self) -> None:
        if self.not_after <= self.not_before:
            raise RequestInvalid(
                f"not_after {self.not_after.isoformat()} must be after not_before"
                f" {self.not_before.isoformat()}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """One revoked serial for a CRL."""

    serial: int
    when: datetime
    reason: x509.ReasonFlags


def validity_window(
    *,
    kind: Kind,
    now: datetime,
    days: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Validity:
    """The validity of a new certificate.

    Args:
        kind: the holder's kind, which picks the default lifetime.
        now: the issuance time.
        days: the lifetime in days (1..:data:`MAX_LIFETIME_DAYS`), else the default.
        not_before: an explicit start (tests, back-dated issuance).
        not_after: an explicit end; overrides ``days``.

    Raises:
        RequestInvalid: ``days`` is out of range or the window is empty.
    """
    if days is not None and not 1 <= days <= MAX_LIFETIME_DAYS:
        raise RequestInvalid(f"lifetime must be 1..{MAX_LIFETIME_DAYS} days, got {days}")
    start = (not_before or now - _BACKDATE).replace(microsecond=0)
    lifetime = timedelta(days=days) if days is not None else DEFAULT_LIFETIME[kind]
    end = (not_after or now + lifetime).replace(microsecond=0)
    return Validity(not_before=start, not_after=end)


def build_ca_certificate(
    key: ec.EllipticCurvePrivateKey, *, name: str, days: int, now: datetime
) -> x509.Certificate:
    """A self-signed federation CA certificate for ``name`` valid ``days`` days."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before((now - _BACKDATE).replace(microsecond=0))
        .not_valid_after((now + timedelta(days=days)).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def build_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    role: Role,
    signing_key: bytes | None,
    validity: Validity,
    alt_names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """An end-entity certificate issued by the federation CA.

    Args:
        ca_cert: the CA certificate (issuer name, authority key id).
        ca_key: the CA private key.
        subject: the holder's name.
        public_key: the holder's TLS public key.
        role: the role to bind (the CA's decision).
        signing_key: the raw Ed25519 signing key to bind, if any.
        validity: the validity window.
        alt_names: subject alternative names (servers: DNS names and IPs).

    Returns:
        The signed certificate.
    """
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if role is Role.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(role_extension(role), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    if signing_key is not None:
        key = Ed25519PublicKey.from_public_bytes(signing_key)
        builder = builder.add_extension(signing_key_extension(key), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def build_crl(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revocations: Iterable[Revocation],
    now: datetime,
    next_update: datetime,
    number: int,
) -> x509.CertificateRevocationList:
    """A CRL (RFC 5280 §5) listing ``revocations``, valid until ``next_update``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now.replace(microsecond=0))
        .next_update(next_update.replace(microsecond=0))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for revocation in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial)
            .revocation_date(revocation.when.replace(microsecond=0))
        )
        if revocation.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(revocation.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, hashes.SHA256())

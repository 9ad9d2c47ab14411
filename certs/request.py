"""Certificate signing requests: made at the site, checked at the CA.

A requester (site administrator, data scientist, auditor) generates, locally, an
ECDSA P-256 TLS key and an Ed25519 signing key, and a CSR (RFC 2986) that carries
the subject (CN = name, O = organization), the requested role and the signing
public key with a proof of possession (:mod:`certs.extensions`). Private keys are
written 0600 and never leave the output directory; only the CSR travels.

:func:`verify_request` is the CA's only entry point for an untrusted CSR: it
returns a :class:`VerifiedRequest` or raises :class:`~certs.errors.RequestInvalid`.
The requested role is a request; the CA's choice at signing is what gets bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID

from certs.errors import KeyFileError, RequestInvalid
from certs.extensions import (
    encode_pop,
    pop_message,
    read_pop,
    read_role,
    read_signing_key,
    role_extension,
    signing_key_extension,
)
from certs.files import ensure_private_directory, write_atomic
from certs.identity import check_name
from certs.keys import generate_signing_key, generate_tls_key, write_private_key
from certs.roles import Role

__all__ = [
    "RequestFiles",
    "VerifiedRequest",
    "build_request",
    "create_request",
    "verify_request",
]

_MAX_ORGANIZATION = 64  # X.520 ub-organization-name


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFiles:
    """The files :func:`create_request` wrote."""

    tls_key: Path
    signing_key: Path
    csr: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedRequest:
    """A CSR whose self-signature and signing-key possession proof were checked."""

    name: str
    organization: str | None
    requested_role: Role | None
    signing_key: bytes | None = field(repr=False)
    public_key: ec.EllipticCurvePublicKey = field(repr=False)


def _spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_subject(name: str, organization: str | None) -> None:
    problem = check_name(name)
    if problem is not None:
        raise RequestInvalid(problem)
    if organization is not None and not 0 < len(organization) <= _MAX_ORGANIZATION:
        raise RequestInvalid(f"organization must be 1-{_MAX_ORGANIZATION} characters")


def build_request(
    *,
    name: str,
    organization: str | None,
    role: Role,
    tls_key: ec.EllipticCurvePrivateKey,
    signing_key: Ed25519PrivateKey | None,
) -> x509.CertificateSigningRequest:
    """Build a CSR for ``name`` requesting ``role``, binding ``signing_key``.

    Raises:
        RequestInvalid: the name or organization is not acceptable.
    """
    _check_subject(name, organization)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .add_extension(role_extension(role), critical=False)
    )
    if signing_key is not None:
        proof = signing_key.sign(pop_message(_spki(tls_key.public_key())))
        builder = builder.add_extension(
            signing_key_extension(signing_key.public_key()), critical=False
        ).add_extension(encode_pop(proof), critical=False)
    return builder.sign(tls_key, hashes.SHA256())


def create_request(
    out_dir: Path,
    *,
    name: str,
    organization: str | None,
    role: Role,
    overwrite: bool = False,
) -> RequestFiles:
    """Generate a TLS key, a signing key and a CSR into ``out_dir``.

    Files: ``<name>.key`` (TLS, 0600), ``<name>-signing.key`` (Ed25519, 0600) and
    ``<name>.csr``. Existing files are never replaced unless ``overwrite``.

    Raises:
        RequestInvalid: the name, organization or role is not acceptable.
        KeyFileError: a key file exists or cannot be written.
        CertificateFileError: the CSR cannot be written.
    """
    if role is Role.SERVER:
        raise RequestInvalid("server certificates are issued by 'greenhouse ca issue-server'")
    _check_subject(name, organization)
    ensure_private_directory(out_dir)
    tls_key = generate_tls_key()
    signing_key = generate_signing_key()
    csr = build_request(
        name=name, organization=organization, role=role, tls_key=tls_key, signing_key=signing_key
    )
    files = RequestFiles(
        tls_key=out_dir / f"{name}.key",
        signing_key=out_dir / f"{name}-signing.key",
        csr=out_dir / f"{name}.csr",
    )
    existing = [p for p in (files.tls_key, files.signing_key, files.csr) if p.exists()]
    if existing and not overwrite:
        raise KeyFileError(f"{existing[0]} already exists (refusing to overwrite it)")
    write_private_key(files.tls_key, tls_key, overwrite=overwrite)
    write_private_key(files.signing_key, signing_key, overwrite=overwrite)
    write_atomic(
        files.csr, csr.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=overwrite
    )
    return files


def _verified_signing_key(
    csr: x509.CertificateSigningRequest, public_key: ec.EllipticCurvePublicKey
) -> bytes | None:
    try:
        signing_key = read_signing_key(csr)
        proof = read_pop(csr)
    except ValueError as exc:
        raise RequestInvalid(f"CSR has a malformed signing-key extension: {exc}") from None
    if signing_key is None:
        if proof is not None:
            raise RequestInvalid("CSR carries a possession proof but no signing key")
        return None
    if proof is None:
        raise RequestInvalid("CSR binds a signing key without proof of possession")
    try:
        Ed25519PublicKey.from_public_bytes(signing_key).verify(
            proof, pop_message(_spki(public_key))
        )
    except InvalidSignature:
        raise RequestInvalid(
            "CSR's signing-key possession proof does not verify (the signing key was"
            " not used for this request)"
        ) from None
    return signing_key


def verify_request(csr: x509.CertificateSigningRequest) -> VerifiedRequest:
    """Check an untrusted CSR and return what it requests.

    Args:
        csr: a CSR received from a requester.

    Returns:
        The verified request.

    Raises:
        RequestInvalid: bad self-signature, a key other than ECDSA P-256, a bad
            subject, an unknown role, or a missing/invalid signing-key proof.
    """
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except ValueError as exc:  # a corrupted key or signature algorithm
        raise RequestInvalid(f"CSR cannot be checked: {exc}") from None
    if not valid:
        raise RequestInvalid("CSR self-signature does not verify")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise RequestInvalid("CSR key must be ECDSA P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(names) != 1 or len(orgs) > 1:
        raise RequestInvalid("CSR subject must have exactly one CN and at most one O")
    name, organization = str(names[0].value), (str(orgs[0].value) if orgs else None)
    _check_subject(name, organization)
    try:
        requested_role = read_role(csr)
    except ValueError as exc:
        raise RequestInvalid(f"CSR requests an invalid role: {exc}") from None
    return VerifiedRequest(
        name=name,
        organization=organization,
        requested_role=requested_role,
        signing_key=_verified_signing_key(csr, public_key),
        public_key=public_key,
    )

"""Greenhouse's X.509 extensions: the role and the node signing key.

A certificate issued by the federation CA carries two non-critical extensions
under a registration-free UUID arc (ITU-T X.667 / RFC 4122 §5 ``2.25.<uuid>``;
Greenhouse owns no IANA private enterprise number, and a UUID arc needs none):

- ``<arc>.1`` **role**: a DER ``UTF8String`` naming a :class:`~certs.roles.Role`;
- ``<arc>.2`` **signing key**: the DER ``SubjectPublicKeyInfo`` of the holder's
  Ed25519 key (RFC 8410), self-describing and parseable by any X.509 library;
- ``<arc>.3`` **proof of possession** (CSRs only): a DER ``OCTET STRING`` holding
  an Ed25519 signature, by the signing key, over a domain tag and the CSR's TLS
  ``SubjectPublicKeyInfo``. It stops a requester from binding someone else's
  signing key to its own certificate.

The extensions are non-critical so that TLS stacks (BoringSSL inside gRPC) accept
the certificates; Greenhouse's own verifier (:mod:`certs.verify`) requires them.
This module only encodes and decodes; it judges nothing. Decoders return ``None``
when an extension is absent and raise ``ValueError`` when it is malformed.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ObjectIdentifier

from certs.roles import Role

__all__ = [
    "GREENHOUSE_ARC",
    "POP_OID",
    "ROLE_OID",
    "SIGNING_KEY_OID",
    "encode_pop",
    "pop_message",
    "read_pop",
    "read_role",
    "read_signing_key",
    "role_extension",
    "signing_key_extension",
]

#: Registration-free OID arc (``2.25`` + a UUID as an integer) owned by Greenhouse.
GREENHOUSE_ARC = "2.25.180282126905683909871239825891111341880"
ROLE_OID = ObjectIdentifier(f"{GREENHOUSE_ARC}.1")
SIGNING_KEY_OID = ObjectIdentifier(f"{GREENHOUSE_ARC}.2")
POP_OID = ObjectIdentifier(f"{GREENHOUSE_ARC}.3")

_UTF8STRING = 0x0C
_OCTET_STRING = 0x04
_POP_DOMAIN = b"greenhouse/signing-key-possession/v1\x00"
_ED25519_SIGNATURE_BYTES = 64

_HasExtensions = x509.Certificate | x509.CertificateSigningRequest


def _der_short(tag: int, content: bytes) -> bytes:
    if len(content) > 127:
        raise ValueError("content too long for a short-form DER length")
    return bytes((tag, len(content))) + content


def _parse_der_short(tag: int, data: bytes) -> bytes:
    if len(data) < 2 or data[0] != tag or data[1] > 127 or data[1] != len(data) - 2:
        raise ValueError(f"expected a short DER value with tag 0x{tag:02x}")
    return data[2:]


def _raw_extension(obj: _HasExtensions, oid: ObjectIdentifier) -> bytes | None:
    try:
        ext = obj.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ValueError(f"extension {oid.dotted_string} has an unexpected type")
    return value.value


def role_extension(role: Role) -> x509.UnrecognizedExtension:
    """The role extension for ``role`` (add it non-critical)."""
    return x509.UnrecognizedExtension(ROLE_OID, _der_short(_UTF8STRING, role.value.encode()))


def read_role(obj: _HasExtensions) -> Role | None:
    """The role bound in a certificate or requested in a CSR, or ``None`` if absent.

    Raises:
        ValueError: the extension is present but malformed or names no role.
    """
    raw = _raw_extension(obj, ROLE_OID)
    if raw is None:
        return None
    text = _parse_der_short(_UTF8STRING, raw).decode("utf-8", errors="strict")
    return Role(text)


def signing_key_extension(public_key: Ed25519PublicKey) -> x509.UnrecognizedExtension:
    """The signing-key extension carrying ``public_key`` (add it non-critical)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return x509.UnrecognizedExtension(SIGNING_KEY_OID, spki)


def read_signing_key(obj: _HasExtensions) -> bytes | None:
    """The raw 32-byte Ed25519 signing key bound in ``obj``, or ``None`` if absent.

    Raises:
        ValueError: the extension is present but is not an Ed25519 public key.
    """
    raw = _raw_extension(obj, SIGNING_KEY_OID)
    if raw is None:
        return None
    key = serialization.load_der_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the signing key extension does not hold an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pop_message(csr_public_key_spki: bytes) -> bytes:
    """The bytes a signing key signs to prove possession for one CSR's TLS key."""
    return _POP_DOMAIN + csr_public_key_spki


def encode_pop(signature: bytes) -> x509.UnrecognizedExtension:
    """The proof-of-possession extension holding ``signature`` (CSRs only)."""
    if len(signature) != _ED25519_SIGNATURE_BYTES:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return x509.UnrecognizedExtension(POP_OID, _der_short(_OCTET_STRING, signature))


def read_pop(csr: x509.CertificateSigningRequest) -> bytes | None:
    """The proof-of-possession signature in ``csr``, or ``None`` if absent.

    Raises:
        ValueError: the extension is present but malformed.
    """
    raw = _raw_extension(csr, POP_OID)
    if raw is None:
        return None
    signature = _parse_der_short(_OCTET_STRING, raw)
    if len(signature) != _ED25519_SIGNATURE_BYTES:
        raise ValueError("the proof-of-possession signature is not 64 bytes")
    return signature

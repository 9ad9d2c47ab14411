"""App publishers: Ed25519 keys that vouch for app bundles by signing their SHA-256.

A site may trust a *publisher* (its own ML team, a vendor) instead of listing every
bundle hash: ``[apps] trusted_publishers`` in ``site.toml`` names the publishers'
public key files, and a bundle is admitted when it carries a valid signature by one
of them (:func:`appliance.supernode.policy.admit_bundle` makes that decision).

What a signature covers: ``PUBLISHER_DOMAIN + digest``, where ``digest`` is the
32-byte SHA-256 of the deterministic bundle (:mod:`appliance.bundle`). The domain
tag keeps these signatures apart from any other use of an Ed25519 key (node
request envelopes, CSR possession proofs). Ed25519 is RFC 8032; verification is
strict (pyca/cryptography).

The signature file is a small JSON object (at most :data:`MAX_SIGNATURE_FILE_BYTES`)
with exactly these fields, parsed strictly by :func:`parse_bundle_signature`::

    {"format": "greenhouse-app-signature/v1", "bundle": "sha256:<hex>",
     "publisher": "<hex SHA-256 of the raw public key>", "signature": "<base64>"}

This module produces and verifies signatures; it decides nothing about a site.
Private keys are written and loaded through :mod:`certs.keys` (mode 0600, refused
when group or others can read them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.errors import ApplianceError
from certs.files import ensure_private_directory, write_atomic
from certs.keys import generate_signing_key, load_signing_key, write_private_key

__all__ = [
    "MAX_SIGNATURE_FILE_BYTES",
    "PUBLISHER_DOMAIN",
    "SIGNATURE_FORMAT",
    "BundleSignature",
    "PublisherError",
    "PublisherKey",
    "generate_publisher_key",
    "load_publisher_key",
    "load_publisher_signing_key",
    "parse_bundle_digest",
    "parse_bundle_signature",
    "sign_bundle",
    "verify_bundle_signature",
]

PUBLISHER_DOMAIN = b"greenhouse/app-bundle-signature/v1\x00"
SIGNATURE_FORMAT = "greenhouse-app-signature/v1"
MAX_SIGNATURE_FILE_BYTES = 4096
MAX_PUBLIC_KEY_FILE_BYTES = 4096
PRIVATE_KEY_NAME = "publisher.key"
PUBLIC_KEY_NAME = "publisher.pub"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_BYTES = 64
_FIELDS = frozenset({"format", "bundle", "publisher", "signature"})


class PublisherError(ApplianceError):
    """A publisher key or bundle signature is malformed, untrusted or does not verify."""


def parse_bundle_digest(text: str) -> str:
    """The lowercase hex SHA-256 in ``text`` (``sha256:<hex>`` or bare ``<hex>``).

    Raises:
        PublisherError: ``text`` is not a SHA-256 digest in one of those forms.
    """
    if not isinstance(text, str):
        raise PublisherError(f"a bundle digest must be a string, got {type(text).__name__}")
    digest = text.removeprefix("sha256:").lower()
    if not _HEX64.fullmatch(digest):
        raise PublisherError(f"{text[:80]!r} is not a bundle digest ('sha256:' + 64 hex digits)")
    return digest


@dataclass(frozen=True, slots=True)
class PublisherKey:
    """A publisher's Ed25519 public key (32 raw bytes) and where it was loaded from."""

    public_key: bytes
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise PublisherError(f"an Ed25519 public key is 32 bytes, got {len(self.public_key)}")

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the raw public key: how signatures name their publisher."""
        return hashlib.sha256(self.public_key).hexdigest()

    def __str__(self) -> str:
        where = f" ({self.label})" if self.label else ""
        return f"publisher {self.fingerprint[:16]}...{where}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleSignature:
    """A publisher's signature over one bundle digest (not yet verified)."""

    bundle_sha256: str
    publisher: str
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle_sha256", parse_bundle_digest(self.bundle_sha256))
        if not _HEX64.fullmatch(self.publisher):
            raise PublisherError("a signature's publisher must be a 64-digit hex fingerprint")
        if len(self.signature) != _SIGNATURE_BYTES:
            raise PublisherError(
                f"an Ed25519 signature is {_SIGNATURE_BYTES} bytes, got {len(self.signature)}"
            )

    def to_bytes(self) -> bytes:
        """The signature file's content (canonical JSON plus a newline)."""
        body = {
            "format": SIGNATURE_FORMAT,
            "bundle": f"sha256:{self.bundle_sha256}",
            "publisher": self.publisher,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return (json.dumps(body, sort_keys=True, indent=1) + "\n").encode("ascii")


def _signed_bytes(bundle_sha256: str) -> bytes:
    return PUBLISHER_DOMAIN + bytes.fromhex(bundle_sha256)


def sign_bundle(key: Ed25519PrivateKey, bundle_sha256: str) -> BundleSignature:
    """Sign a bundle digest with a publisher's private key.

    Raises:
        PublisherError: ``bundle_sha256`` is not a digest.
    """
    digest = parse_bundle_digest(bundle_sha256)
    public = key.public_key().public_bytes_raw()
    return BundleSignature(
        bundle_sha256=digest,
        publisher=hashlib.sha256(public).hexdigest(),
        signature=key.sign(_signed_bytes(digest)),
    )


def parse_bundle_signature(data: bytes) -> BundleSignature:
    """Parse a signature file strictly: size, JSON object, exactly the known fields.

    Raises:
        PublisherError: anything about the file is unexpected.
    """
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise PublisherError(
            f"signature file is {len(data)} bytes, more than {MAX_SIGNATURE_FILE_BYTES}"
        )
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PublisherError("signature file is not UTF-8 JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise PublisherError(f"signature file must hold exactly the fields {sorted(_FIELDS)}")
    if body["format"] != SIGNATURE_FORMAT:
        raise PublisherError(
            f"signature format {str(body['format'])[:40]!r} is not {SIGNATURE_FORMAT!r}"
        )
    if not all(isinstance(body[name], str) for name in _FIELDS):
        raise PublisherError("signature file fields must be strings")
    try:
        signature = base64.b64decode(body["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise PublisherError("signature is not valid base64") from None
    return BundleSignature(
        bundle_sha256=body["bundle"], publisher=body["publisher"], signature=signature
    )


def verify_bundle_signature(
    signature: BundleSignature, bundle_sha256: str, trusted: Iterable[PublisherKey]
) -> PublisherKey:
    """Check that ``signature`` is a trusted publisher's signature over ``bundle_sha256``.

    Args:
        signature: a parsed signature file.
        bundle_sha256: the digest of the bundle actually received.
        trusted: the publishers the site trusts.

    Returns:
        The publisher whose key verified the signature.

    Raises:
        PublisherError: the signature is for another bundle, names an untrusted
            publisher, or does not verify.
    """
    digest = parse_bundle_digest(bundle_sha256)
    if signature.bundle_sha256 != digest:
        raise PublisherError(
            f"signature is for bundle sha256:{signature.bundle_sha256[:16]}..., "
            f"not sha256:{digest[:16]}..."
        )
    publisher = next((k for k in trusted if k.fingerprint == signature.publisher), None)
    if publisher is None:
        raise PublisherError(
            f"bundle is signed by publisher {signature.publisher[:16]}..., "
            "which this site does not trust"
        )
    try:
        Ed25519PublicKey.from_public_bytes(publisher.public_key).verify(
            signature.signature, _signed_bytes(digest)
        )
    except InvalidSignature:
        raise PublisherError(f"signature does not verify with {publisher}") from None
    return publisher


def load_publisher_key(path: Path) -> PublisherKey:
    """Load a publisher's public key (PEM SubjectPublicKeyInfo, Ed25519).

    Raises:
        PublisherError: the file is unreadable, too large, or not an Ed25519 public key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PublisherError(f"cannot read publisher key {path}: {exc.strerror}") from None
    if len(data) > MAX_PUBLIC_KEY_FILE_BYTES:
        raise PublisherError(f"publisher key {path} is too large to be a public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise PublisherError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublisherError(f"publisher key {path} is not an Ed25519 public key")
    return PublisherKey(key.public_bytes_raw(), label=path.name)


def load_publisher_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a publisher's private key (mode 0600 enforced by :mod:`certs.keys`).

    Raises:
        certs.KeyFileError: missing, unreadable, group/other-readable, or not Ed25519.
    """
    return load_signing_key(path)


def generate_publisher_key(directory: Path) -> tuple[Path, Path, PublisherKey]:
    """Create a publisher key pair in ``directory`` (never overwriting one).

    Writes ``publisher.key`` (PKCS#8 PEM, mode 0600) and ``publisher.pub`` (PEM
    SubjectPublicKeyInfo, mode 0644, the file sites list in ``trusted_publishers``).

    Returns:
        The private key path, the public key path and the public key.

    Raises:
        certs.CertError: the directory or a file cannot be written, or a key exists.
    """
    ensure_private_directory(directory)
    key = generate_signing_key()
    public = key.public_key()
    private_path = write_private_key(directory / PRIVATE_KEY_NAME, key)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = write_atomic(directory / PUBLIC_KEY_NAME, pem, mode=0o644, overwrite=False)
    return private_path, public_path, PublisherKey(public.public_bytes_raw(), label=PUBLIC_KEY_NAME)

"""Private key generation, storage and loading with permission checks.

Guarantees:

- private keys are written mode 0600 from their first visible moment (via
  :func:`certs.files.write_atomic`) and never overwrite an existing key unless
  asked to;
- :func:`load_private_key` refuses a key file that group or others can read
  (:class:`~certs.errors.KeyPermissionError`), refuses an encrypted key without a
  passphrase and reports a wrong passphrase (:class:`~certs.errors.PassphraseError`);
- error messages name the file, never its contents.

TLS keys are ECDSA P-256; node signing keys are Ed25519 (RFC 8032). Keys are
stored as PKCS#8 PEM, encrypted with the best available scheme when a
passphrase is given.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs.errors import KeyFileError, KeyPermissionError, PassphraseError
from certs.files import read_file, write_atomic

__all__ = [
    "PrivateKey",
    "check_key_permissions",
    "generate_signing_key",
    "generate_tls_key",
    "is_encrypted_key",
    "load_or_create_signing_key",
    "load_private_key",
    "load_signing_key",
    "load_tls_key",
    "private_key_pem",
    "write_private_key",
]

PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey

_PRIVATE_MODE = 0o600
_ENCRYPTED_MARKER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key for TLS (and for the CA)."""
    return ec.generate_private_key(ec.SECP256R1())


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for signing requests and replies."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: PrivateKey, *, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted when ``passphrase`` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_key(
    path: Path,
    key: PrivateKey,
    *,
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``key`` to ``path`` with mode 0600.

    Args:
        path: the key file to create.
        key: the private key.
        passphrase: encrypt the key with this passphrase.
        overwrite: replace an existing file (key rotation); otherwise refuse.

    Returns:
        ``path``.

    Raises:
        KeyFileError: the file exists (and ``overwrite`` is false) or cannot be written.
    """
    data = private_key_pem(key, passphrase=passphrase)
    return write_atomic(path, data, mode=_PRIVATE_MODE, overwrite=overwrite, error=KeyFileError)


def check_key_permissions(path: Path) -> None:
    """Refuse a key file that is not a regular file or that group/others can read.

    Raises:
        KeyFileError: the file is missing or not a regular file.
        KeyPermissionError: the file's mode grants any access to group or others.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"private key {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"private key {path} is accessible by group or others (mode {mode:04o});"
            f" run: chmod 600 {path}"
        )


def is_encrypted_key(path: Path) -> bool:
    """Whether the PEM key at ``path`` is passphrase-encrypted.

    Raises:
        KeyFileError: the file cannot be read.
    """
    return (
        read_file(path, what="private key", error=KeyFileError)
        .lstrip()
        .startswith(_ENCRYPTED_MARKER)
    )


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key after checking its file permissions.

    Args:
        path: the key file.
        passphrase: the passphrase of an encrypted key.

    Returns:
        The key (ECDSA or Ed25519).

    Raises:
        KeyPermissionError: the file is readable by group or others.
        PassphraseError: the key is encrypted and no or a wrong passphrase was given.
        KeyFileError: the file is missing, unreadable, not a PEM key, or of an
            unsupported type.
    """
    check_key_permissions(path)
    data = read_file(path, what="private key", error=KeyFileError)
    encrypted = data.lstrip().startswith(_ENCRYPTED_MARKER)
    if encrypted and not passphrase:
        raise PassphraseError(f"private key {path} is encrypted; a passphrase is required")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError):
        if encrypted:
            raise PassphraseError(f"wrong passphrase for private key {path}") from None
        raise KeyFileError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is neither ECDSA nor Ed25519")
    return key


def load_tls_key(path: Path, *, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load an ECDSA private key (TLS or CA key). Raises as :func:`load_private_key`."""
    key = load_private_key(path, passphrase=passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"private key {path} is not an ECDSA key")
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 signing key. Raises as :func:`load_private_key`."""
    key = load_private_key(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 signing key")
    return key


def load_or_create_signing_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Load the Ed25519 key at ``path``, creating it (mode 0600) on first use.

    For keys that belong to one process's data directory (an audit log's key),
    not for identities the CA binds into certificates.

    Returns:
        The key, and whether it was just created.

    Raises:
        KeyFileError: the file is unreadable, not Ed25519, too open, or cannot be written.
    """
    if path.exists():
        return load_signing_key(path), False
    key = generate_signing_key()
    write_private_key(path, key)
    return key, True

"""Reading and atomically writing PKI files (certificates, CSRs, CRLs).

Guarantees: a file is written to a temporary name in the same directory, flushed,
given its final mode *before* it becomes visible, and then renamed into place, so
a reader (a running server reloading its certificate) never sees half a file.
With ``overwrite=False`` an existing file is never replaced. Private keys are
written through :mod:`certs.keys`, which uses :func:`write_atomic` with mode 0600.
Parsing failures raise the typed error of the file's kind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import (
    CertError,
    CertificateFileError,
    RequestInvalid,
    RevocationListInvalid,
)

__all__ = [
    "certificate_pem",
    "ensure_private_directory",
    "load_certificate",
    "load_crl",
    "load_csr",
    "read_file",
    "write_atomic",
]


def ensure_private_directory(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing and return it.

    Raises:
        CertificateFileError: the directory cannot be created.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateFileError(f"cannot create directory {path}: {exc.strerror}") from None
    return path


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int,
    overwrite: bool,
    error: type[CertError] = CertificateFileError,
) -> Path:
    """Write ``data`` to ``path`` atomically with file mode ``mode``.

    Args:
        path: the destination.
        data: the file's bytes.
        mode: the permission bits the file has from its first visible moment.
        overwrite: replace an existing file; if false, refuse.
        error: the error type raised on failure.

    Returns:
        ``path``.

    Raises:
        CertError: (of type ``error``) the file exists and ``overwrite`` is false,
            or it cannot be written.
    """
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            os.link(tmp_name, path)
    except FileExistsError:
        raise error(f"{path} already exists (refusing to overwrite it)") from None
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return path


def read_file(path: Path, *, what: str, error: type[CertError] = CertificateFileError) -> bytes:
    """Read a whole file, raising ``error`` naming ``what`` it was meant to be."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The PEM encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate.

    Raises:
        CertificateFileError: the file is unreadable or not a PEM certificate.
    """
    data = read_file(path, what="certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateFileError(f"{path} is not a PEM certificate") from None


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    """Load one PEM certificate signing request.

    Raises:
        RequestInvalid: the file is unreadable or not a PEM CSR.
    """
    data = read_file(path, what="certificate signing request", error=RequestInvalid)
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise RequestInvalid(f"{path} is not a PEM certificate signing request") from None


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Load one PEM certificate revocation list.

    Raises:
        RevocationListInvalid: the file is unreadable or not a PEM CRL.
    """
    data = read_file(path, what="CRL", error=RevocationListInvalid)
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise RevocationListInvalid(f"{path} is not a PEM certificate revocation list") from None

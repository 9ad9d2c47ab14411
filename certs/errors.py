"""Errors raised by the ``certs`` library.

Every error derives from :class:`CertError`, so ``certs`` can be used on its own
and a caller can catch one root. Subclasses say *what* failed:

- bad input from a peer or a file: :class:`CertificateInvalid` (with a
  :class:`InvalidReason`), :class:`RequestInvalid`, :class:`RevocationListInvalid`,
  the :class:`SignatureError` family;
- authorization: :class:`AccessDenied` (with an :class:`AccessReason`);
- caller misuse or CA state: :class:`CAError`, :class:`IdentityUnavailable`;
- environment: :class:`KeyFileError` (and :class:`KeyPermissionError`,
  :class:`PassphraseError`), :class:`CertificateFileError`.

Messages name files, serials, subjects, roles and fingerprints; they never
contain private key material, passphrases or signatures.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AccessDenied",
    "AccessReason",
    "CAError",
    "CertError",
    "CertificateFileError",
    "CertificateInvalid",
    "IdentityUnavailable",
    "InvalidReason",
    "KeyFileError",
    "KeyPermissionError",
    "MalformedEnvelope",
    "PassphraseError",
    "ReplayDetected",
    "RequestInvalid",
    "RevocationListInvalid",
    "RoleMismatch",
    "SignatureError",
    "SignatureInvalid",
    "SignatureMissing",
    "StaleRequest",
    "UnknownSerial",
]


class CertError(Exception):
    """Root of all errors raised by the ``certs`` package."""


class InvalidReason(StrEnum):
    """Why a certificate was judged invalid (one value per distinct cause)."""

    NO_CERTIFICATE = "no-certificate"
    MALFORMED = "malformed"
    FOREIGN_CA = "foreign-ca"
    SELF_SIGNED = "self-signed"
    WRONG_USAGE = "wrong-usage"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"
    MISSING_EXTENSION = "missing-extension"
    WRONG_ROLE = "wrong-role"


class CertificateInvalid(CertError):
    """A certificate failed verification; ``reason`` says which rule it broke."""

    def __init__(self, reason: InvalidReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AccessReason(StrEnum):
    """Why a verified identity was refused access to a method."""

    METHOD_NOT_ALLOWED = "method-not-allowed"
    NOT_ENROLLED = "not-enrolled"


class AccessDenied(CertError):
    """A verified identity may not call a method; ``reason`` says why."""

    def __init__(self, reason: AccessReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RequestInvalid(CertError):
    """A certificate signing request is malformed or breaks an issuance rule."""


class RoleMismatch(RequestInvalid):
    """The CA was asked for a role other than the one the CSR requests."""


class RevocationListInvalid(CertError):
    """A CRL cannot be parsed, is not signed by the federation CA, or is stale."""


class CAError(CertError):
    """The CA directory is missing, already exists, or is in an unexpected state."""


class UnknownSerial(CAError):
    """No certificate with this serial was issued by this CA."""


class IdentityUnavailable(CertError):
    """No verified identity is attached to the current call (interceptor not run)."""


class KeyFileError(CertError):
    """A private key file cannot be read, written or parsed."""


class KeyPermissionError(KeyFileError):
    """A private key file is readable by group or others (expected mode 0600)."""


class PassphraseError(KeyFileError):
    """An encrypted key needs a passphrase, or the given passphrase is wrong."""


class CertificateFileError(CertError):
    """A certificate, CSR or CRL file cannot be read or written."""


class SignatureError(CertError):
    """Root of request/reply signature failures."""


class SignatureMissing(SignatureError):
    """A call that must be signed carries no signature."""


class MalformedEnvelope(SignatureError):
    """A signed envelope's bytes do not follow the envelope format."""


class SignatureInvalid(SignatureError):
    """A signature, its key or its body digest does not match."""


class StaleRequest(SignatureError):
    """A signed request's timestamp is outside the replay window."""


class ReplayDetected(SignatureError):
    """A signed request's nonce was already seen within the replay window."""

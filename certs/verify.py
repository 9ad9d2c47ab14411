"""Judging certificates: the one place where a peer certificate is accepted or not.

Every check of a node, user or server certificate goes through this module
(RFC 5280 §6 path validation, restricted to Greenhouse's one-level PKI: every
end-entity certificate is issued directly by the federation CA). In order:

1. **issuer**: signed by the federation CA (else ``FOREIGN_CA`` or ``SELF_SIGNED``);
2. **usage**: not a CA, extended key usage fits the purpose (``WRONG_USAGE``);
3. **extensions**: role present, node certificates bind a signing key
   (``MISSING_EXTENSION``);
4. **validity**: ``NOT_YET_VALID`` / ``EXPIRED`` at the injected time;
5. **revocation**: serial not in the verified CRL (``REVOKED``);
6. **role**: the bound role is one the caller allows (``WRONG_ROLE``).

Steps 1-3 depend only on the certificate, so :class:`PeerVerifier` caches their
outcome per certificate; steps 4-6 run on every call, because time passes and the
CRL changes. ``verify_*`` functions raise :class:`~certs.errors.CertificateInvalid`,
``check_*`` functions return a :class:`CheckResult`. Only this module constructs
an :class:`~certs.identity.Identity`. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.errors import CertificateInvalid, InvalidReason
from certs.identity import Identity, certificate_fingerprint, describe_certificate
from certs.revocation import RevocationList
from certs.roles import Role

__all__ = [
    "CheckResult",
    "PeerVerifier",
    "Purpose",
    "check_certificate",
    "expiry_warning",
    "verify_certificate",
]

DEFAULT_EXPIRY_WARNING = timedelta(days=14)


class Purpose(StrEnum):
    """What a certificate is being accepted for."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The outcome of :func:`check_certificate`: an identity, or why not."""

    identity: Identity | None
    reason: InvalidReason | None
    message: str

    @property
    def valid(self) -> bool:
        """Whether the certificate passed every check."""
        return self.identity is not None


def _label(cert: x509.Certificate) -> str:
    return f"certificate '{cert.subject.rfc4514_string()}' (serial {cert.serial_number:x})"


def _invalid(reason: InvalidReason, message: str) -> CertificateInvalid:
    return CertificateInvalid(reason, message)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_issuer(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    if certificate_fingerprint(cert) == certificate_fingerprint(ca_cert):
        raise _invalid(
            InvalidReason.WRONG_USAGE, "the federation CA certificate cannot identify a peer"
        )
    if _issued_by(cert, ca_cert):
        return
    if cert.issuer == cert.subject and _issued_by(cert, cert):
        raise _invalid(
            InvalidReason.SELF_SIGNED,
            f"{_label(cert)} is self-signed, not issued by the federation CA",
        )
    if cert.issuer == ca_cert.subject:
        raise _invalid(
            InvalidReason.FOREIGN_CA,
            f"{_label(cert)} names the federation CA as issuer but"
            " its signature does not verify with the CA key (foreign CA)",
        )
    raise _invalid(
        InvalidReason.FOREIGN_CA,
        f"{_label(cert)} is issued by a foreign CA"
        f" '{cert.issuer.rfc4514_string()}', not the federation CA"
        f" '{ca_cert.subject.rfc4514_string()}'",
    )


def _check_usage(cert: x509.Certificate, purpose: Purpose) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise _invalid(InvalidReason.WRONG_USAGE, f"{_label(cert)} is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    wanted = (
        ExtendedKeyUsageOID.CLIENT_AUTH
        if purpose is Purpose.CLIENT
        else ExtendedKeyUsageOID.SERVER_AUTH
    )
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or wanted not in usages:
        raise _invalid(
            InvalidReason.WRONG_USAGE,
            f"{_label(cert)} is not valid for TLS {purpose.value} authentication",
        )


def _static_identity(
    cert: x509.Certificate, ca_cert: x509.Certificate, purpose: Purpose
) -> tuple[Identity, datetime]:
    """Steps 1-3: everything that depends only on the certificate."""
    _check_issuer(cert, ca_cert)
    _check_usage(cert, purpose)
    info = describe_certificate(cert)
    if info.role is None:
        raise _invalid(InvalidReason.MISSING_EXTENSION, f"{_label(cert)} binds no role")
    if info.role is Role.NODE and info.signing_key is None:
        raise _invalid(InvalidReason.MISSING_EXTENSION, f"node {_label(cert)} binds no signing key")
    identity = Identity(
        role=info.role,
        name=info.name,
        organization=info.organization,
        serial=info.serial,
        signing_key=info.signing_key,
        not_after=info.not_after,
        certificate_fingerprint=info.fingerprint,
    )
    return identity, info.not_before


def _dynamic_checks(
    identity: Identity,
    not_before: datetime,
    *,
    now: datetime,
    revocations: RevocationList | None,
    roles: Collection[Role] | None,
) -> None:
    """Steps 4-6: validity at ``now``, revocation, role."""
    who = f"certificate of {identity.describe()}"
    if now < not_before:
        raise _invalid(
            InvalidReason.NOT_YET_VALID, f"{who} is not valid before {not_before.isoformat()}"
        )
    if now >= identity.not_after:
        raise _invalid(InvalidReason.EXPIRED, f"{who} expired at {identity.not_after.isoformat()}")
    if revocations is not None and revocations.is_revoked(identity.serial):
        raise _invalid(InvalidReason.REVOKED, f"{who} is revoked")
    if roles is not None and identity.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles)) or "none"
        raise _invalid(
            InvalidReason.WRONG_ROLE,
            f"{who} has role {identity.role.value}; allowed: {allowed}",
        )


def _check_ca_current(window: tuple[datetime, datetime], now: datetime) -> None:
    not_before, not_after = window
    if not not_before <= now < not_after:
        raise _invalid(
            InvalidReason.EXPIRED,
            f"the federation CA certificate is not valid now (valid {not_before.isoformat()}"
            f" to {not_after.isoformat()})",
        )


def _window(cert: x509.Certificate) -> tuple[datetime, datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def verify_certificate(
    cert: x509.Certificate,
    *,
    ca_cert: x509.Certificate,
    now: datetime,
    revocations: RevocationList | None = None,
    roles: Collection[Role] | None = None,
    purpose: Purpose = Purpose.CLIENT,
) -> Identity:
    """Verify ``cert`` and return the identity it proves.

    Args:
        cert: the certificate to judge.
        ca_cert: the federation CA certificate.
        now: the time of judgement (timezone-aware UTC).
        revocations: a verified CRL; ``None`` skips the revocation check (offline
            use only; services always pass one).
        roles: the acceptable roles; ``None`` accepts any role.
        purpose: TLS client or server authentication.

    Returns:
        The verified identity.

    Raises:
        CertificateInvalid: with the reason of the first failed check.
    """
    _check_ca_current(_window(ca_cert), now)
    identity, not_before = _static_identity(cert, ca_cert, purpose)
    _dynamic_checks(identity, not_before, now=now, revocations=revocations, roles=roles)
    return identity


def check_certificate(
    cert: x509.Certificate,
    *,
    ca_cert: x509.Certificate,
    now: datetime,
    revocations: RevocationList | None = None,
    roles: Collection[Role] | None = None,
    purpose: Purpose = Purpose.CLIENT,
) -> CheckResult:
    """Like :func:`verify_certificate`, but return the outcome instead of raising."""
    try:
        identity = verify_certificate(
            cert,
            ca_cert=ca_cert,
            now=now,
            revocations=revocations,
            roles=roles,
            purpose=purpose,
        )
    except CertificateInvalid as exc:
        return CheckResult(identity=None, reason=exc.reason, message=str(exc))
    return CheckResult(identity=identity, reason=None, message=f"valid: {identity.describe()}")


def expiry_warning(
    cert: x509.Certificate, now: datetime, within: timedelta = DEFAULT_EXPIRY_WARNING
) -> str | None:
    """A warning if ``cert`` expires within ``within`` of ``now`` (or has expired).

    Services call this for their own certificate at start-up and periodically.

    Returns:
        The warning text, or ``None`` when expiry is further away than ``within``.
    """
    not_after = cert.not_valid_after_utc
    if not_after - now > within:
        return None
    if not_after <= now:
        return f"{_label(cert)} expired at {not_after.isoformat()}; renew it now"
    days = (not_after - now) / timedelta(days=1)
    return (
        f"{_label(cert)} expires in {days:.1f} days ({not_after.isoformat()});"
        " renew it with a new CSR signed by the federation CA"
    )


@dataclass(frozen=True, slots=True)
class _Static:
    identity: Identity | None
    not_before: datetime | None
    reason: InvalidReason | None = None
    message: str = ""


class PeerVerifier:
    """Judges the PEM certificates peers present on RPCs, caching steps 1-3.

    Thread-safe. The cache is keyed by the exact PEM bytes and bounded.
    """

    def __init__(self, ca_cert: x509.Certificate, *, cache_size: int = 1024) -> None:
        """Judge peers against ``ca_cert``, caching up to ``cache_size`` certificates."""
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._ca_cert = ca_cert
        self._ca_window = _window(ca_cert)
        self._cache: OrderedDict[bytes, _Static] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The federation CA certificate peers are judged against."""
        return self._ca_cert

    def _static(self, pem: bytes) -> _Static:
        with self._lock:
            hit = self._cache.get(pem)
            if hit is not None:
                self._cache.move_to_end(pem)
                return hit
        try:
            cert = x509.load_pem_x509_certificate(pem)
            identity, not_before = _static_identity(cert, self._ca_cert, Purpose.CLIENT)
            result = _Static(identity, not_before)
        except ValueError:
            result = _Static(None, None, InvalidReason.MALFORMED, "peer certificate is malformed")
        except CertificateInvalid as exc:
            result = _Static(None, None, exc.reason, str(exc))
        with self._lock:
            self._cache[pem] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def verify_peer(
        self,
        pem: bytes | None,
        *,
        now: datetime,
        revocations: RevocationList | None,
        roles: Collection[Role] | None = None,
    ) -> Identity:
        """Verify a peer's PEM client certificate and return its identity.

        Args:
            pem: the peer certificate (``x509_pem_cert`` of the auth context), or
                ``None`` if the peer presented none.
            now: the time of judgement.
            revocations: the current verified CRL.
            roles: the acceptable roles; ``None`` accepts any role.

        Returns:
            The verified identity.

        Raises:
            CertificateInvalid: with the reason of the first failed check.
        """
        if not pem:
            raise _invalid(InvalidReason.NO_CERTIFICATE, "no client certificate was presented")
        _check_ca_current(self._ca_window, now)
        static = self._static(pem)
        if static.identity is None or static.not_before is None:
            assert static.reason is not None
            raise _invalid(static.reason, static.message)
        _dynamic_checks(
            static.identity, static.not_before, now=now, revocations=revocations, roles=roles
        )
        return static.identity

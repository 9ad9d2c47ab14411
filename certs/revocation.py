"""Certificate revocation lists: verified once, consulted on every call.

:func:`verify_crl` turns an untrusted CRL (RFC 5280 §5) into a
:class:`RevocationList` only if the federation CA signed it and it is current
(``nextUpdate`` not passed). :class:`CrlFile` is a revocation source for
long-running services: each call re-stats the file and reloads it when it changed,
so a revocation takes effect on the next RPC without a restart. Guarantees:
a CRL that fails verification never replaces the last good one; a source whose
last good CRL has passed its ``nextUpdate`` raises instead of answering (fail
closed: revocation status unknown is not "not revoked").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from cryptography import x509

from certs.errors import RevocationListInvalid
from certs.files import load_crl

__all__ = ["CrlFile", "RevocationList", "RevocationSource", "verify_crl"]

_log = structlog.get_logger("certs.revocation")
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationList:
    """The serials a verified, current CRL revokes."""

    serials: frozenset[int]
    this_update: datetime
    next_update: datetime

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is revoked."""
        return serial in self.serials

    def check_current(self, now: datetime) -> None:
        """Raise if the list has passed its ``nextUpdate``.

        Raises:
            RevocationListInvalid: ``now`` is after ``next_update``.
        """
        if now > self.next_update:
            raise RevocationListInvalid(
                f"CRL expired at {self.next_update.isoformat()}; publish a new one"
                " with 'greenhouse ca crl'"
            )


#: What the auth interceptor calls on every RPC to learn the current revocations.
RevocationSource = Callable[[], RevocationList]


def verify_crl(
    crl: x509.CertificateRevocationList, *, ca_cert: x509.Certificate, now: datetime
) -> RevocationList:
    """Verify a CRL against the federation CA and return its revoked serials.

    Args:
        crl: an untrusted CRL.
        ca_cert: the federation CA certificate.
        now: the current time (UTC).

    Returns:
        The verified revocation list.

    Raises:
        RevocationListInvalid: the CRL is not issued and signed by ``ca_cert``,
            lacks ``nextUpdate``, is from the future, or has expired.
    """
    public_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
        raise RevocationListInvalid("CRL is not signed by the federation CA")
    next_update = crl.next_update_utc
    if next_update is None:
        raise RevocationListInvalid("CRL has no nextUpdate")
    if crl.last_update_utc > now + _CLOCK_SKEW:
        raise RevocationListInvalid(
            f"CRL was issued in the future ({crl.last_update_utc.isoformat()})"
        )
    revocations = RevocationList(
        serials=frozenset(entry.serial_number for entry in crl),
        this_update=crl.last_update_utc,
        next_update=next_update,
    )
    revocations.check_current(now)
    return revocations


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CrlFile:
    """A :data:`RevocationSource` backed by a PEM CRL file that may change at any time."""

    def __init__(
        self,
        path: Path,
        *,
        ca_cert: x509.Certificate,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Watch the CRL at ``path``, verified against ``ca_cert``.

        Raises:
            RevocationListInvalid: the CRL cannot be loaded or verified now.
        """
        self._path = path
        self._ca_cert = ca_cert
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._current: RevocationList | None = None
        self()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _reload(self, stamp: tuple[int, int, int] | None, now: datetime) -> None:
        try:
            if stamp is None:
                raise RevocationListInvalid(f"CRL file {self._path} is missing")
            self._current = verify_crl(load_crl(self._path), ca_cert=self._ca_cert, now=now)
        except RevocationListInvalid as exc:
            if self._current is None:
                raise
            _log.warning("crl_reload_failed", path=str(self._path), error=str(exc))
        self._stamp = stamp

    def reload(self) -> RevocationList:
        """Re-read and verify the file now, even if it looks unchanged (an operator's SIGHUP).

        Returns:
            The revocation list now in force.

        Raises:
            RevocationListInvalid: the file is missing, unreadable or not a current CRL
                of the CA; the previous list stays in force.
        """
        now = self._clock()
        stamp = self._file_stamp()
        if stamp is None:
            raise RevocationListInvalid(f"CRL file {self._path} is missing")
        current = verify_crl(load_crl(self._path), ca_cert=self._ca_cert, now=now)
        with self._lock:
            self._current, self._stamp = current, stamp
        return current

    def __call__(self) -> RevocationList:
        """The current revocations, reloading the file if it changed.

        Raises:
            RevocationListInvalid: no valid CRL was ever loaded, or the last good
                one has expired.
        """
        now = self._clock()
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp or self._current is None:
                self._reload(stamp, now)
            current = self._current
        assert current is not None
        current.check_current(now)
        return current

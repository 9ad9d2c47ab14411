"""The federation CA as a directory: key, certificate, issued copies, ledger, CRL.

Layout of a CA directory (mode 0700)::

    ca.pem         the CA certificate (public; distribute it)
    ca.key         the CA private key, 0600, passphrase-encrypted unless the
                   admin explicitly chose otherwise
    issued/        a copy of every issued certificate, ``<serial>.pem``
    issued.jsonl   the ledger of every CA action (:mod:`certs.ledger`)
    crl.pem        the latest CRL

Guarantees: a CSR is signed only after :func:`certs.request.verify_request`
accepted it; the bound role is the CA's choice, and a CSR requesting another role
is refused unless the caller overrides explicitly (recorded in the ledger); a node
certificate always binds a signing key, and a signing key is never bound to two
different names at once; every action is in the ledger before the call returns.
The CA key is loaded only for actions that sign, with the passphrase obtained
from the caller's provider at that moment. Certificate construction is
:mod:`certs.issuance`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.errors import CAError, RequestInvalid, RoleMismatch, UnknownSerial
from certs.files import certificate_pem, ensure_private_directory, load_certificate, write_atomic
from certs.identity import certificate_fingerprint, key_fingerprint, serial_hex
from certs.issuance import (
    Revocation,
    build_ca_certificate,
    build_certificate,
    build_crl,
    validity_window,
)
from certs.keys import generate_tls_key, is_encrypted_key, load_tls_key, write_private_key
from certs.ledger import Action, CertificateRecord, Ledger, LedgerEntry, Status, summarize
from certs.request import VerifiedRequest, verify_request
from certs.roles import CLIENT_ROLES, Kind, Role

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "LEDGER_FILE",
    "MIN_PASSPHRASE_BYTES",
    "REVOCATION_REASONS",
    "CertificateAuthority",
    "PassphraseProvider",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
LEDGER_FILE = "issued.jsonl"
CRL_FILE = "crl.pem"
_ISSUED_DIR = "issued"
MIN_PASSPHRASE_BYTES = 8

#: CLI spelling -> RFC 5280 CRLReason.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

#: Called when the CA key must be decrypted; returns the passphrase.
PassphraseProvider = Callable[[], bytes]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _subject(request: VerifiedRequest) -> x509.Name:
    """The subject from the verified fields only (nothing else the CSR carried)."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, request.name)]
    if request.organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, request.organization))
    return x509.Name(attributes)


class CertificateAuthority:
    """One federation CA directory. Create with :meth:`init`, use with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        certificate: x509.Certificate,
        passphrase: PassphraseProvider | None,
    ) -> None:
        """Use :meth:`init` or :meth:`open` instead."""
        self.directory = directory
        self.certificate = certificate
        self._passphrase = passphrase
        self.ledger = Ledger(directory / LEDGER_FILE)

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        name: str,
        passphrase: bytes | None,
        actor: str,
        days: int = 3650,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory``.

        Args:
            directory: the CA directory (created 0700 if missing).
            name: the CA's common name, e.g. ``"Federation X"``.
            passphrase: encrypts the CA key; ``None`` stores it unencrypted.
            actor: who runs the CA (recorded in the ledger).
            days: the CA certificate's lifetime.
            now: the current time (tests).

        Raises:
            CAError: a CA already exists there, the name or passphrase is unusable.
            KeyFileError, CertificateFileError: files cannot be written.
        """
        now = now or _utcnow()
        if not name.strip() or len(name) > 64:
            raise CAError("CA name must be 1-64 characters")
        if passphrase is not None and len(passphrase) < MIN_PASSPHRASE_BYTES:
            raise CAError(f"CA passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes")
        if (directory / CA_CERT_FILE).exists() or (directory / CA_KEY_FILE).exists():
            raise CAError(f"a CA already exists in {directory}")
        ensure_private_directory(directory)
        ensure_private_directory(directory / _ISSUED_DIR)
        key = generate_tls_key()
        cert = build_ca_certificate(key, name=name, days=days, now=now)
        write_private_key(directory / CA_KEY_FILE, key, passphrase=passphrase)
        write_atomic(directory / CA_CERT_FILE, certificate_pem(cert), mode=0o644, overwrite=False)
        ca = cls(directory, cert, (lambda: passphrase) if passphrase else None)
        ca._record(Action.INIT, cert, role=None, actor=actor, now=now)
        return ca

    @classmethod
    def open(
        cls, directory: Path, *, passphrase: PassphraseProvider | None = None
    ) -> CertificateAuthority:
        """Open an existing CA directory (the key is loaded only when signing).

        Raises:
            CAError: there is no CA in ``directory``.
            CertificateFileError: the CA certificate is unreadable.
        """
        if not (directory / CA_CERT_FILE).is_file():
            raise CAError(f"no CA in {directory} (create one with 'greenhouse ca init')")
        return cls(directory, load_certificate(directory / CA_CERT_FILE), passphrase)

    @property
    def key_encrypted(self) -> bool:
        """Whether the CA key is passphrase-encrypted (``False`` is a warning)."""
        return is_encrypted_key(self.directory / CA_KEY_FILE)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / CA_KEY_FILE
        passphrase = self._passphrase() if self._passphrase and is_encrypted_key(path) else None
        return load_tls_key(path, passphrase=passphrase)

    def _record(
        self,
        action: Action,
        cert: x509.Certificate,
        *,
        role: Role | None,
        actor: str,
        now: datetime,
        signing_key: bytes | None = None,
        requested_role: Role | None = None,
    ) -> None:
        self.ledger.append(
            LedgerEntry(
                action=action,
                when=now,
                who=actor,
                serial=cert.serial_number,
                subject=cert.subject.rfc4514_string(),
                role=role,
                fingerprint=certificate_fingerprint(cert),
                signing_key_fingerprint=None
                if signing_key is None
                else key_fingerprint(signing_key),
                not_after=cert.not_valid_after_utc,
                requested_role=requested_role,
            )
        )

    def _store(self, cert: x509.Certificate) -> None:
        path = self.directory / _ISSUED_DIR / f"{serial_hex(cert.serial_number)}.pem"
        ensure_private_directory(path.parent)
        write_atomic(path, certificate_pem(cert), mode=0o644, overwrite=False)

    def _check_signing_key_unique(self, signing_key: bytes, name: str, now: datetime) -> None:
        fingerprint = key_fingerprint(signing_key)
        for record in self.records(now=now):
            if record.status is Status.VALID and record.signing_key_fingerprint == fingerprint:
                holder = x509.Name.from_rfc4514_string(record.subject)
                names = holder.get_attributes_for_oid(NameOID.COMMON_NAME)
                if not names or names[0].value != name:
                    raise RequestInvalid(
                        f"signing key {fingerprint[:16]}... is already bound to"
                        f" '{record.subject}' (serial {record.serial_hex})"
                    )

    def _admit_request(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        role: Role,
        override_role: bool,
        now: datetime,
    ) -> VerifiedRequest:
        request = verify_request(csr)
        if role not in CLIENT_ROLES:
            raise RequestInvalid(f"role {role.value} cannot be issued from a CSR")
        if request.requested_role not in (None, role) and not override_role:
            raise RoleMismatch(
                f"CSR for {request.name} requests role {request.requested_role}, not"
                f" {role.value}; re-run with --override-role to bind {role.value}"
            )
        if role is Role.NODE and request.signing_key is None:
            raise RequestInvalid(f"node CSR for {request.name} binds no signing key")
        if request.signing_key is not None:
            self._check_signing_key_unique(request.signing_key, request.name, now)
        return request

    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        role: Role,
        actor: str,
        days: int | None = None,
        override_role: bool = False,
        now: datetime | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """Verify a CSR and issue a certificate binding ``role``.

        Args:
            csr: the untrusted request.
            role: the role the CA binds (the CA's decision, not the CSR's).
            actor: who signs (ledger).
            days: lifetime in days; default 90 for nodes, 30 for users.
            override_role: bind ``role`` even though the CSR requests another.
            now: the issuance time (tests).
            not_before: explicit start of validity (tests, back-dating).
            not_after: explicit end of validity (tests).

        Returns:
            The issued certificate (also stored under ``issued/`` and in the ledger).

        Raises:
            RequestInvalid: the CSR fails verification, ``role`` is not a client
                role, a node CSR lacks a signing key, or its key is bound elsewhere.
            RoleMismatch: the CSR requests another role and ``override_role`` is false.
            PassphraseError, KeyFileError: the CA key cannot be loaded.
        """
        now = now or _utcnow()
        request = self._admit_request(csr, role=role, override_role=override_role, now=now)
        validity = validity_window(
            kind=role.kind, now=now, days=days, not_before=not_before, not_after=not_after
        )
        cert = build_certificate(
            ca_cert=self.certificate,
            ca_key=self._key(),
            subject=_subject(request),
            public_key=request.public_key,
            role=role,
            signing_key=request.signing_key,
            validity=validity,
        )
        self._store(cert)
        self._record(
            Action.ISSUE,
            cert,
            role=role,
            actor=actor,
            now=now,
            signing_key=request.signing_key,
            requested_role=request.requested_role,
        )
        return cert

    def issue_server(
        self,
        *,
        hosts: Sequence[str],
        ips: Sequence[IPv4Address | IPv6Address],
        actor: str,
        days: int | None = None,
        now: datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Generate a SuperLink key and issue its server certificate.

        Raises:
            RequestInvalid: no host and no IP given, or a bad lifetime.
            PassphraseError, KeyFileError: the CA key cannot be loaded.
        """
        now = now or _utcnow()
        if not hosts and not ips:
            raise RequestInvalid("a server certificate needs at least one --host or --ip")
        alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
        alt_names += [x509.IPAddress(ip) for ip in ips]
        common_name = hosts[0] if hosts else str(ips[0])
        key = generate_tls_key()
        cert = build_certificate(
            ca_cert=self.certificate,
            ca_key=self._key(),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            public_key=key.public_key(),
            role=Role.SERVER,
            signing_key=None,
            validity=validity_window(kind=Kind.SERVER, now=now, days=days),
            alt_names=alt_names,
        )
        self._store(cert)
        self._record(Action.ISSUE, cert, role=Role.SERVER, actor=actor, now=now)
        return key, cert

    def revoke(
        self, serial: int, *, reason: x509.ReasonFlags, actor: str, now: datetime | None = None
    ) -> LedgerEntry:
        """Record the revocation of ``serial`` (publish with :meth:`crl`).

        Raises:
            UnknownSerial: this CA issued no certificate with ``serial``.
            CAError: ``serial`` is already revoked.
        """
        now = now or _utcnow()
        records = {r.serial: r for r in self.records(now=now)}
        record = records.get(serial)
        if record is None:
            raise UnknownSerial(f"no certificate with serial {serial_hex(serial)} was issued here")
        if record.status is Status.REVOKED:
            assert record.revoked_at is not None
            raise CAError(
                f"serial {serial_hex(serial)} was already revoked at"
                f" {record.revoked_at.isoformat()}"
            )
        entry = LedgerEntry(
            action=Action.REVOKE,
            when=now,
            who=actor,
            serial=serial,
            subject=record.subject,
            role=record.role,
            fingerprint=record.fingerprint,
            reason=reason.value,
        )
        self.ledger.append(entry)
        return entry

    def crl(
        self, *, actor: str, days: int = 7, now: datetime | None = None
    ) -> x509.CertificateRevocationList:
        """Sign a CRL of every revoked serial, valid for ``days`` days.

        Raises:
            CAError: ``days`` is out of range.
            PassphraseError, KeyFileError: the CA key cannot be loaded.
        """
        now = now or _utcnow()
        if not 1 <= days <= 366:
            raise CAError(f"CRL lifetime must be 1..366 days, got {days}")
        entries = self.ledger.entries()
        revocations = [
            Revocation(serial=e.serial, when=e.when, reason=x509.ReasonFlags(e.reason))
            for e in entries
            if e.action is Action.REVOKE and e.serial is not None and e.reason is not None
        ]
        number = 1 + sum(1 for e in entries if e.action is Action.CRL)
        crl = build_crl(
            ca_cert=self.certificate,
            ca_key=self._key(),
            revocations=revocations,
            now=now,
            next_update=now + timedelta(days=days),
            number=number,
        )
        self.ledger.append(
            LedgerEntry(action=Action.CRL, when=now, who=actor, reason=f"crl-number {number}")
        )
        return crl

    def records(self, *, now: datetime | None = None) -> tuple[CertificateRecord, ...]:
        """Every issued certificate with its status at ``now``.

        Raises:
            CAError: the ledger is unreadable or malformed.
        """
        return summarize(self.ledger.entries(), now or _utcnow())

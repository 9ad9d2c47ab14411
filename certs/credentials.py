"""gRPC TLS credentials: mutual TLS servers that reload, and checked clients.

Server side, :class:`ReloadingServerCredentials` builds
``grpc.dynamic_ssl_server_credentials`` that **require** a client certificate
chaining to the federation CA. gRPC calls its fetcher at every new TLS handshake;
the fetcher re-stats the certificate, key and CA files and, when one changed,
loads and checks them (key matches certificate, certificate is a valid server
certificate of the CA) before switching. A rotated certificate is therefore
served to new connections without a restart; a half-written or inconsistent set
is logged and ignored (the previous configuration stays).
:meth:`ReloadingServerCredentials.reload` does the same at once, whatever the
files' stamps say (an operator's SIGHUP), and reports what changed. Revocation
is not a TLS-layer concern here: the CRL is consulted per call by
:class:`certs.grpc_auth.AuthInterceptor`.

Client side, :func:`client_credentials` checks the caller's own certificate
against the CA before dialing, so an expired or foreign certificate is reported
locally with its exact reason instead of as an opaque handshake failure.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs.ca import CertificateAuthority
from certs.errors import CertError, CertificateFileError, KeyFileError
from certs.files import certificate_pem, ensure_private_directory, load_certificate, write_atomic
from certs.identity import Identity
from certs.keys import load_signing_key, load_tls_key, private_key_pem, write_private_key
from certs.roles import Role
from certs.verify import Purpose, expiry_warning, verify_certificate

__all__ = [
    "NodeCredentials",
    "ReloadingServerCredentials",
    "ServerTLSFiles",
    "ServerTLSReload",
    "client_credentials",
    "issue_server_files",
    "node_credentials",
    "write_server_files",
]

_log = structlog.get_logger("certs.credentials")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLSFiles:
    """Where a server's TLS material lives."""

    certificate: Path
    key: Path
    ca_certificate: Path


def _server_paths(out_dir: Path) -> ServerTLSFiles:
    return ServerTLSFiles(
        certificate=out_dir / "server.pem",
        key=out_dir / "server.key",
        ca_certificate=out_dir / "ca.pem",
    )


def _refuse_existing(files: ServerTLSFiles) -> None:
    for path in (files.certificate, files.key):
        if path.exists():
            raise CertificateFileError(f"{path} already exists (refusing to overwrite it)")


def write_server_files(
    out_dir: Path,
    *,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    overwrite: bool = False,
) -> ServerTLSFiles:
    """Write a server's key (0600), certificate and CA certificate into ``out_dir``.

    The files are ``server.key``, ``server.pem`` and ``ca.pem``. With
    ``overwrite`` (rotation) each is replaced atomically; the certificate is
    written last, so a reloading server sees a consistent pair once it changes.

    Raises:
        KeyFileError, CertificateFileError: a file exists (without ``overwrite``)
            or cannot be written.
    """
    ensure_private_directory(out_dir)
    files = _server_paths(out_dir)
    if not overwrite:
        _refuse_existing(files)
    write_atomic(files.ca_certificate, certificate_pem(ca_certificate), mode=0o644, overwrite=True)
    write_private_key(files.key, key, overwrite=overwrite)
    write_atomic(files.certificate, certificate_pem(certificate), mode=0o644, overwrite=overwrite)
    return files


def issue_server_files(
    authority: CertificateAuthority,
    out_dir: Path,
    *,
    hosts: Sequence[str],
    ips: Sequence[IPv4Address | IPv6Address],
    actor: str,
    days: int | None = None,
    overwrite: bool = False,
) -> tuple[ServerTLSFiles, x509.Certificate]:
    """Issue a SuperLink certificate (fresh key) and write it with :func:`write_server_files`.

    Existing files are checked *before* issuing, so a refused write leaves no
    orphan certificate in the ledger.

    Raises:
        CertificateFileError: the files exist and ``overwrite`` is false.
        RequestInvalid, PassphraseError, KeyFileError: as
            :meth:`CertificateAuthority.issue_server` and :func:`write_server_files`.
    """
    if not overwrite:
        _refuse_existing(_server_paths(out_dir))
    key, cert = authority.issue_server(hosts=hosts, ips=ips, actor=actor, days=days)
    files = write_server_files(
        out_dir,
        key=key,
        certificate=cert,
        ca_certificate=authority.certificate,
        overwrite=overwrite,
    )
    return files, cert


@dataclass(frozen=True, slots=True)
class _Loaded:
    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    config: grpc.ServerCertificateConfiguration


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLSReload:
    """What a forced reload of a server's TLS files found (old and new certificates)."""

    previous: x509.Certificate
    current: x509.Certificate
    previous_ca: x509.Certificate
    current_ca: x509.Certificate

    @property
    def certificate_changed(self) -> bool:
        """Whether another server certificate (and so key) is served from now on."""
        return self.previous != self.current

    @property
    def ca_changed(self) -> bool:
        """Whether the CA file now holds another certificate."""
        return self.previous_ca != self.current_ca


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_pair(
    cert_path: Path, key_path: Path, passphrase: bytes | None = None
) -> tuple[x509.Certificate, bytes]:
    cert = load_certificate(cert_path)
    key = load_tls_key(key_path, passphrase=passphrase)
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != _spki(cert):
        raise KeyFileError(f"private key {key_path} does not match certificate {cert_path}")
    return cert, private_key_pem(key)


class ReloadingServerCredentials:
    """mTLS server credentials whose certificate, key and CA reload on change."""

    def __init__(self, files: ServerTLSFiles, *, clock: Callable[[], datetime] = _utcnow) -> None:
        """Load and check the files now.

        Raises:
            CertError: a file is missing, unreadable, too permissive (key), or the
                certificate is not a valid server certificate of the CA.
        """
        self._files = files
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stamp_files()
        self._loaded = self._load()
        self._forced = False  # reload() loaded a configuration gRPC has not fetched yet
        self.reloads = 0

    def _stamp_files(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self._files.certificate, self._files.key, self._files.ca_certificate):
            try:
                info = os.stat(path)
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _load(self) -> _Loaded:
        ca_cert = load_certificate(self._files.ca_certificate)
        cert, key_pem = _load_pair(self._files.certificate, self._files.key)
        now = self._clock()
        verify_certificate(
            cert, ca_cert=ca_cert, now=now, roles={Role.SERVER}, purpose=Purpose.SERVER
        )
        warning = expiry_warning(cert, now)
        if warning is not None:
            _log.warning("server_certificate_expiring", detail=warning)
        config = grpc.ssl_server_certificate_configuration(
            [(key_pem, certificate_pem(cert))], root_certificates=certificate_pem(ca_cert)
        )
        return _Loaded(cert, ca_cert, config)

    @property
    def certificate(self) -> x509.Certificate:
        """The server certificate currently served (for expiry warnings)."""
        return self._loaded.certificate

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration if the files changed or :meth:`reload`
        loaded one, else ``None``."""
        try:
            stamp = self._stamp_files()
            with self._lock:
                forced, self._forced = self._forced, False
                if stamp == self._stamp:
                    return self._loaded.config if forced else None
                self._stamp = stamp
                try:
                    self._loaded = self._load()
                except CertError as exc:
                    _log.warning("server_tls_reload_failed", error=str(exc))
                    return self._loaded.config if forced else None
                self.reloads += 1
                _log.info(
                    "server_tls_reloaded", serial=f"{self._loaded.certificate.serial_number:x}"
                )
                return self._loaded.config
        except Exception:  # never break handshakes: keep serving the current config
            _log.exception("server_tls_fetch_failed")
            return None

    def reload(self) -> ServerTLSReload:
        """Load and check the files now, even if they look unchanged; serve them from the
        next TLS handshake on.

        Returns:
            The certificates before and after.

        Raises:
            CertError: a file is missing, unreadable or inconsistent, or the certificate
                is not a valid server certificate of the CA; the current configuration
                stays in force.
        """
        with self._lock:
            stamp = self._stamp_files()  # before loading: a later change is seen again
            previous = self._loaded
            loaded = self._load()
            self._loaded, self._stamp, self._forced = loaded, stamp, True
            self.reloads += 1
        return ServerTLSReload(
            previous=previous.certificate,
            current=loaded.certificate,
            previous_ca=previous.ca_certificate,
            current_ca=loaded.ca_certificate,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials requiring client certificates from the federation CA."""
        return grpc.dynamic_ssl_server_credentials(
            self._loaded.config, self._fetch, require_client_authentication=True
        )


def client_credentials(
    *,
    ca_certificate: Path,
    certificate: Path,
    key: Path,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials for a node or user, after checking its own certificate.

    Args:
        ca_certificate: the federation CA certificate (trust root for the server).
        certificate: the caller's certificate.
        key: the caller's TLS private key (mode 0600).
        passphrase: the key's passphrase, if encrypted.
        now: the current time (tests).

    Returns:
        Credentials for ``grpc.secure_channel``.

    Raises:
        CertificateInvalid: the caller's certificate would be refused (foreign CA,
            expired, not yet valid, wrong usage, missing extension).
        KeyFileError, KeyPermissionError, PassphraseError, CertificateFileError:
            a file is unusable.
    """
    ca_cert = load_certificate(ca_certificate)
    cert, key_pem = _load_pair(certificate, key, passphrase)
    verify_certificate(cert, ca_cert=ca_cert, now=now or _utcnow(), purpose=Purpose.CLIENT)
    return grpc.ssl_channel_credentials(
        root_certificates=certificate_pem(ca_cert),
        private_key=key_pem,
        certificate_chain=certificate_pem(cert),
    )


@dataclass(frozen=True)
class NodeCredentials:
    """A node's checked identity: TLS channel credentials, its signing key, who it is."""

    channel_credentials: grpc.ChannelCredentials
    signing_key: Ed25519PrivateKey
    identity: Identity


def node_credentials(
    *,
    ca_certificate: Path,
    certificate: Path,
    key: Path,
    signing_key: Path,
    now: datetime | None = None,
) -> NodeCredentials:
    """A node's credentials, after checking that its three files make one identity.

    The certificate must be a valid node certificate of the CA, the TLS key its
    key, and the signing key the one the CA bound into it: a mismatch would only
    show later as refused requests.

    Raises:
        CertificateInvalid: the certificate would be refused, or is not a node's.
        KeyFileError: a key does not match the certificate (or is unusable).
        CertificateFileError, KeyPermissionError, PassphraseError: a file is unusable.
    """
    ca_cert = load_certificate(ca_certificate)
    cert, key_pem = _load_pair(certificate, key)
    identity = verify_certificate(
        cert, ca_cert=ca_cert, now=now or _utcnow(), roles={Role.NODE}, purpose=Purpose.CLIENT
    )
    signer = load_signing_key(signing_key)
    if signer.public_key().public_bytes_raw() != identity.signing_key:
        raise KeyFileError(
            f"signing key {signing_key} is not the one certificate {certificate} binds"
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificate_pem(ca_cert),
        private_key=key_pem,
        certificate_chain=certificate_pem(cert),
    )
    return NodeCredentials(credentials, signer, identity)

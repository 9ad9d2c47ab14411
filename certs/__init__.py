"""The federation PKI: CA, CSRs, roles, revocation, mTLS and node request signing.

One federation CA (ECDSA P-256) issues server, node and user certificates. The
role and the holder's Ed25519 signing key are bound in each certificate by the
CA (:mod:`certs.extensions`), so anyone holding the CA certificate can tell which
signing key belongs to which node without trusting the SuperLink. Peer
certificates are judged only in :mod:`certs.verify`; RPCs are admitted by
:class:`AuthInterceptor` (deny by default, CRL checked on every call, signed node
requests with a replay window). This package imports nothing from ``appliance``.

Example (a SuperLink guarding one method, and a SuperNode calling it)::

    import grpc
    from certs import (AuthInterceptor, CrlFile, ReloadingServerCredentials, Role,
                       ServerTLSFiles, SigningInterceptor, allow, client_credentials,
                       identity_from_context, load_certificate, load_signing_key)

    files = ServerTLSFiles(certificate=tls / "server.pem", key=tls / "server.key",
                           ca_certificate=tls / "ca.pem")
    ca_cert = load_certificate(files.ca_certificate)
    auth = AuthInterceptor({"/greenhouse.Fleet/Pull": allow(Role.NODE)},
                           ca_cert=ca_cert, crl_source=CrlFile(tls / "crl.pem", ca_cert=ca_cert))
    server = grpc.server(executor, interceptors=[auth])
    server.add_secure_port("127.0.0.1:9092", ReloadingServerCredentials(files).credentials())
    # in a handler: identity_from_context(context).name == "st-marys"

    creds = client_credentials(ca_certificate=site / "ca.pem", certificate=site / "st-marys.pem",
                               key=site / "st-marys.key")
    signer = SigningInterceptor(load_signing_key(site / "st-marys-signing.key"))
    channel = grpc.intercept_channel(grpc.secure_channel("superlink:9092", creds), signer)
"""

from __future__ import annotations

from certs.ca import REVOCATION_REASONS, CertificateAuthority
from certs.credentials import (
    NodeCredentials,
    ReloadingServerCredentials,
    ServerTLSFiles,
    client_credentials,
    issue_server_files,
    node_credentials,
    write_server_files,
)
from certs.errors import (
    AccessDenied,
    AccessReason,
    CAError,
    CertError,
    CertificateFileError,
    CertificateInvalid,
    IdentityUnavailable,
    InvalidReason,
    KeyFileError,
    KeyPermissionError,
    MalformedEnvelope,
    PassphraseError,
    ReplayDetected,
    RequestInvalid,
    RevocationListInvalid,
    RoleMismatch,
    SignatureError,
    SignatureInvalid,
    SignatureMissing,
    StaleRequest,
    UnknownSerial,
)
from certs.files import certificate_pem, load_certificate, load_crl, load_csr
from certs.grpc_auth import (
    AuthInterceptor,
    MethodPolicy,
    Refusal,
    allow,
    identity_from_context,
    status_for,
)
from certs.grpc_client import SigningInterceptor
from certs.identity import (
    CertificateInfo,
    Identity,
    describe_certificate,
    parse_serial,
    serial_hex,
)
from certs.keys import (
    check_key_permissions,
    load_or_create_signing_key,
    load_private_key,
    load_signing_key,
    load_tls_key,
    write_private_key,
)
from certs.ledger import CertificateRecord, LedgerEntry, Status
from certs.request import RequestFiles, create_request, verify_request
from certs.revocation import CrlFile, RevocationList, RevocationSource, verify_crl
from certs.roles import CLIENT_ROLES, Kind, Role, parse_role
from certs.signing import (
    DEFAULT_REPLAY_WINDOW_S,
    SIGNATURE_HEADER,
    EnvelopeKind,
    EnvelopeSigner,
    NonceCache,
    RequestVerifier,
    SignedEnvelope,
    sign_envelope,
    verify_envelope,
)
from certs.verify import (
    CheckResult,
    PeerVerifier,
    Purpose,
    check_certificate,
    expiry_warning,
    verify_certificate,
)

__all__ = [
    "CLIENT_ROLES",
    "DEFAULT_REPLAY_WINDOW_S",
    "REVOCATION_REASONS",
    "SIGNATURE_HEADER",
    "AccessDenied",
    "AccessReason",
    "AuthInterceptor",
    "CAError",
    "CertError",
    "CertificateAuthority",
    "CertificateFileError",
    "CertificateInfo",
    "CertificateInvalid",
    "CertificateRecord",
    "CheckResult",
    "CrlFile",
    "EnvelopeKind",
    "EnvelopeSigner",
    "Identity",
    "IdentityUnavailable",
    "InvalidReason",
    "KeyFileError",
    "KeyPermissionError",
    "Kind",
    "LedgerEntry",
    "MalformedEnvelope",
    "MethodPolicy",
    "NodeCredentials",
    "NonceCache",
    "PassphraseError",
    "PeerVerifier",
    "Purpose",
    "Refusal",
    "ReloadingServerCredentials",
    "ReplayDetected",
    "RequestFiles",
    "RequestInvalid",
    "RequestVerifier",
    "RevocationList",
    "RevocationListInvalid",
    "RevocationSource",
    "Role",
    "RoleMismatch",
    "ServerTLSFiles",
    "SignatureError",
    "SignatureInvalid",
    "SignatureMissing",
    "SignedEnvelope",
    "SigningInterceptor",
    "StaleRequest",
    "Status",
    "UnknownSerial",
    "allow",
    "certificate_pem",
    "check_certificate",
    "check_key_permissions",
    "client_credentials",
    "create_request",
    "describe_certificate",
    "expiry_warning",
    "identity_from_context",
    "issue_server_files",
    "load_certificate",
    "load_crl",
    "load_csr",
    "load_or_create_signing_key",
    "load_private_key",
    "load_signing_key",
    "load_tls_key",
    "node_credentials",
    "parse_role",
    "parse_serial",
    "serial_hex",
    "sign_envelope",
    "status_for",
    "verify_certificate",
    "verify_crl",
    "verify_envelope",
    "verify_request",
    "write_private_key",
    "write_server_files",
]

"""PKI files and an mTLS echo server for the certs integration tests (used by conftest)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from certs import (
    AuthInterceptor,
    CertificateAuthority,
    CrlFile,
    Identity,
    ReloadingServerCredentials,
    Role,
    ServerTLSFiles,
    allow,
    certificate_pem,
    client_credentials,
    create_request,
    identity_from_context,
    load_csr,
    load_signing_key,
    write_server_files,
)
from certs.files import write_atomic

NODE_METHOD = "/test.Echo/NodeEcho"
USER_METHOD = "/test.Echo/UserEcho"
UNLISTED_METHOD = "/test.Echo/Unlisted"
METHODS = {
    NODE_METHOD: allow(Role.NODE),
    USER_METHOD: allow(Role.DATA_SCIENTIST, Role.AUDITOR),
}


@dataclass(frozen=True)
class Party:
    name: str
    cert_path: Path
    key_path: Path
    signing_key: Ed25519PrivateKey
    cert: x509.Certificate
    ca_path: Path

    def credentials(self) -> grpc.ChannelCredentials:
        return client_credentials(
            ca_certificate=self.ca_path, certificate=self.cert_path, key=self.key_path
        )

    def unchecked_credentials(self) -> grpc.ChannelCredentials:
        """Credentials without the client-side preflight (to send bad certificates)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_path.read_bytes(),
            private_key=self.key_path.read_bytes(),
            certificate_chain=self.cert_path.read_bytes(),
        )


class Federation:
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.ca = CertificateAuthority.init(
            directory / "ca", name=name, passphrase=None, actor="tester"
        )
        self.ca_path = directory / "ca" / "ca.pem"
        self.crl_path = directory / "ca" / "crl.pem"
        self.publish_crl()

    def party(self, name: str, role: Role = Role.NODE, **validity: datetime) -> Party:
        files = create_request(self.directory / name, name=name, organization="Test", role=role)
        cert = self.ca.sign(load_csr(files.csr), role=role, actor="tester", **validity)
        cert_path = write_atomic(
            self.directory / name / f"{name}.pem", certificate_pem(cert), mode=0o644, overwrite=True
        )
        return Party(
            name, cert_path, files.tls_key, load_signing_key(files.signing_key), cert, self.ca_path
        )

    def publish_crl(self) -> None:
        crl = self.ca.crl(actor="tester")
        write_atomic(self.crl_path, crl.public_bytes(Encoding.PEM), mode=0o644, overwrite=True)

    def server_files(self, out_dir: Path, *, overwrite: bool = False) -> ServerTLSFiles:
        key, cert = self.ca.issue_server(
            hosts=["localhost"], ips=[ip_address("127.0.0.1")], actor="tester"
        )
        return write_server_files(
            out_dir,
            key=key,
            certificate=cert,
            ca_certificate=self.ca.certificate,
            overwrite=overwrite,
        )


def _describe(identity: Identity) -> bytes:
    return (
        f"{identity.kind.value}:{identity.name}:{identity.role.value}:{identity.serial_hex}:"
    ).encode()


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return _describe(identity_from_context(context)) + request


class EchoServer:
    """The echo service behind ReloadingServerCredentials + AuthInterceptor."""

    def __init__(
        self,
        federation: Federation,
        files: ServerTLSFiles,
        *,
        is_enrolled: Callable[[Identity], bool] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.files = files
        self.tls = ReloadingServerCredentials(files)
        extra = {} if clock is None else {"clock": clock}
        self.interceptor = AuthInterceptor(
            METHODS,
            ca_cert=federation.ca.certificate,
            crl_source=CrlFile(federation.crl_path, ca_cert=federation.ca.certificate),
            is_enrolled=is_enrolled,
            **extra,
        )
        handlers = {
            name.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(_echo)
            for name in (NODE_METHOD, USER_METHOD, UNLISTED_METHOD)
        }
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[self.interceptor]
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", self.tls.credentials())
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


def now_utc() -> datetime:
    return datetime.now(UTC)

"""Shared PKI fixtures for the certs unit tests: one session CA, issued on demand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import CertificateAuthority, Role
from certs.keys import generate_signing_key, generate_tls_key
from certs.request import build_request

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: Ed25519PrivateKey | None


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    now: datetime

    @property
    def ca_cert(self) -> x509.Certificate:
        return self.ca.certificate

    def issue(
        self,
        name: str,
        role: Role = Role.NODE,
        *,
        signing: bool = True,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        tls_key = generate_tls_key()
        signing_key = generate_signing_key() if signing else None
        csr = build_request(
            name=name,
            organization="Test Org",
            role=role,
            tls_key=tls_key,
            signing_key=signing_key,
        )
        cert = self.ca.sign(
            csr,
            role=role,
            actor="tester",
            now=self.now,
            not_before=not_before,
            not_after=not_after,
        )
        return Issued(cert, tls_key, signing_key)


def _make_ca(directory: Path, name: str) -> CertificateAuthority:
    return CertificateAuthority.init(
        directory, name=name, passphrase=None, actor="tester", now=NOW - timedelta(days=1)
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(_make_ca(tmp_path_factory.mktemp("ca"), "Federation Test"), NOW)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(_make_ca(tmp_path_factory.mktemp("foreign-ca"), "Foreign Federation"), NOW)


@pytest.fixture(scope="session")
def node(pki: Pki) -> Issued:
    return pki.issue("st-marys", Role.NODE)


@pytest.fixture(scope="session")
def scientist(pki: Pki) -> Issued:
    return pki.issue("alice", Role.DATA_SCIENTIST)


@pytest.fixture
def fresh_ca(tmp_path: Path) -> Pki:
    return Pki(_make_ca(tmp_path / "ca", "Federation Fresh"), NOW)

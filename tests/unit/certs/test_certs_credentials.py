"""TLS credential builders: consistent files only, preflight of the caller's certificate."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from certs import (
    CertificateFileError,
    CertificateInvalid,
    EnvelopeKind,
    EnvelopeSigner,
    InvalidReason,
    KeyFileError,
    KeyPermissionError,
    ReloadingServerCredentials,
    Role,
    certificate_pem,
    client_credentials,
    node_credentials,
    sign_envelope,
    write_server_files,
)
from certs.files import write_atomic
from certs.keys import generate_signing_key, write_private_key


@pytest.fixture
def server_files(fresh_ca, tmp_path: Path):
    key, cert = fresh_ca.ca.issue_server(hosts=["localhost"], ips=[], actor="t", now=fresh_ca.now)
    return write_server_files(
        tmp_path / "tls", key=key, certificate=cert, ca_certificate=fresh_ca.ca_cert
    )


def test_server_files_are_written_once_unless_rotating(fresh_ca, server_files) -> None:
    assert oct(os.stat(server_files.key).st_mode & 0o777) == "0o600"
    key, cert = fresh_ca.ca.issue_server(hosts=["localhost"], ips=[], actor="t", now=fresh_ca.now)
    with pytest.raises(CertificateFileError, match="already exists"):
        write_server_files(
            server_files.key.parent, key=key, certificate=cert, ca_certificate=fresh_ca.ca_cert
        )
    write_server_files(
        server_files.key.parent,
        key=key,
        certificate=cert,
        ca_certificate=fresh_ca.ca_cert,
        overwrite=True,
    )
    assert ReloadingServerCredentials(
        server_files, clock=lambda: fresh_ca.now
    ).certificate.serial_number == (cert.serial_number)


def test_server_credentials_refuse_inconsistent_files(fresh_ca, server_files) -> None:
    other_key, _ = fresh_ca.ca.issue_server(hosts=["other"], ips=[], actor="t")
    write_private_key(server_files.key, other_key, overwrite=True)
    with pytest.raises(KeyFileError, match="does not match certificate"):
        ReloadingServerCredentials(server_files, clock=lambda: fresh_ca.now)
    os.chmod(server_files.key, 0o644)
    with pytest.raises(KeyPermissionError):
        ReloadingServerCredentials(server_files, clock=lambda: fresh_ca.now)


def test_server_credentials_refuse_a_client_certificate(fresh_ca, server_files) -> None:
    node = fresh_ca.issue("st-marys")
    write_private_key(server_files.key, node.tls_key, overwrite=True)
    write_atomic(server_files.certificate, certificate_pem(node.cert), mode=0o644, overwrite=True)
    with pytest.raises(CertificateInvalid, match="not valid for TLS server authentication"):
        ReloadingServerCredentials(server_files, clock=lambda: fresh_ca.now)


def test_client_preflight_names_the_reason(fresh_ca, tmp_path: Path) -> None:
    now = fresh_ca.now
    expired = fresh_ca.issue(
        "late", not_before=now - timedelta(days=3), not_after=now - timedelta(days=1)
    )
    cert = write_atomic(
        tmp_path / "late.pem", certificate_pem(expired.cert), mode=0o644, overwrite=False
    )
    key = write_private_key(tmp_path / "late.key", expired.tls_key)
    with pytest.raises(CertificateInvalid) as info:
        client_credentials(
            ca_certificate=fresh_ca.ca.directory / "ca.pem", certificate=cert, key=key, now=now
        )
    assert info.value.reason is InvalidReason.EXPIRED
    wrong = write_private_key(tmp_path / "wrong.key", fresh_ca.issue("x").tls_key)
    with pytest.raises(KeyFileError, match="does not match certificate"):
        client_credentials(
            ca_certificate=fresh_ca.ca.directory / "ca.pem", certificate=cert, key=wrong, now=now
        )


def test_signer_matches_openssl_and_hides_the_key() -> None:
    key = generate_signing_key()
    signer = EnvelopeSigner(key)
    envelope = signer.sign(
        kind=EnvelopeKind.REPLY, method="m", body=b"b", timestamp_ms=1, nonce=bytes(16)
    )
    assert envelope == sign_envelope(
        key, kind=EnvelopeKind.REPLY, method="m", body=b"b", timestamp_ms=1, nonce=bytes(16)
    )
    key.public_key().verify(envelope.signature, envelope.signed_bytes())  # OpenSSL agrees
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert raw.hex() not in repr(signer) and "EnvelopeSigner(key=" in repr(signer)


def test_identity_repr_has_no_key_bytes(pki, node) -> None:
    from certs import verify_certificate

    identity = verify_certificate(node.cert, ca_cert=pki.ca_cert, now=pki.now)
    assert identity.signing_key is not None
    assert identity.signing_key.hex() not in repr(identity)


def test_server_credentials_reload_now_and_keep_serving_on_errors(fresh_ca, server_files) -> None:
    creds = ReloadingServerCredentials(server_files, clock=lambda: fresh_ca.now)
    first = creds.certificate
    same = creds.reload()
    assert not same.certificate_changed and not same.ca_changed

    key, cert = fresh_ca.ca.issue_server(hosts=["localhost"], ips=[], actor="t", now=fresh_ca.now)
    write_server_files(
        server_files.key.parent,
        key=key,
        certificate=cert,
        ca_certificate=fresh_ca.ca_cert,
        overwrite=True,
    )
    change = creds.reload()
    assert change.certificate_changed and not change.ca_changed
    assert change.previous == first and change.current == cert == creds.certificate
    assert creds._fetch() is not None  # the next handshake gets the reloaded configuration
    assert creds._fetch() is None  # and only once

    node = fresh_ca.issue("st-marys")  # not a server certificate: refused, the old one stays
    write_private_key(server_files.key, node.tls_key, overwrite=True)
    write_atomic(server_files.certificate, certificate_pem(node.cert), mode=0o644, overwrite=True)
    with pytest.raises(CertificateInvalid, match="not valid for TLS server authentication"):
        creds.reload()
    assert creds.certificate == cert
    assert creds._fetch() is None


def _node_files(tmp_path: Path, issued, name: str) -> tuple[Path, Path, Path | None]:
    cert = write_atomic(
        tmp_path / f"{name}.pem", certificate_pem(issued.cert), mode=0o644, overwrite=True
    )
    key = write_private_key(tmp_path / f"{name}.key", issued.tls_key, overwrite=True)
    signing = (
        None
        if issued.signing_key is None
        else write_private_key(tmp_path / f"{name}-signing.key", issued.signing_key, overwrite=True)
    )
    return cert, key, signing


def test_node_credentials_need_one_consistent_node_identity(fresh_ca, tmp_path: Path) -> None:
    ca = fresh_ca.ca.directory / "ca.pem"
    cert, key, signing = _node_files(tmp_path, fresh_ca.issue("st-marys"), "st-marys")
    assert signing is not None
    checked = node_credentials(
        ca_certificate=ca, certificate=cert, key=key, signing_key=signing, now=fresh_ca.now
    )
    assert checked.identity.name == "st-marys"
    raw = checked.signing_key.public_key().public_bytes_raw()
    assert raw == checked.identity.signing_key

    # The signing key of another node (valid, same CA) is not the one this certificate binds.
    _, _, other = _node_files(tmp_path, fresh_ca.issue("other"), "other")
    assert other is not None
    with pytest.raises(KeyFileError, match="is not the one certificate"):
        node_credentials(
            ca_certificate=ca, certificate=cert, key=key, signing_key=other, now=fresh_ca.now
        )
    # A user's certificate is not a node's, whatever keys come with it.
    user_cert, user_key, user_signing = _node_files(
        tmp_path, fresh_ca.issue("alice", Role.DATA_SCIENTIST), "alice"
    )
    with pytest.raises(CertificateInvalid) as info:
        node_credentials(
            ca_certificate=ca,
            certificate=user_cert,
            key=user_key,
            signing_key=user_signing or signing,
            now=fresh_ca.now,
        )
    assert info.value.reason is InvalidReason.WRONG_ROLE

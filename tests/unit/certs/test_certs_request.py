"""CSRs: made locally with both keys, checked strictly at the CA."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs import RequestInvalid, Role, create_request, load_csr, verify_request
from certs.extensions import POP_OID, SIGNING_KEY_OID, read_signing_key
from certs.keys import generate_signing_key, generate_tls_key, load_signing_key
from certs.request import build_request


def test_create_request_writes_private_keys_0600_and_a_csr(tmp_path: Path) -> None:
    files = create_request(
        tmp_path / "out", name="st-marys", organization="St Mary's", role=Role.NODE
    )
    for key in (files.tls_key, files.signing_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    request = verify_request(load_csr(files.csr))
    assert request.name == "st-marys"
    assert request.organization == "St Mary's"
    assert request.requested_role is Role.NODE
    signing_public = load_signing_key(files.signing_key).public_key().public_bytes_raw()
    assert request.signing_key == signing_public
    assert "PRIVATE" not in files.csr.read_text()


def test_create_request_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    create_request(tmp_path, name="n1", organization=None, role=Role.AUDITOR)
    with pytest.raises(Exception, match="already exists"):
        create_request(tmp_path, name="n1", organization=None, role=Role.AUDITOR)


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "x" * 65, "semi;colon"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RequestInvalid, match="name"):
        create_request(tmp_path, name=name, organization=None, role=Role.NODE)


def test_server_role_cannot_be_requested(tmp_path: Path) -> None:
    with pytest.raises(RequestInvalid, match="issue-server"):
        create_request(tmp_path, name="srv", organization=None, role=Role.SERVER)


def _csr_with(extensions: list[x509.ExtensionType]) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mallory")])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(generate_tls_key(), hashes.SHA256())


def test_someone_elses_signing_key_cannot_be_bound() -> None:
    victim = build_request(
        name="victim",
        organization=None,
        role=Role.NODE,
        tls_key=generate_tls_key(),
        signing_key=generate_signing_key(),
    )
    key_ext = victim.extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    pop_ext = victim.extensions.get_extension_for_oid(POP_OID).value
    stolen = _csr_with([key_ext, pop_ext])
    assert read_signing_key(stolen) == read_signing_key(victim)
    with pytest.raises(RequestInvalid, match="possession proof does not verify"):
        verify_request(stolen)


def test_signing_key_without_proof_is_refused() -> None:
    victim = build_request(
        name="victim",
        organization=None,
        role=Role.NODE,
        tls_key=generate_tls_key(),
        signing_key=generate_signing_key(),
    )
    key_ext = victim.extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    with pytest.raises(RequestInvalid, match="without proof of possession"):
        verify_request(_csr_with([key_ext]))


def test_malformed_role_extension_is_refused() -> None:
    bogus = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("2.25.180282126905683909871239825891111341880.1"), b"\x0c\x03god"
    )
    with pytest.raises(RequestInvalid, match="invalid role"):
        verify_request(_csr_with([bogus]))


def test_csr_without_signing_key_is_accepted_for_users() -> None:
    csr = build_request(
        name="bob",
        organization=None,
        role=Role.AUDITOR,
        tls_key=generate_tls_key(),
        signing_key=None,
    )
    request = verify_request(csr)
    assert request.signing_key is None
    assert request.requested_role is Role.AUDITOR


def test_garbage_csr_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csr"
    path.write_text("hello")
    with pytest.raises(RequestInvalid, match="not a PEM certificate signing request"):
        load_csr(path)

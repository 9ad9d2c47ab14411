"""The CA directory: init, issuance rules, revocation, CRL and the ledger."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import (
    CAError,
    CertificateAuthority,
    PassphraseError,
    RequestInvalid,
    Role,
    RoleMismatch,
    Status,
    UnknownSerial,
    describe_certificate,
)
from certs.keys import generate_signing_key, generate_tls_key
from certs.request import build_request

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)  # the conftest's fixed clock


def _csr(name: str, role: Role, *, signing: bool = True) -> x509.CertificateSigningRequest:
    return build_request(
        name=name,
        organization="Org",
        role=role,
        tls_key=generate_tls_key(),
        signing_key=generate_signing_key() if signing else None,
    )


def test_init_creates_private_encrypted_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "ca", name="Federation X", passphrase=b"long enough", actor="admin", now=NOW
    )
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.key").st_mode) == 0o600
    assert ca.key_encrypted
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    entries = ca.ledger.entries()
    assert [e.action.value for e in entries] == ["init"]
    assert entries[0].who == "admin"


def test_init_refuses_existing_ca_and_short_passphrase(fresh_ca, tmp_path: Path) -> None:
    with pytest.raises(CAError, match="already exists"):
        CertificateAuthority.init(fresh_ca.ca.directory, name="Again", passphrase=None, actor="a")
    with pytest.raises(CAError, match="at least 8 bytes"):
        CertificateAuthority.init(tmp_path / "x", name="X", passphrase=b"short", actor="a")


def test_open_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="no CA in"):
        CertificateAuthority.open(tmp_path)


def test_encrypted_ca_asks_for_passphrase_only_when_signing(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path, name="Enc", passphrase=b"s3cret-pass", actor="a", now=NOW)
    asked: list[int] = []

    def wrong() -> bytes:
        asked.append(1)
        return b"wrong-pass"

    ca = CertificateAuthority.open(tmp_path, passphrase=wrong)
    assert ca.records(now=NOW) == ()
    assert asked == []
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        ca.sign(_csr("n", Role.NODE), role=Role.NODE, actor="a", now=NOW)
    ok = CertificateAuthority.open(tmp_path, passphrase=lambda: b"s3cret-pass")
    assert ok.sign(_csr("n", Role.NODE), role=Role.NODE, actor="a", now=NOW)


@pytest.mark.parametrize(
    ("role", "days"),
    [(Role.NODE, 90), (Role.DATA_SCIENTIST, 30), (Role.AUDITOR, 30), (Role.FEDERATION_ADMIN, 30)],
)
def test_sign_binds_role_and_default_lifetime(fresh_ca, role: Role, days: int) -> None:
    cert = fresh_ca.ca.sign(_csr("someone", role), role=role, actor="a", now=NOW)
    info = describe_certificate(cert)
    assert info.role is role
    assert info.name == "someone"
    assert info.signing_key is not None
    assert info.not_after - NOW == timedelta(days=days)
    assert (fresh_ca.ca.directory / "issued" / f"{info.serial_hex}.pem").is_file()
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_role_mismatch_is_refused_unless_overridden(fresh_ca) -> None:
    csr = _csr("carol", Role.DATA_SCIENTIST)
    with pytest.raises(RoleMismatch, match="requests role data-scientist, not auditor"):
        fresh_ca.ca.sign(csr, role=Role.AUDITOR, actor="a", now=NOW)
    cert = fresh_ca.ca.sign(csr, role=Role.AUDITOR, actor="a", now=NOW, override_role=True)
    assert describe_certificate(cert).role is Role.AUDITOR
    last = fresh_ca.ca.ledger.entries()[-1]
    assert last.role is Role.AUDITOR
    assert last.requested_role is Role.DATA_SCIENTIST


def test_node_needs_signing_key_and_server_role_is_not_signable(fresh_ca) -> None:
    with pytest.raises(RequestInvalid, match="binds no signing key"):
        fresh_ca.ca.sign(_csr("n", Role.NODE, signing=False), role=Role.NODE, actor="a", now=NOW)
    with pytest.raises(RequestInvalid, match="cannot be issued from a CSR"):
        fresh_ca.ca.sign(_csr("n", Role.NODE), role=Role.SERVER, actor="a", now=NOW)


@pytest.mark.parametrize("days", [0, 398])
def test_lifetime_is_bounded(fresh_ca, days: int) -> None:
    with pytest.raises(RequestInvalid, match=r"lifetime must be 1\.\.397 days"):
        fresh_ca.ca.sign(_csr("n", Role.NODE), role=Role.NODE, actor="a", days=days, now=NOW)


def test_signing_key_cannot_be_bound_to_two_names(fresh_ca) -> None:
    tls_key, signing_key = generate_tls_key(), generate_signing_key()

    def csr(name: str) -> x509.CertificateSigningRequest:
        return build_request(
            name=name, organization=None, role=Role.NODE, tls_key=tls_key, signing_key=signing_key
        )

    fresh_ca.ca.sign(csr("site-a"), role=Role.NODE, actor="a", now=NOW)
    fresh_ca.ca.sign(csr("site-a"), role=Role.NODE, actor="a", now=NOW)  # renewal is fine
    with pytest.raises(RequestInvalid, match=r"already bound to '.*CN=site-a'"):
        fresh_ca.ca.sign(csr("site-b"), role=Role.NODE, actor="a", now=NOW)


def test_issue_server_certificate(fresh_ca) -> None:
    _, cert = fresh_ca.ca.issue_server(
        hosts=["localhost"], ips=[ip_address("127.0.0.1")], actor="a", now=NOW
    )
    assert describe_certificate(cert).role is Role.SERVER
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - NOW == timedelta(days=90)
    with pytest.raises(RequestInvalid, match="at least one --host or --ip"):
        fresh_ca.ca.issue_server(hosts=[], ips=[], actor="a", now=NOW)


def test_revoke_crl_and_statuses(fresh_ca) -> None:
    ca = fresh_ca.ca
    live = ca.sign(_csr("live", Role.NODE), role=Role.NODE, actor="a", now=NOW)
    gone = ca.sign(_csr("gone", Role.NODE), role=Role.NODE, actor="a", now=NOW)
    old = ca.sign(
        _csr("old", Role.AUDITOR),
        role=Role.AUDITOR,
        actor="a",
        now=NOW,
        not_before=NOW - timedelta(days=10),
        not_after=NOW - timedelta(days=1),
    )
    ca.revoke(gone.serial_number, reason=x509.ReasonFlags.key_compromise, actor="b", now=NOW)
    with pytest.raises(CAError, match="already revoked"):
        ca.revoke(gone.serial_number, reason=x509.ReasonFlags.superseded, actor="b", now=NOW)
    with pytest.raises(UnknownSerial, match="no certificate with serial abc"):
        ca.revoke(0xABC, reason=x509.ReasonFlags.superseded, actor="b", now=NOW)
    statuses = {r.serial: r.status for r in ca.records(now=NOW)}
    assert statuses == {
        live.serial_number: Status.VALID,
        gone.serial_number: Status.REVOKED,
        old.serial_number: Status.EXPIRED,
    }
    crl = ca.crl(actor="b", now=NOW, days=7)
    assert [r.serial_number for r in crl] == [gone.serial_number]
    revoked = crl.get_revoked_certificate_by_serial_number(gone.serial_number)
    assert revoked is not None
    assert revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    assert crl.next_update_utc == NOW + timedelta(days=7)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert (
        ca.crl(actor="b", now=NOW)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        == 2
    )


def test_ledger_lines_carry_what_the_audit_needs(fresh_ca) -> None:
    cert = fresh_ca.ca.sign(_csr("st-marys", Role.NODE), role=Role.NODE, actor="admin", now=NOW)
    fresh_ca.ca.revoke(
        cert.serial_number, reason=x509.ReasonFlags.superseded, actor="admin", now=NOW
    )
    lines = (fresh_ca.ca.directory / "issued.jsonl").read_text().splitlines()
    issue, revoke = json.loads(lines[-2]), json.loads(lines[-1])
    info = describe_certificate(cert)
    assert issue["action"] == "issue"
    assert issue["serial"] == info.serial_hex
    assert issue["subject"] == info.subject
    assert issue["role"] == "node"
    assert issue["fingerprint"] == info.fingerprint
    assert issue["signing_key_fingerprint"] == info.signing_key_fingerprint
    assert issue["who"] == "admin" and issue["when"].startswith("2030-06-01")
    assert revoke["action"] == "revoke" and revoke["reason"] == "superseded"


def test_malformed_ledger_is_reported_with_line_number(fresh_ca) -> None:
    with (fresh_ca.ca.directory / "issued.jsonl").open("a") as ledger:
        ledger.write("{not json\n")
    with pytest.raises(CAError, match="line 2 is malformed"):
        fresh_ca.ca.records(now=NOW)

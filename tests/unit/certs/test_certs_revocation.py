"""CRLs: verified against the CA, reloaded on change, fail closed when stale."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import CrlFile, RevocationListInvalid, verify_crl


def _write(path: Path, crl: x509.CertificateRevocationList) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def test_verify_crl(fresh_ca) -> None:
    node = fresh_ca.issue("n1")
    fresh_ca.ca.revoke(
        node.cert.serial_number, reason=x509.ReasonFlags.superseded, actor="t", now=fresh_ca.now
    )
    crl = fresh_ca.ca.crl(actor="t", now=fresh_ca.now)
    revocations = verify_crl(crl, ca_cert=fresh_ca.ca_cert, now=fresh_ca.now)
    assert revocations.is_revoked(node.cert.serial_number)
    assert not revocations.is_revoked(node.cert.serial_number + 1)


def test_foreign_and_stale_crls_are_refused(fresh_ca, foreign_pki) -> None:
    foreign = foreign_pki.ca.crl(actor="t", now=fresh_ca.now)
    with pytest.raises(RevocationListInvalid, match="not signed by the federation CA"):
        verify_crl(foreign, ca_cert=fresh_ca.ca_cert, now=fresh_ca.now)
    crl = fresh_ca.ca.crl(actor="t", now=fresh_ca.now, days=1)
    with pytest.raises(RevocationListInvalid, match=r"CRL expired at .*greenhouse ca crl"):
        verify_crl(crl, ca_cert=fresh_ca.ca_cert, now=fresh_ca.now + timedelta(days=2))
    with pytest.raises(RevocationListInvalid, match="issued in the future"):
        verify_crl(crl, ca_cert=fresh_ca.ca_cert, now=fresh_ca.now - timedelta(hours=1))


def test_crl_file_reloads_keeps_last_good_and_fails_closed(fresh_ca, tmp_path: Path) -> None:
    now = [fresh_ca.now]
    path = tmp_path / "crl.pem"
    _write(path, fresh_ca.ca.crl(actor="t", now=fresh_ca.now, days=1))
    source = CrlFile(path, ca_cert=fresh_ca.ca_cert, clock=lambda: now[0])
    node = fresh_ca.issue("n1")
    assert not source().is_revoked(node.cert.serial_number)

    fresh_ca.ca.revoke(
        node.cert.serial_number, reason=x509.ReasonFlags.key_compromise, actor="t", now=fresh_ca.now
    )
    _write(path, fresh_ca.ca.crl(actor="t", now=fresh_ca.now, days=1))
    assert source().is_revoked(node.cert.serial_number)

    path.write_text("garbage")  # a broken update never replaces the last good list
    assert source().is_revoked(node.cert.serial_number)

    now[0] = fresh_ca.now + timedelta(days=2)
    with pytest.raises(RevocationListInvalid, match="CRL expired"):
        source()


def test_crl_file_must_exist_at_start(fresh_ca, tmp_path: Path) -> None:
    with pytest.raises(RevocationListInvalid, match="missing"):
        CrlFile(tmp_path / "absent.pem", ca_cert=fresh_ca.ca_cert)

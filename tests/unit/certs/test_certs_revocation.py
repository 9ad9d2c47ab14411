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


def _same_size_crls(fresh_ca) -> tuple[bytes, bytes]:
    """Two CRLs of the CA, an hour apart, with the same byte length (ECDSA signatures
    vary in length)."""
    later = fresh_ca.now + timedelta(hours=1)
    first = fresh_ca.ca.crl(actor="t", now=fresh_ca.now, days=1).public_bytes(
        serialization.Encoding.PEM
    )
    for _ in range(40):
        second = fresh_ca.ca.crl(actor="t", now=later, days=1).public_bytes(
            serialization.Encoding.PEM
        )
        if len(second) == len(first):
            return first, second
    raise AssertionError("no two CRLs of equal length in 40 tries")


def test_crl_file_reload_reads_a_file_that_looks_unchanged(fresh_ca, tmp_path: Path) -> None:
    first, second = _same_size_crls(fresh_ca)
    path = tmp_path / "crl.pem"
    path.write_bytes(first)
    now = [fresh_ca.now]
    source = CrlFile(path, ca_cert=fresh_ca.ca_cert, clock=lambda: now[0])
    before = source()
    now[0] += timedelta(hours=2)
    stat = os.stat(path)
    with path.open("r+b") as file:  # same inode, same size, same mtime: the same stamp
        file.write(second)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source().this_update == before.this_update  # the stamp hides the change
    reloaded = source.reload()
    assert reloaded.this_update > before.this_update
    assert source().this_update == reloaded.this_update


def test_crl_file_reload_keeps_the_last_good_list(fresh_ca, tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    _write(path, fresh_ca.ca.crl(actor="t", now=fresh_ca.now, days=1))
    source = CrlFile(path, ca_cert=fresh_ca.ca_cert, clock=lambda: fresh_ca.now)
    before = source()
    path.write_text("garbage")
    with pytest.raises(RevocationListInvalid, match="not a PEM certificate revocation list"):
        source.reload()
    path.unlink()
    with pytest.raises(RevocationListInvalid, match="missing"):
        source.reload()
    assert source() is before

"""``greenhouse ca`` and ``greenhouse certs`` through ``appliance.cli.main``."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from appliance.cli import main
from certs import CertificateAuthority, Role, certificate_pem, load_csr

PASS = "correct-horse-battery"


@pytest.fixture
def run(capsys, monkeypatch):
    monkeypatch.setenv("GREENHOUSE_CA_PASSPHRASE", PASS)
    monkeypatch.delenv("GREENHOUSE_CA_DIR", raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("greenhouse: error: ")
    return lines[0]


def _wrote(out: str) -> list[Path]:
    return [
        Path(line.removeprefix("wrote ")) for line in out.splitlines() if line.startswith("wrote ")
    ]


@pytest.fixture
def federation(run, tmp_path: Path) -> Path:
    ca_dir = tmp_path / "ca"
    code, out, _ = run("ca", "init", "--dir", ca_dir, "--name", "Federation X")
    assert code == 0
    assert _wrote(out) == [ca_dir / "ca.pem", ca_dir / "ca.key"]
    return ca_dir


def _site(run, tmp_path: Path, ca_dir: Path, name: str = "st-marys", role: str = "node") -> Path:
    site = tmp_path / name
    code, out, _ = run(
        "certs", "request", "--role", role, "--name", name, "--org", "St Mary's", "--out", site
    )
    assert code == 0, out
    csr = site / f"{name}.csr"
    assert _wrote(out) == [site / f"{name}.key", site / f"{name}-signing.key", csr]
    code, out, err = run("ca", "sign", csr, "--dir", ca_dir, "--role", role)
    assert code == 0, err
    assert _wrote(out) == [site / f"{name}.pem"]
    return site


def test_full_admin_and_site_flow(run, federation: Path, tmp_path: Path) -> None:
    ca_dir = federation
    assert CertificateAuthority.open(ca_dir).key_encrypted

    code, out, _ = run(
        "ca",
        "issue-server",
        "--dir",
        ca_dir,
        "--host",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--out",
        tmp_path / "tls",
    )
    assert code == 0
    server_files = _wrote(out)
    assert [p.name for p in server_files] == ["server.pem", "server.key", "ca.pem"]
    assert stat.S_IMODE(os.stat(tmp_path / "tls" / "server.key").st_mode) == 0o600

    site = _site(run, tmp_path, ca_dir)
    cert = site / "st-marys.pem"
    for key in ("st-marys.key", "st-marys-signing.key"):
        assert stat.S_IMODE(os.stat(site / key).st_mode) == 0o600

    code, out, _ = run("certs", "show", cert, "--json")
    shown = json.loads(out)
    assert (shown["name"], shown["role"], shown["kind"]) == ("st-marys", "node", "node")
    assert shown["organization"] == "St Mary's" and len(shown["signing_key_sha256"]) == 64
    code, out, _ = run("certs", "show", cert)
    assert "signing_key_sha256:" in out and "serial:" in out and "not_after:" in out

    # The admin reads the CSR before signing it: what it requests, and its file hash
    # (which the site reads out over the phone).
    csr = site / "st-marys.csr"
    code, out, _ = run("certs", "show", csr, "--json")
    assert code == 0, out
    asked = json.loads(out)
    assert (asked["kind"], asked["name"], asked["requested_role"]) == (
        "request",
        "st-marys",
        "node",
    )
    assert asked["signing_key_sha256"] == shown["signing_key_sha256"]
    assert asked["file_sha256"] == hashlib.sha256(csr.read_bytes()).hexdigest()
    forged = tmp_path / "forged.csr"
    text = csr.read_text().splitlines()
    text[3] = text[3][:10] + ("A" if text[3][10] != "A" else "B") + text[3][11:]
    forged.write_text("\n".join(text) + "\n")
    code, _, err = run("certs", "show", forged)
    assert code != 0 and len(err.strip().splitlines()) == 1, err

    code, out, _ = run("certs", "check", cert, "--ca", ca_dir / "ca.pem")
    assert code == 0 and out.startswith("valid: node st-marys (role node, serial ")

    code, out, _ = run(
        "ca", "revoke", shown["serial"], "--dir", ca_dir, "--reason", "key-compromise"
    )
    assert code == 0 and f"revoked serial {shown['serial']}" in out
    assert _wrote(out) == [ca_dir / "crl.pem"]
    code, out, err = run(
        "certs", "check", cert, "--ca", ca_dir / "ca.pem", "--crl", ca_dir / "crl.pem"
    )
    assert code == 4
    assert "invalid (revoked): certificate of node st-marys" in _error_line(err)

    code, out, _ = run("ca", "crl", "--dir", ca_dir, "--out", tmp_path / "published.pem")
    assert code == 0 and _wrote(out) == [tmp_path / "published.pem"]

    code, out, err = run("ca", "list", "--dir", ca_dir)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert any(" revoked " in line and "CN=st-marys" in line for line in lines)
    assert any(" valid " in line and "CN=localhost" in line for line in lines)

    ledger = [json.loads(line) for line in (ca_dir / "issued.jsonl").read_text().splitlines()]
    assert [e["action"] for e in ledger] == ["init", "issue", "issue", "revoke", "crl", "crl"]


def test_user_lifetime_and_expiring_filter(run, federation: Path, tmp_path: Path) -> None:
    _site(run, tmp_path, federation, name="alice", role="data-scientist")
    code, out, _ = run("ca", "list", "--dir", federation, "--expiring", "14d")
    assert code == 0 and out.strip() == "no certificates expiring within that window"
    code, out, _ = run("ca", "list", "--dir", federation, "--expiring", "31d", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["role"] for r in rows] == ["data-scientist"]
    assert 29.9 < rows[0]["days_left"] <= 30.0


def test_unencrypted_ca_needs_explicit_flag_and_is_warned(run, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GREENHOUSE_CA_PASSPHRASE")
    code, _, err = run(
        "ca",
        "init",
        "--dir",
        tmp_path / "ca",
        "--name",
        "Plain",
        "--no-passphrase",
        "--out",
        tmp_path,
    )
    assert code == 0 and "NOT encrypted" in err
    assert (tmp_path / "ca.pem").read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()
    code, _, err = run("ca", "list", "--dir", tmp_path / "ca")
    assert code == 0 and "warning: the CA key" in err and "not passphrase-encrypted" in err


def test_role_is_decided_by_the_ca(run, federation: Path, tmp_path: Path) -> None:
    run("certs", "request", "--role", "data-scientist", "--name", "carol", "--out", tmp_path)
    csr = tmp_path / "carol.csr"
    code, _, err = run("ca", "sign", csr, "--dir", federation, "--role", "auditor")
    assert code == 4
    assert "requests role data-scientist, not auditor" in _error_line(err)
    code, out, _ = run(
        "ca",
        "sign",
        csr,
        "--dir",
        federation,
        "--role",
        "auditor",
        "--override-role",
        "--out",
        tmp_path / "carol-auditor.pem",
    )
    assert code == 0 and _wrote(out) == [tmp_path / "carol-auditor.pem"]
    (tmp_path / "certs").mkdir()
    code, out, _ = run(
        "ca",
        "sign",
        csr,
        "--dir",
        federation,
        "--role",
        "auditor",
        "--override-role",
        "--days",
        "7",
        "--out",
        tmp_path / "certs",
    )
    assert code == 0 and _wrote(out) == [tmp_path / "certs" / "carol.pem"]
    code, out, _ = run(
        "certs",
        "check",
        tmp_path / "certs" / "carol.pem",
        "--ca",
        federation / "ca.pem",
        "--role",
        "auditor",
    )
    assert code == 0
    code, _, err = run(
        "certs",
        "check",
        tmp_path / "certs" / "carol.pem",
        "--ca",
        federation / "ca.pem",
        "--role",
        "node",
    )
    assert code == 4 and "invalid (wrong-role)" in _error_line(err)
    assert load_csr(csr)  # the CSR is untouched


def test_error_paths_are_one_line(run, federation: Path, tmp_path: Path, monkeypatch) -> None:
    garbage = tmp_path / "garbage.csr"
    garbage.write_text("nope")
    other = tmp_path / "other-ca"
    run("ca", "init", "--dir", other, "--name", "Other")
    foreign_site = _site(run, tmp_path, other, name="mallory")
    cases = [
        (("ca", "init", "--dir", federation, "--name", "Again"), "a CA already exists"),
        (
            ("ca", "sign", garbage, "--dir", federation, "--role", "node"),
            "is not a PEM certificate signing request",
        ),
        (("ca", "revoke", "abcdef", "--dir", federation), "no certificate with serial abcdef"),
        (("ca", "list", "--dir", tmp_path / "missing"), "no CA in"),
        (("certs", "show", tmp_path / "missing.pem"), "cannot read certificate"),
        (
            ("certs", "check", foreign_site / "mallory.pem", "--ca", federation / "ca.pem"),
            "invalid (foreign-ca)",
        ),
        (
            (
                "certs",
                "check",
                foreign_site / "mallory.pem",
                "--ca",
                federation / "ca.pem",
                "--crl",
                other / "crl.pem",
            ),
            "cannot read CRL",
        ),
        (
            ("certs", "request", "--role", "node", "--name", "mallory", "--out", foreign_site),
            "already exists",
        ),
        (
            ("certs", "request", "--role", "node", "--name", "bad name", "--out", tmp_path),
            "must be 1-64 characters",
        ),
    ]
    for args, message in cases:
        code, _, err = run(*args)
        assert code == 4, args
        assert message in _error_line(err), (args, err)

    monkeypatch.setenv("GREENHOUSE_CA_PASSPHRASE", "wrong-passphrase")
    code, _, err = run("ca", "crl", "--dir", federation)
    assert code == 4 and "wrong passphrase for private key" in _error_line(err)
    assert "wrong-passphrase" not in err

    code, _, err = run("ca", "revoke", "not-hex", "--dir", federation)
    assert code == 2 and "not a hex number" in err
    code, _, err = run("ca", "list", "--dir", federation, "--expiring", "soon")
    assert code == 2 and "is not a duration" in err


def test_world_readable_key_is_refused_by_the_cli_flow(
    run, federation: Path, tmp_path: Path
) -> None:
    os.chmod(federation / "ca.key", 0o644)
    code, _, err = run("ca", "crl", "--dir", federation)
    assert code == 4
    assert "is accessible by group or others (mode 0644); run: chmod 600" in _error_line(err)


def test_expired_certificate_check(run, federation: Path, tmp_path: Path) -> None:
    run("certs", "request", "--role", "node", "--name", "old", "--out", tmp_path)
    authority = CertificateAuthority.open(federation, passphrase=lambda: PASS.encode())
    cert = authority.sign(load_csr(tmp_path / "old.csr"), role=Role.NODE, actor="t")
    expired = authority.sign(
        load_csr(tmp_path / "old.csr"),
        role=Role.NODE,
        actor="t",
        not_before=cert.not_valid_before_utc - timedelta(days=30),
        not_after=cert.not_valid_before_utc - timedelta(days=1),
    )
    (tmp_path / "old.pem").write_bytes(certificate_pem(expired))
    code, _, err = run("certs", "check", tmp_path / "old.pem", "--ca", federation / "ca.pem")
    assert code == 4 and "invalid (expired): certificate of node old" in _error_line(err)


def test_issue_server_refuses_to_overwrite_without_force(run, federation: Path) -> None:
    out = federation / "tls"
    assert run("ca", "issue-server", "--dir", federation, "--ip", "127.0.0.1", "--out", out)[0] == 0
    first = (out / "server.pem").read_bytes()
    code, _, err = run("ca", "issue-server", "--dir", federation, "--ip", "127.0.0.1", "--out", out)
    assert code == 4 and "already exists" in _error_line(err)
    issued = [e for e in CertificateAuthority.open(federation).ledger.entries() if e.role]
    assert len(issued) == 1  # the refused run issued nothing
    code, out_text, _ = run(
        "ca", "issue-server", "--dir", federation, "--ip", "127.0.0.1", "--out", out, "--force"
    )
    assert code == 0 and len(_wrote(out_text)) == 3
    assert (out / "server.pem").read_bytes() != first
    code, _, err = run("ca", "issue-server", "--dir", federation, "--out", out, "--force")
    assert code == 4 and "at least one --host or --ip" in _error_line(err)
    code, _, err = run("ca", "issue-server", "--dir", federation, "--ip", "300.1.1.1")
    assert code == 2 and "does not appear to be an IPv4 or IPv6 address" in err

"""Interop: an audit export verifies with Go's sumdb/note and sumdb/tlog (issue 7).

``go/main.go`` (``auditcheck``) opens every checkpoint with
``golang.org/x/mod/sumdb/note`` and the log's vkey, recomputes the RFC 6962
roots over ``entries.jsonl`` with ``golang.org/x/mod/sumdb/tlog``, checks
inclusion and consistency proofs with it, and checks witness cosignatures
(cosignature/v1) with ``crypto/ed25519``. It is built offline, in GOPATH mode,
against Debian's packaged sources (``golang-go`` and ``golang-golang-x-mod-dev``,
installed by ``.ci/go.sh``; ``GREENHOUSE_GOPATH`` points elsewhere). Without
them the tests are skipped, unless ``GREENHOUSE_REQUIRE_GO=1``, where they fail.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit import (
    SYSTEM,
    Action,
    Actor,
    AuditLog,
    NoteSigner,
    Witness,
    export,
    verify_export,
)
from audit.note import KeyType

GO_SOURCE = Path(__file__).resolve().parent / "go"
DEBIAN_GOPATH = "/usr/share/gocode"  # where golang-golang-x-mod-dev installs its sources
REQUIRE_ENV = "GREENHOUSE_REQUIRE_GO"
BUILD_TIMEOUT_S = 600


def _missing() -> str | None:
    gopath = Path(os.environ.get("GREENHOUSE_GOPATH", DEBIAN_GOPATH))
    if shutil.which("go") is None:
        return "the go toolchain is not installed (Debian: golang-go; run .ci/go.sh)"
    if not (gopath / "src" / "golang.org" / "x" / "mod" / "sumdb" / "note").is_dir():
        return (
            f"golang.org/x/mod sources are not under {gopath}/src "
            "(Debian: golang-golang-x-mod-dev; run .ci/go.sh, or set GREENHOUSE_GOPATH)"
        )
    return None


@pytest.fixture(scope="module")
def auditcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure")
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GO111MODULE": "off",  # GOPATH mode: imports resolve to the packaged sources
        "GOPATH": os.environ.get("GREENHOUSE_GOPATH", DEBIAN_GOPATH),
        "GOFLAGS": "",
        "GOPROXY": "off",  # never fetch anything
        "GOTOOLCHAIN": "local",
        "GOCACHE": str(build / "cache"),
        "CGO_ENABLED": "0",
    }
    binary = build / "auditcheck"
    result = subprocess.run(
        [shutil.which("go") or "go", "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stderr}"
    return binary


def run(binary: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("export")
    ticks = iter(range(10**6))
    clock = lambda: datetime(2025, 9, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))  # noqa: E731
    signer = NoteSigner(
        name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate()
    )
    witness_key = NoteSigner(
        name="witness.hospital-a.example",
        private_key=Ed25519PrivateKey.generate(),
        key_type=KeyType.COSIGNATURE_V1,
    )
    engine = sa.create_engine(f"sqlite:///{base / 'audit.db'}", poolclass=NullPool)
    node = Actor(identity="CN=hôpital-a,O=Hôpital A", role="node")
    with AuditLog(engine, signer=signer, clock=clock, checkpoint_every=7) as log:
        for i in range(37):
            log.append(
                node if i % 2 else SYSTEM,
                Action.REPLY_RECEIVED if i % 3 else Action.RUN_STARTED,
                {"run_id": f"run-{i // 10}", "message_id": f"m-{i}"},
                {"sha256": f"{i:064x}", "note": 'tab\tquote" ünïcode 😀', "n": [i, None, True]},
            )
        note = log.checkpoint()
        witness = Witness(signer=witness_key, log_key=log.verifier_key, clock=clock)
        log.add_cosignature(37, witness.cosign(note).signature, witness_key.verifier_key())
    export(engine, base / "export")
    report = verify_export(base / "export", signer.verifier_key())
    engine.dispose()
    return base / "export", signer, witness_key, report


def test_go_verifies_checkpoints_roots_proofs_and_cosignature(auditcheck, exported):
    directory, signer, witness_key, report = exported
    result = run(
        auditcheck, directory, signer.verifier_key().encode(), witness_key.verifier_key().encode()
    )
    assert result.returncode == 0, result.stderr
    root = base64.b64encode(report.checkpoints[-1].root_hash).decode()
    assert result.stdout.strip() == f"ok entries=37 checkpoints=6 size=37 root={root} cosigned=1"


def test_go_catches_an_edited_entry(auditcheck, exported, tmp_path):
    directory, signer, _, _ = exported
    copy = tmp_path / "edited"
    shutil.copytree(directory, copy)
    data = (copy / "entries.jsonl").read_bytes()
    (copy / "entries.jsonl").write_bytes(data.replace(b'"n":[3,', b'"n":[4,', 1))
    result = run(auditcheck, copy, signer.verifier_key().encode())
    assert result.returncode == 1
    assert result.stderr.startswith("auditcheck: size 7: computed root ")


def test_go_refuses_a_tree_head_signed_by_another_key(auditcheck, exported):
    directory, signer, _, _ = exported
    impostor = NoteSigner(name=signer.name, private_key=Ed25519PrivateKey.generate())
    result = run(auditcheck, directory, impostor.verifier_key().encode())
    assert result.returncode == 1
    assert "verifier" in result.stderr or "signature" in result.stderr

"""The audit log over the deployment runtime: both sides write it, exports verify and agree."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from runtime_harness import APPS, Federation, start, submitted_run, wait_for

import audit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PROBE = APPS / "probe"


def _actions(export: Path) -> list[audit.Entry]:
    lines = (export / "entries.jsonl").read_bytes().splitlines()
    return [audit.parse_entry(line) for line in lines]


def _vkey(path: Path) -> str:
    return path.read_text().strip()


def test_a_run_is_recorded_on_both_sides_and_the_exports_verify_and_reconcile(
    federation: Federation, tmp_path: Path
):
    start(federation, 2)
    code, out, err = federation.cli(
        "alice", "run", str(PROBE), "--federation", "test", "--run-config", "num-server-rounds=2"
    )
    assert code == 0, err + federation.log("superlink")
    run_id = str(submitted_run(out))

    # The auditor reads the live log over the Control API; a data scientist may not.
    code, shown, err = federation.cli(
        "audrey", "audit", "show", "--federation", "test", "--run", run_id, "--json"
    )
    assert code == 0, err
    live = [audit.parse_entry(line.encode()) for line in shown.splitlines()]
    assert {e.action.value for e in live} >= {"run.submitted", "run.started", "reply.received"}
    code, _, err = federation.cli("alice", "audit", "show", "--federation", "test")
    assert code != 0 and "PERMISSION_DENIED" in err

    for name in ("n1", "n2"):  # stopping signs each log's last tree head
        assert federation.terminate(name) == 0, federation.log(f"node-{name}")
    assert federation.terminate("superlink") == 0, federation.log("superlink")

    link_dir = federation.root / "superlink"
    link_export = tmp_path / "link"
    db = str(link_dir / "state.db")
    assert (
        federation.cli("audrey", "audit", "export", "--file", db, "--out", str(link_export))[0] == 0
    )
    link_key = _vkey(link_dir / "audit.vkey")
    witnesses = [
        _vkey(federation.root / f"node-{n}" / "audit" / "witness.vkey") for n in ("n1", "n2")
    ]
    report = audit.check_export(link_export, link_key, witness_keys=witnesses)
    assert report.problem is None, report.problem
    cosigned = {w for head in report.checkpoints for w in head.witnesses}
    assert len(cosigned) == 2, "both sites witnessed the SuperLink's log"

    entries = [e for e in _actions(link_export) if e.subjects.get("run_id") == run_id]
    counts = Counter(e.action.value for e in entries)
    assert counts["run.submitted"] == counts["run.started"] == counts["run.finished"] == 1
    assert counts["round.completed"] == 2
    assert counts["reply.received"] == 4  # 2 nodes x 2 training rounds
    submitted = next(e for e in entries if e.action.value == "run.submitted")
    assert submitted.actor.role == "data-scientist" and submitted.actor.identity == "alice"
    assert json.loads(submitted.to_json()["details"]["run_config"])["num-server-rounds"] == 2
    rounds = [e for e in entries if e.action.value == "round.completed"]
    assert all(len(r.to_json()["details"]["replied"]) == 2 for r in rounds)

    for name in ("n1", "n2"):
        site_dir = federation.root / f"node-{name}" / "audit"
        site_export = tmp_path / f"site-{name}"
        db = str(site_dir / "site-audit.db")
        code, _, err = federation.cli(
            "audrey", "audit", "export", "--file", db, "--out", str(site_export)
        )
        assert code == 0, err
        site_key = _vkey(site_dir / "site-audit.vkey")
        audit.verify_export(site_export, site_key)
        site = Counter(e.action.value for e in _actions(site_export))
        assert site["message.received"] == site["egress.reply"] == 2
        assert site["checkpoint.seen"] >= 1
        result = audit.reconcile(site_export, [link_export], site_key=site_key, link_key=link_key)
        assert result.ok, [f.line() for f in result.findings]
        assert result.replies_matched == 2 and result.tree_heads_consistent >= 1
        code, out, err = federation.cli(
            "audrey", "audit", "reconcile", str(site_export), str(link_export),
            "--site-key", site_key, "--link-key", link_key,
        )  # fmt: skip
        assert code == 0 and "ok: the logs agree" in out, out + err


def test_a_site_refuses_a_superlink_with_another_audit_key(federation: Federation):
    start(federation, 1)
    signer = audit.NoteSigner(name="greenhouse-superlink", private_key=Ed25519PrivateKey.generate())
    stranger = signer.verifier_key().encode()
    federation.terminate("n1")
    federation.start_node("n1", 0, 1, extra=("--superlink-audit-key", stranger))
    process = federation.nodes["n1"]
    wait_for(lambda: process.poll() is not None, 30, "the node to refuse the SuperLink")
    assert process.returncode != 0
    assert "is not the trusted" in federation.log("node-n1")


def test_refused_calls_are_audited(federation: Federation, tmp_path: Path):
    start(federation, 1)
    federation.start_node("stranger", 0, 1)  # a valid certificate, never enrolled
    wait_for(lambda: "not enrolled" in federation.log("node-stranger"), 30, "the stranger refused")
    federation.terminate("superlink")
    export = tmp_path / "link"
    audit.export(audit.open_sqlite(federation.root / "superlink" / "state.db"), export)
    refused = [e for e in _actions(export) if e.action.value == "auth.refused"]
    assert refused, "the refusal of an unenrolled node is in the log"
    details = refused[0].to_json()["details"]
    assert details["reason"] == "not-enrolled" and details["method"].endswith("/Hello")
    assert "stranger" in details["message"]


def test_a_running_sites_log_exports_with_a_signed_tree_head(
    federation: Federation, tmp_path: Path
):
    federation.start_superlink()
    federation.enrol("n1")
    federation.start_node("n1", 0, 1, extra=("--audit-interval", "0.5"))
    federation.wait_online("n1")
    code, _, err = federation.cli(
        "alice", "run", str(PROBE), "--federation", "test",
        "--run-config", "num-server-rounds=1 min-nodes=1",
    )  # fmt: skip
    assert code == 0, err + federation.log("superlink")
    site_dir = federation.root / "node-n1" / "audit"
    site_key = _vkey(site_dir / "site-audit.vkey")
    attempts = iter(range(100))

    def live_export_verifies() -> bool:
        export = tmp_path / f"live-{next(attempts)}"
        code, _, err = federation.cli(
            "audrey", "audit", "export", "--file", str(site_dir / "site-audit.db"),
            "--out", str(export),
        )  # fmt: skip
        assert code == 0, err
        return audit.check_export(export, site_key).problem is None

    wait_for(live_export_verifies, 20, "a live site export ending in a signed tree head")
    assert federation.nodes["n1"].poll() is None  # the node was not stopped for it

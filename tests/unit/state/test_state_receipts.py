"""Contract: receipts are kept per run, append-only, oldest first, with their audit entry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import audit
from appliance.state import AuditActor, InvalidArgument, RunNotFound, State, StoredReceipt
from appliance.superlink.audit_trail import sink_for

NODE = AuditActor("CN=n1,O=Greenhouse Nodes", "node")


@pytest.fixture
def run_id(state: State) -> int:
    bundle = state.put_bundle([b"app"], max_bytes=1024)
    return state.create_run("alice", bundle.sha256, {"rounds": 1}, {}).run_id


def receipt(run_id: int, decision: str = "accepted", **changes: object) -> StoredReceipt:
    fields: dict[str, object] = {
        "run_id": run_id, "node_id": 7, "node_name": "n1", "decision": decision,
        "manifest_sha256": "ab" * 32, "policy_sha256": "cd" * 32, "reason": "",
        "decided_by": "", "signed_at": 1000.5, "received_at": 0.0,
        "body": b'{"receipt":1}', "signature": b"\x01" * 100,
    }  # fmt: skip
    fields.update(changes)
    return StoredReceipt(**fields)  # type: ignore[arg-type]


def test_receipts_are_kept_in_order_and_never_replaced(state, run_id, clock):
    state.put_receipt(receipt(run_id, "pending"))
    clock.advance(1)
    stored = state.put_receipt(receipt(run_id, "refused", reason="nul\x00 here", decided_by="ana"))
    assert stored.received_at == clock()
    kept = state.list_receipts(run_id)
    assert [r.decision for r in kept] == ["pending", "refused"]
    assert kept[1].reason == "nul\ufffd here" and kept[1].decided_by == "ana"
    assert kept[1].body == b'{"receipt":1}' and kept[1].signature == b"\x01" * 100
    assert state.receipts_by_run([run_id, 12345]) == {run_id: kept}
    assert state.receipts_by_run([]) == {}


def test_bad_receipts_are_refused(state, run_id):
    with pytest.raises(RunNotFound):
        state.put_receipt(receipt(999))
    with pytest.raises(InvalidArgument, match="decision"):
        state.put_receipt(receipt(run_id, "maybe"))
    with pytest.raises(InvalidArgument, match="manifest_sha256"):
        state.put_receipt(receipt(run_id, manifest_sha256="sha256:" + "ab" * 32))
    with pytest.raises(InvalidArgument, match="8192 bytes"):
        state.put_receipt(receipt(run_id, body=b"x" * 9000))
    with pytest.raises(RunNotFound):
        state.list_receipts(999)
    assert state.list_receipts(run_id) == []


def test_each_receipt_is_audited_in_its_transaction(state, run_id, backend, request):
    if backend.name == "postgresql":
        pytest.skip("the audit tables are covered on PostgreSQL by test_state_audit")
    log = audit.AuditLog(
        state.writer_engine,
        signer=audit.NoteSigner(name="test-link", private_key=Ed25519PrivateKey.generate()),
        clock=lambda: datetime.now(UTC),
    )
    state.attach_audit(sink_for(log))
    state.put_receipt(receipt(run_id, "refused", reason="audit week", decided_by="ana"), actor=NODE)
    (entry,) = audit.DatabaseSource(log.engine).entries(audit.EntryQuery())
    plain = entry.to_json()
    assert plain["action"] == "receipt.received"
    assert entry.actor == audit.Actor(identity=NODE.identity, role="node")
    assert plain["subjects"] == {"run_id": str(run_id), "node_id": "7"}
    assert plain["details"]["decision"] == "refused"
    assert plain["details"]["reason"] == "audit week"
    assert plain["details"]["signed_at_ms"] == 1000500

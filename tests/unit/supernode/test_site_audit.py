"""A site's own audit log and its witness of the SuperLink's log (real logs, real keys)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine

import audit
from appliance.message import Message, Metadata
from appliance.records import ArrayRecord, MetricRecord, RecordDict
from appliance.supernode.site_audit import SiteAudit, TreeHeadRefused
from appliance.wire import encode_record_dict


def _link(path: Path, key: Ed25519PrivateKey) -> audit.AuditLog:
    """A stand-in SuperLink log (the same library and key type the SuperLink uses)."""
    return audit.AuditLog(
        create_engine(f"sqlite:///{path}"),
        signer=audit.NoteSigner(name="greenhouse-superlink", private_key=key),
        clock=lambda: datetime.now(UTC),
    )


def _grow(log: audit.AuditLog, entries: int) -> tuple[str, int]:
    for i in range(entries):
        log.append(audit.SYSTEM, "round.completed", {"run_id": "1"}, {"n": i})
    note = log.checkpoint()
    return note, log.size


@pytest.fixture
def link_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def link(tmp_path: Path, link_key: Ed25519PrivateKey) -> audit.AuditLog:
    return _link(tmp_path / "link.db", link_key)


def _site(tmp_path: Path, link: audit.AuditLog, **kwargs: object) -> SiteAudit:
    return SiteAudit(
        tmp_path / "site",
        node_name="st marys",  # a space: the witness key name replaces it
        superlink_vkey=link.verifier_key.encode(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_site_cosigns_only_tree_heads_that_extend_the_last_one(tmp_path, link):
    site = _site(tmp_path, link)
    note1, size1 = _grow(link, 3)
    first = site.saw_tree_head(note1, [], proof_from=0, pulled_at=time.monotonic())
    assert first is not None and first.tree_size == size1 and site.witness_size == size1
    assert audit.parse_verifier_key(first.witness_vkey).name == "st-marys"
    link.add_cosignature(size1, first.signature_line, audit.parse_verifier_key(first.witness_vkey))
    assert site.saw_tree_head(note1, [], proof_from=size1, pulled_at=time.monotonic()) is None

    note2, size2 = _grow(link, 5)
    proof = list(link.consistency_proof(size1, size2).hashes)
    second = site.saw_tree_head(note2, proof, proof_from=size1, pulled_at=time.monotonic())
    assert second is not None and site.witness_size == size2
    with pytest.raises(TreeHeadRefused, match="does not extend"):
        site.saw_tree_head(
            _grow(link, 1)[0], [b"\0" * 32], proof_from=size2, pulled_at=time.monotonic()
        )


def test_an_older_head_is_stale_from_an_earlier_pull_and_a_rollback_from_a_later_one(
    tmp_path, link
):
    site = _site(tmp_path, link)
    note1, size1 = _grow(link, 2)
    early_pull = time.monotonic()
    note2, _ = _grow(link, 2)
    assert site.saw_tree_head(note2, [], proof_from=0, pulled_at=time.monotonic()) is not None
    # A concurrent pull that started before the newer head arrived: recorded, not refused.
    assert site.saw_tree_head(note1, [], proof_from=site.witness_size, pulled_at=early_pull) is None
    # A pull that started afterwards and still gets the old head: the log was rolled back.
    with pytest.raises(TreeHeadRefused, match="rolled back"):
        site.saw_tree_head(note1, [], proof_from=site.witness_size, pulled_at=time.monotonic())
    seen = [
        e.to_json()["details"]
        for e in audit.DatabaseSource(site.log.engine).entries(
            audit.EntryQuery(actions=frozenset({audit.Action.CHECKPOINT_SEEN}))
        )
    ]
    assert ["cosignature" in d for d in seen] == [True, False, False]
    assert "stale" in seen[1]["problem"] and "rolled back" in seen[2]["problem"]
    assert size1 < site.witness_size


def test_a_forked_log_signed_with_the_same_key_is_refused(tmp_path, link, link_key):
    site = _site(tmp_path, link)
    note, size = _grow(link, 4)
    site.saw_tree_head(note, [], proof_from=0, pulled_at=time.monotonic())
    fork = _link(tmp_path / "fork.db", link_key)  # same key, other history
    fork_note, fork_size = _grow(fork, 9)
    proof = list(fork.consistency_proof(size, fork_size).hashes)
    with pytest.raises(TreeHeadRefused, match="does not extend"):
        site.saw_tree_head(fork_note, proof, proof_from=size, pulled_at=time.monotonic())


def test_the_superlink_key_is_pinned_and_the_witness_state_survives_a_restart(tmp_path, link):
    site = _site(tmp_path, link)
    note, size = _grow(link, 2)
    site.saw_tree_head(note, [], proof_from=0, pulled_at=time.monotonic())
    site.close()
    again = _site(tmp_path, link)
    assert again.witness_size == size
    impostor = _link(tmp_path / "impostor.db", Ed25519PrivateKey.generate())
    with pytest.raises(TreeHeadRefused, match="is not the trusted"):
        _site(tmp_path, impostor)
    configured = audit.NoteSigner(name="x", private_key=Ed25519PrivateKey.generate())
    with pytest.raises(TreeHeadRefused, match="is not the trusted"):
        SiteAudit(
            tmp_path / "other-site",
            node_name="n2",
            superlink_vkey=link.verifier_key.encode(),
            configured_superlink_key=configured.verifier_key(),
        )


def test_received_refused_and_egress_entries_verify_in_an_export(tmp_path, link):
    site = _site(tmp_path, link)
    meta = Metadata(
        run_id=7, message_id="m1", src_node_id=0, dst_node_id=42, reply_to_message_id="",
        group_id="1", message_type="train", ttl=60.0, created_at=time.time(),
    )  # fmt: skip
    request = Message.from_parts(meta, RecordDict({}))
    site.received(request, node_id=42, app_sha256="a" * 64, frame=b"frame")
    content = RecordDict(
        {"arrays": ArrayRecord([]), "metrics": MetricRecord({"num-examples": 3, "loss": 0.5})}
    )
    reply = Message(content, reply_to=request)
    frame = encode_record_dict(content)
    site.egress(reply, node_id=42, frame=frame)
    site.refused(request, node_id=42, reason="site policy egress.allow_query: no")
    site.close()
    audit.export(site.log.engine, tmp_path / "export")
    audit.verify_export(tmp_path / "export", site.log.verifier_key)
    entries = [
        audit.parse_entry(line)
        for line in (tmp_path / "export" / "entries.jsonl").read_bytes().splitlines()
    ]
    assert [e.action.value for e in entries] == [
        "message.received",
        "egress.reply",
        "policy.refused",
    ]
    sent = entries[1].to_json()
    assert sent["subjects"] == {
        "run_id": "7", "message_id": reply.metadata.message_id, "request_id": "m1", "node": "42"
    }  # fmt: skip
    details = sent["details"]
    assert details["records"] == ["arrays", "metrics"]
    assert details["metric_keys"] == ["loss", "num-examples"]
    assert details["bytes"] == len(frame)


def _export_verifies(site: SiteAudit, directory: Path) -> bool:
    audit.export(site.log.engine, directory)
    try:
        audit.verify_export(directory, site.log.verifier_key)
    except audit.UnsignedEntries:
        return False
    return True


def test_a_live_site_log_signs_its_tree_head_when_entries_have_waited(tmp_path, link):
    site = _site(tmp_path, link)
    assert site.sign_if_due(0.0) is False  # nothing to sign
    site.policy_reloaded("", "a" * 64)
    assert site.sign_if_due(3600.0) is False  # not due yet
    assert _export_verifies(site, tmp_path / "e1") is False  # a live export: unsigned tail
    assert site.sign_if_due(0.0) is True
    assert _export_verifies(site, tmp_path / "e2") is True  # without stopping the node
    assert site.sign_if_due(0.0) is False  # no entry since
    site.policy_reloaded("a" * 64, "b" * 64)
    assert site.sign_if_due(0.0) is True
    assert _export_verifies(site, tmp_path / "e3") is True
    site.close()


def test_a_tree_head_that_failed_to_sign_is_tried_again(tmp_path, link, monkeypatch):
    site = _site(tmp_path, link)
    site.policy_reloaded("", "a" * 64)
    signed = site.log.checkpoint

    def broken() -> str:
        raise audit.AppendFailed("disk full")

    monkeypatch.setattr(site.log, "checkpoint", broken)
    with pytest.raises(audit.AppendFailed):
        site.sign_if_due(0.0)
    monkeypatch.setattr(site.log, "checkpoint", signed)
    assert site.sign_if_due(0.0) is True  # no new entry since, but it was never signed
    assert _export_verifies(site, tmp_path / "e")
    site.close()

"""Retention (audit.archive): sealed, verified archives and a log that stays verifiable.

Runs against SQLite and PostgreSQL (the ``engine`` fixture). Times: entry ``i``
of the fixture log is written at minute ``i`` (the clock ticks once per call,
and every call is an entry or a tree head's ``created_at``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import (
    SYSTEM,
    Action,
    AppendFailed,
    AuditLog,
    AuditUsageError,
    ExportFailed,
    archive,
    check_chain,
    check_export,
    export,
    verify_chain,
    verify_export,
)
from audit.checkpoint import cosign_checkpoint, parse_checkpoint
from audit.errors import ChainBroken
from audit.note import parse_note
from audit.schema import APPEND_ONLY_TABLES, unsafe_delete_below
from audit.tree import root_of

T0 = datetime(2025, 3, 1, tzinfo=UTC)
archive_mod = sys.modules["audit.archive"]  # the package's `archive` is the function


class MinuteClock:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return T0 + timedelta(minutes=self.calls)


def open_log(engine: sa.Engine, signer, every: int = 4) -> AuditLog:
    return AuditLog(engine, signer=signer, clock=MinuteClock(), checkpoint_every=every)


def fill(log: AuditLog, n: int, tag: str = "r") -> None:
    for i in range(n):
        log.append(SYSTEM, Action.RUN_STARTED, {"run_id": f"{tag}{i}"}, {"i": i})


def seqs(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT seq FROM audit_entries ORDER BY seq"))]


def entry_time(engine: sa.Engine, seq: int) -> datetime:
    with engine.connect() as conn:
        line = conn.execute(sa.text(f"SELECT line FROM audit_entries WHERE seq = {seq}")).scalar()
    return datetime.fromisoformat(json.loads(line)["time"])


@pytest.fixture
def log(engine, signer) -> AuditLog:
    log = open_log(engine, signer)
    fill(log, 10)
    return log


def test_round_trip_verifies_across_the_cut(engine, signer, log, tmp_path):
    summary = archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    assert (summary.start, summary.end, summary.entries) == (0, 6, 6)
    assert summary.entry.seq == 10 and summary.entry.action is Action.AUDIT_ARCHIVED
    details = dict(summary.entry.details)
    assert details["tree_size"] == 6 and details["start"] == 0 and details["entries"] == 6
    assert details["root_hash"] == summary.root_hash.hex() and details["archive"] == "a1"
    assert len(details["entries_sha256"]) == 64
    assert seqs(engine) == list(range(6, 11))  # entries below the cut are gone
    archived = verify_export(tmp_path / "a1", signer.verifier_key())
    assert (archived.start, archived.end, archived.sealed) == (0, 6, 6)
    assert [c.tree_size for c in archived.checkpoints] == [4, 6]

    fill(log, 3, "s")  # the log goes on after the cut
    live = export(log, tmp_path / "live")
    assert (live.start, live.entries) == (6, 8)
    report = verify_export(tmp_path / "live", signer.verifier_key())
    assert (report.start, report.end, report.sealed) == (6, 14, None)
    chain = verify_chain([tmp_path / "a1", tmp_path / "live"], signer.verifier_key())
    assert (chain.start, chain.end, chain.entries) == (0, 14, 14)


def test_pinned_start_checkpoint(engine, signer, log, tmp_path):
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    export(log, tmp_path / "live")
    seal = (tmp_path / "a1" / "checkpoints" / f"{6:020d}.note").read_text()
    assert verify_export(tmp_path / "live", signer.verifier_key(), start_checkpoint=seal).ok
    other = (tmp_path / "a1" / "checkpoints" / f"{4:020d}.note").read_text()
    report = check_export(tmp_path / "live", signer.verifier_key(), start_checkpoint=other)
    assert "not at the given tree head of size 4" in report.problem.message


def test_second_archive_continues_the_first(engine, signer, log, tmp_path):
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    fill(log, 5, "s")
    summary = archive(log, before=entry_time(engine, 14), out_dir=tmp_path / "a2")
    assert (summary.start, summary.end) == (6, 14)
    export(log, tmp_path / "live")
    dirs = [tmp_path / "a1", tmp_path / "a2", tmp_path / "live"]
    chain = verify_chain(dirs, signer.verifier_key())
    assert [s.start for s in chain.segments] == [0, 6, 14]
    assert chain.end == 17


def test_proofs_and_appends_after_the_cut(engine, signer, log, tmp_path):
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    fill(log, 5, "s")
    proof = log.inclusion_proof(7)
    assert proof.tree_size == 16
    assert log.consistency_proof(6, 16).new_root == proof.root_hash
    assert log.consistency_proof(9, 13).new_size == 13
    with pytest.raises(AuditUsageError, match="entry 5 is archived"):
        log.inclusion_proof(5)
    with pytest.raises(AuditUsageError, match="tree size 4 predates the archive cut at 6"):
        log.consistency_proof(4)
    with pytest.raises(AuditUsageError, match=r"outside 6..16 stored entries \(earlier"):
        log.inclusion_proof(7, 5)
    reopened = open_log(engine, signer)  # rebuilds its state from the stored seal
    reopened.append(SYSTEM, Action.RUN_FINISHED, {"run_id": "s1"})
    reopened.close()
    assert verify_export(_export(engine, tmp_path / "e2"), signer.verifier_key()).end == 17


def _export(engine: sa.Engine, out: Path) -> Path:
    export(engine, out)
    return out


def test_triggers_guard_every_table_after_the_cut(engine, log, witness, tmp_path):
    cp = parse_checkpoint(parse_note(log.checkpoint_at(8)).text)
    log.add_cosignature(8, cosign_checkpoint(cp, witness, 1), witness.verifier_key())
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    for table in APPEND_ONLY_TABLES:
        for statement in (f"DELETE FROM {table}", f"UPDATE {table} SET tree_size = 1"):
            if table == "audit_entries":
                statement = statement.replace("tree_size", "seq")
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
    assert seqs(engine)[0] == 6


def test_nothing_to_archive(engine, log, tmp_path):
    with pytest.raises(AuditUsageError, match="nothing to archive: no stored entry from entry 0"):
        archive(log, before=T0, out_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(AuditUsageError, match="must be timezone-aware"):
        archive(log, before=datetime(2025, 3, 2), out_dir=tmp_path / "a")


def test_previous_cut_record_must_be_archived_too(engine, log, tmp_path):
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    # entries 6..9 are older than the audit.archived entry 10: a cut at 9 would
    # leave that record out of the archive that starts at 6.
    with pytest.raises(AuditUsageError, match="record of the previous cut at 6 is not older"):
        archive(log, before=entry_time(engine, 9), out_dir=tmp_path / "a2")


def test_non_empty_directory_deletes_nothing(engine, log, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep").write_text("x")
    with pytest.raises(ExportFailed, match="exists and is not empty"):
        archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a")
    assert seqs(engine) == list(range(10))


def test_archive_that_does_not_verify_deletes_nothing(engine, log, tmp_path, monkeypatch):
    def corrupt(*args, **kwargs):
        summary = real(*args, **kwargs)
        path = summary.directory / "entries.jsonl"
        path.write_bytes(path.read_bytes().replace(b'"i":2', b'"i":3'))
        return summary

    real = archive_mod.export_segment
    monkeypatch.setattr(archive_mod, "export_segment", corrupt)
    with pytest.raises(ExportFailed, match="does not verify, nothing deleted: edited: entry 2"):
        archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a")
    assert seqs(engine) == list(range(10))


def test_failure_in_the_cut_rolls_everything_back(engine, log, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise sa.exc.OperationalError("checkpoint", {}, Exception("disk full"))

    monkeypatch.setattr(log, "checkpoint", fail)  # after the delete, before commit
    with pytest.raises(AppendFailed, match=r"cut at 6 was not recorded .* nothing deleted"):
        archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a")
    monkeypatch.undo()
    assert seqs(engine) == list(range(10))
    for statement in ("DELETE FROM audit_entries", "DELETE FROM audit_checkpoints"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    log.append(SYSTEM, Action.RUN_FINISHED)  # the log resynchronises and goes on
    export(log, tmp_path / "e")
    assert verify_export(tmp_path / "e", log.verifier_key).end == 11


def test_unsafe_delete_needs_a_started_transaction(engine):
    with (
        engine.connect() as conn,
        pytest.raises(AuditUsageError, match="needs a transaction that has already written"),
    ):
        unsafe_delete_below(conn, 1)


def test_checkpoint_at_and_reopen(engine, signer, log, tmp_path):
    note = log.checkpoint_at(3)
    assert note == log.checkpoint_at(3)  # idempotent
    assert log.consistency_proof(3, 8).old_root == root_of(_leaves(engine)[:3])
    with pytest.raises(AuditUsageError, match=r"tree size 11 is outside the stored log \(0..10\)"):
        log.checkpoint_at(11)
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    with pytest.raises(AuditUsageError, match=r"tree size 5 is outside the stored log \(6..11\)"):
        log.checkpoint_at(5)
    again = AuditLog.reopen(engine, signer.private_key, clock=MinuteClock())
    assert (again.origin, again.verifier_key) == (log.origin, log.verifier_key)
    with pytest.raises(AuditUsageError, match="not the log's signing key"):
        AuditLog.reopen(engine, Ed25519PrivateKey.generate(), clock=MinuteClock())


def _leaves(engine: sa.Engine) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT leaf_hash FROM audit_entries ORDER BY seq"))
        return [bytes(r[0]) for r in rows]


def test_reopen_needs_a_tree_head(engine, signer):
    AuditLog(engine, signer=signer, clock=MinuteClock())  # tables, no tree head yet
    with pytest.raises(AuditUsageError, match="holds no signed tree head"):
        AuditLog.reopen(engine, signer.private_key, clock=MinuteClock())


def test_chain_problems_are_named(engine, signer, log, tmp_path):
    archive(log, before=entry_time(engine, 6), out_dir=tmp_path / "a1")
    fill(log, 5, "s")
    archive(log, before=entry_time(engine, 14), out_dir=tmp_path / "a2")
    export(log, tmp_path / "live")
    key = signer.verifier_key()
    gap = check_chain([tmp_path / "a1", tmp_path / "live"], key)
    assert (
        gap.problem.message == "a1 is sealed at 6 but live starts at 14: entries 6..13 are missing"
    )
    unsealed = check_chain([tmp_path / "live", tmp_path / "a1"], key)
    assert "live is not a sealed archive, yet a1 follows it" in unsealed.problem.message
    overlap = check_chain([tmp_path / "a2", tmp_path / "a1"], key)
    assert "overlap from entry 0" in overlap.problem.message
    with pytest.raises(AuditUsageError, match="no export directory given"):
        check_chain([], key)
    with pytest.raises(ChainBroken, match="deleted: a1 is sealed at 6"):
        verify_chain([tmp_path / "a1", tmp_path / "live"], key)

"""The append-only log: appends, transactions, tree heads, proofs, triggers.

Runs on SQLite and (when GREENHOUSE_TEST_POSTGRES_URL is set) PostgreSQL.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from audit.checkpoint import cosign_checkpoint, parse_checkpoint, verify_checkpoint
from audit.entry import GENESIS_PREV, SYSTEM, Action, Actor, parse_entry
from audit.errors import (
    AppendFailed,
    AuditUsageError,
    BadSignature,
    CanonicalJSONError,
    MalformedEntry,
)
from audit.log import AuditLog
from audit.note import parse_note
from audit.schema import APPEND_ONLY_TABLES, install_append_only_triggers
from audit.tree import leaf_hash, root_of, verify_consistency, verify_inclusion

ALICE = Actor(identity="CN=alice,O=Hospital A", role="data-scientist")


def open_log(engine, signer, clock, every: int = 4) -> AuditLog:
    return AuditLog(engine, signer=signer, clock=clock, checkpoint_every=every)


def stored(engine) -> list[tuple[int, bytes, bytes, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, line, leaf_hash, prev_hash FROM audit_entries ORDER BY seq")
        ).all()
    return [(r[0], r[1].encode(), bytes(r[2]), bytes(r[3])) for r in rows]


def checkpoint_sizes(engine) -> list[int]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.text("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")
            )
        ]


def append_n(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(ALICE, Action.ROUND_COMPLETED, {"run_id": "r-1"}, {"round": i})


def test_appends_are_chained_leaves(engine, signer, clock):
    log = open_log(engine, signer, clock)
    first = log.append(ALICE, Action.RUN_SUBMITTED, {"run_id": "r-1"}, {"rounds": 3})
    second = log.append(SYSTEM, "run.started", {"run_id": "r-1"})
    assert (first.seq, second.seq) == (0, 1)
    rows = stored(engine)
    assert [parse_entry(r[1]) for r in rows] == [first, second]
    assert rows[0][3] == GENESIS_PREV
    assert rows[1][3] == rows[0][2] == leaf_hash(rows[0][1])
    assert second.prev == rows[0][2]
    assert log.size == 2


def test_tree_heads_every_n_and_on_close(engine, signer, clock):
    log = open_log(engine, signer, clock, every=4)
    append_n(log, 10)
    assert checkpoint_sizes(engine) == [4, 8]
    log.close()
    assert checkpoint_sizes(engine) == [4, 8, 10]
    leaves = [r[2] for r in stored(engine)]
    with engine.connect() as conn:
        notes = [
            r[0]
            for r in conn.execute(sa.text("SELECT note FROM audit_checkpoints ORDER BY tree_size"))
        ]
    for note in notes:
        cp = verify_checkpoint(note, signer.verifier_key()).checkpoint
        assert cp.origin == signer.name
        assert cp.root_hash == root_of(leaves[: cp.size])
    with pytest.raises(AuditUsageError, match="closed"):
        log.append(ALICE, Action.RUN_STOPPED)
    log.close()  # idempotent


def test_entry_commits_with_the_callers_transaction(engine, signer, clock):
    log = open_log(engine, signer, clock)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE runs (id INTEGER PRIMARY KEY, status TEXT)"))
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO runs VALUES (1, 'running')"))
        log.append(SYSTEM, Action.RUN_STARTED, {"run_id": "1"}, connection=conn)

    def fail_after_auditing() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE runs SET status = 'failed' WHERE id = 1"))
            log.append(SYSTEM, Action.RUN_FAILED, {"run_id": "1"}, connection=conn)
            raise RuntimeError("the state change failed after the audit entry")

    with pytest.raises(RuntimeError, match="failed after the audit entry"):
        fail_after_auditing()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM runs")).scalar() == "running"
    assert [parse_entry(r[1]).action for r in stored(engine)] == [Action.RUN_STARTED]
    # The rolled-back entry's sequence number is reused, the chain stays intact.
    again = log.append(SYSTEM, Action.RUN_STOPPED, {"run_id": "1"})
    assert again.seq == 1
    assert again.prev == stored(engine)[0][2]


def test_entry_joins_an_orm_session(engine, signer, clock):
    log = open_log(engine, signer, clock)
    with Session(engine) as session:
        log.append(ALICE, Action.RUN_SUBMITTED, connection=session)
        session.rollback()
    assert stored(engine) == []
    with Session(engine) as session, session.begin():
        log.append(ALICE, Action.RUN_SUBMITTED, connection=session)
    assert len(stored(engine)) == 1


def test_checkpoint_in_a_rolled_back_transaction_disappears_with_it(engine, signer, clock):
    log = open_log(engine, signer, clock, every=2)
    append_n(log, 1)

    def fail_after_auditing() -> None:
        with engine.begin() as conn:
            log.append(SYSTEM, Action.POLICY_RELOADED, connection=conn)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        fail_after_auditing()
    assert checkpoint_sizes(engine) == []
    append_n(log, 1)
    assert checkpoint_sizes(engine) == [2]


def test_reopen_resumes_from_the_stored_tree_state(engine, signer, clock):
    log = open_log(engine, signer, clock, every=4)
    append_n(log, 6)
    reopened = open_log(engine, signer, clock, every=4)
    assert reopened.size == 6
    append_n(reopened, 3)
    assert checkpoint_sizes(engine) == [4, 8]
    # The first instance notices the other writer and resynchronises.
    entry = log.append(SYSTEM, Action.AUDIT_ARCHIVED)
    assert entry.seq == 9 and entry.prev == stored(engine)[8][2]


def test_proofs_from_stored_leaf_hashes(engine, signer, clock):
    log = open_log(engine, signer, clock, every=5)
    append_n(log, 13)
    log.checkpoint()
    leaves = [r[2] for r in stored(engine)]
    proof = log.inclusion_proof(6)
    assert proof.tree_size == 13
    verify_inclusion(leaves[6], 6, 13, proof.hashes, root_of(leaves))
    small = log.inclusion_proof(2, tree_size=7)
    verify_inclusion(leaves[2], 2, 7, small.hashes, root_of(leaves[:7]))
    cons = log.consistency_proof(5)
    verify_consistency(5, 13, root_of(leaves[:5]), root_of(leaves), cons.hashes)
    assert log.consistency_proof(3, 9).new_root == root_of(leaves[:9])
    with pytest.raises(AuditUsageError, match="outside a tree of size 13"):
        log.inclusion_proof(13)
    with pytest.raises(AuditUsageError, match=r"outside 0..13 stored entries"):
        log.inclusion_proof(0, tree_size=14)
    with pytest.raises(AuditUsageError, match="from size 9 to size 5"):
        log.consistency_proof(9, 5)


def test_witness_cosignatures_are_verified_and_stored(engine, signer, clock, witness):
    log = open_log(engine, signer, clock, every=3)
    append_n(log, 3)
    with engine.connect() as conn:
        note = conn.execute(sa.text("SELECT note FROM audit_checkpoints")).scalar_one()
    cp = parse_checkpoint(parse_note(note).text)
    cosig = cosign_checkpoint(cp, witness, 1_700_000_000)
    log.add_cosignature(3, cosig, witness.verifier_key())
    log.add_cosignature(3, cosig.line(), witness.verifier_key())  # idempotent, from text
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_cosignatures")).scalar() == 1
    other = type(cp)(origin=cp.origin, size=cp.size, root_hash=bytes(32))
    with pytest.raises(BadSignature, match=r"cosignature by witness.hospital-a.example/w1"):
        log.add_cosignature(3, cosign_checkpoint(other, witness, 5), witness.verifier_key())
    with pytest.raises(AuditUsageError, match="no stored tree head of size 2"):
        log.add_cosignature(2, cosig, witness.verifier_key())
    with pytest.raises(AuditUsageError, match=r"not audit.example.org/superlink"):
        log.add_cosignature(3, cosig, signer.verifier_key())


@pytest.mark.parametrize(
    "table", [t for t in APPEND_ONLY_TABLES if t != "audit_archives"]
)  # audit_archives needs an archive cut: tests/unit/audit/test_audit_archive.py
def test_triggers_refuse_update_and_delete(engine, signer, clock, witness, table):
    log = open_log(engine, signer, clock, every=1)
    log.append(ALICE, Action.RUN_SUBMITTED)
    cp = parse_checkpoint(parse_note(log.checkpoint()).text)
    log.add_cosignature(1, cosign_checkpoint(cp, witness, 1), witness.verifier_key())
    column = {
        "audit_entries": "line",
        "audit_checkpoints": "note",
        "audit_cosignatures": "signature_line",
    }[table]
    for statement in (f"UPDATE {table} SET {column} = 'x'", f"DELETE FROM {table}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    if engine.dialect.name == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {table} CASCADE"))
    assert len(stored(engine)) == 1


def test_bad_arguments_write_nothing(engine, signer, clock):
    log = open_log(engine, signer, clock)
    with pytest.raises(CanonicalJSONError, match=r"float 0.5"):
        log.append(ALICE, Action.BUDGET_SPENT, {"run_id": "r"}, {"epsilon": 0.5})
    with pytest.raises(MalformedEntry, match="not in the vocabulary"):
        log.append(ALICE, "budget.refunded")
    with pytest.raises(MalformedEntry, match="subject key"):
        log.append(ALICE, Action.BUDGET_SPENT, {"Run": "r"})
    assert stored(engine) == [] and log.size == 0


def test_database_failure_fails_closed(engine, signer, clock):
    log = open_log(engine, signer, clock)
    log.append(ALICE, Action.RUN_SUBMITTED)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE audit_entries"))
    with pytest.raises(AppendFailed, match=r"audit entry 1 \(run.started\) was not written"):
        log.append(SYSTEM, Action.RUN_STARTED)
    with pytest.raises(AppendFailed, match="tree head at size 1 was not stored"):
        log.checkpoint()


def test_misuse_is_refused(engine, signer, clock):
    with pytest.raises(AuditUsageError, match="checkpoint_every must be >= 1"):
        AuditLog(engine, signer=signer, clock=clock, checkpoint_every=0)
    log = AuditLog(engine, signer=signer, clock=lambda: __import__("datetime").datetime(2025, 1, 1))
    with pytest.raises(AuditUsageError, match="timezone-aware"):
        log.append(ALICE, Action.RUN_SUBMITTED)
    log = open_log(engine, signer, clock)
    with engine.connect() as conn, pytest.raises(AuditUsageError, match="in a transaction"):
        log.append(ALICE, Action.RUN_SUBMITTED, connection=conn)
    with pytest.raises(AuditUsageError, match="Connection or Session"):
        log.append(ALICE, Action.RUN_SUBMITTED, connection="sqlite://")  # type: ignore[arg-type]


def test_unsupported_dialect_is_refused():
    fake = SimpleNamespace(dialect=SimpleNamespace(name="mysql"))
    with pytest.raises(AuditUsageError, match="not mysql"):
        install_append_only_triggers(fake)  # type: ignore[arg-type]


def test_open_failure_is_append_failed(tmp_path, signer, clock):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(AppendFailed, match="cannot open the audit log"):
        AuditLog(engine, signer=signer, clock=clock)


def test_bad_origin_is_refused(engine, signer, clock):
    with pytest.raises(AuditUsageError, match="one non-empty line"):
        AuditLog(engine, signer=signer, clock=clock, origin="two\nlines")

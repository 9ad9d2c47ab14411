"""Named insider attacks on a real SQLite audit database, caught offline.

Each scenario writes a log through :class:`audit.AuditLog`, closes it (so a
signed tree head covers every entry), then attacks the database file directly
with the ``sqlite3`` module, as an insider with file access would: first
through SQL (refused by the triggers), then around the triggers (dropping them,
or recreating the table). The export is verified with the log's real key,
obtained out of band, and ``check_export`` must name the kind of damage and
the first bad entry.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    AppendFailed,
    AuditLog,
    Checkpoint,
    NoteSigner,
    ProblemKind,
    canonical_json,
    check_export,
    export,
    leaf_hash,
    sign_checkpoint,
)
from audit.tree import TreeBuilder

N, EVERY = 30, 10
NODE = Actor(identity="CN=hospital-b,O=Hospital B", role="node")


def make_clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    start = datetime(2025, 6, 1, tzinfo=UTC)
    return lambda: start + timedelta(milliseconds=next(ticks))


@dataclass
class Site:
    db: Path
    signer: NoteSigner
    engine: sa.Engine

    def sql(self, *statements: str) -> None:
        """Run statements straight on the file, outside the library (the insider)."""
        conn = sqlite3.connect(self.db)
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def rows(self) -> list[tuple[int, str]]:
        conn = sqlite3.connect(self.db)
        try:
            return list(conn.execute("SELECT seq, line FROM audit_entries ORDER BY seq"))
        finally:
            conn.close()

    def check(self, out: Path):
        export(self.engine, out)
        return check_export(out, self.signer.verifier_key().encode())


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    db = tmp_path / "superlink.db"
    signer = NoteSigner(
        name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate()
    )
    engine = sa.create_engine(f"sqlite:///{db}", poolclass=NullPool)
    with AuditLog(engine, signer=signer, clock=make_clock(), checkpoint_every=EVERY) as log:
        for i in range(N):
            log.append(
                NODE,
                Action.EGRESS_REPLY,
                {"run_id": "run-7", "message_id": f"m-{i}"},
                {"bytes": 1000 + i, "metrics": ["loss"], "epsilon_milli": 250},
            )
    yield Site(db, signer, engine)
    engine.dispose()


# --- the triggers ------------------------------------------------------------------------


def test_update_through_sql_is_refused(site):
    with pytest.raises(sqlite3.IntegrityError, match="audit_entries is append-only: UPDATE"):
        site.sql("UPDATE audit_entries SET line = replace(line, '1012', '9999') WHERE seq = 12")


def test_delete_through_sql_is_refused(site):
    with pytest.raises(sqlite3.IntegrityError, match="audit_entries is append-only: DELETE"):
        site.sql("DELETE FROM audit_entries WHERE seq = 12")


def test_tree_heads_cannot_be_rewritten_through_sql(site):
    with pytest.raises(sqlite3.IntegrityError, match="audit_checkpoints is append-only"):
        site.sql("UPDATE audit_checkpoints SET note = 'forged'")


def test_reopening_the_log_reinstalls_dropped_triggers(site):
    site.sql("DROP TRIGGER audit_entries_refuse_update")
    AuditLog(site.engine, signer=site.signer, clock=make_clock()).close()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        site.sql("UPDATE audit_entries SET line = line WHERE seq = 0")


# --- around the triggers: the verifier must catch it ------------------------------------


def test_edit_details_after_dropping_the_trigger(site, tmp_path):
    site.sql(
        "DROP TRIGGER audit_entries_refuse_update",
        "UPDATE audit_entries SET line = replace(line, '\"bytes\":1012', '\"bytes\":10')"
        " WHERE seq = 12",
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.EDITED
    assert report.problem.entry_index == 12
    assert "entry 12 was edited" in report.problem.message


def test_edit_details_by_recreating_the_table(site, tmp_path):
    site.sql(
        "CREATE TABLE copy AS SELECT * FROM audit_entries",
        "UPDATE copy SET line = replace(line, '\"epsilon_milli\":250', '\"epsilon_milli\":25')"
        " WHERE seq = 21",
        "DROP TABLE audit_entries",
        "ALTER TABLE copy RENAME TO audit_entries",
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.EDITED
    assert report.problem.entry_index == 21


def test_edit_and_rewrite_the_whole_hash_chain(site, tmp_path):
    rows = site.rows()
    lines = [line.encode() for _, line in rows]
    lines[14] = lines[14].replace(b'"bytes":1014', b'"bytes":14')
    for i in range(15, len(lines)):
        obj = __import__("json").loads(lines[i])
        obj["prev"] = leaf_hash(lines[i - 1]).hex()
        lines[i] = canonical_json(obj)
    site.sql(
        "DROP TRIGGER audit_entries_refuse_update",
        *(
            f"UPDATE audit_entries SET line = '{lines[i].decode()}' WHERE seq = {i}"
            for i in range(14, len(lines))
        ),
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.TREE_MISMATCH
    assert (report.problem.entry_index, report.problem.tree_size) == (10, 20)


def test_delete_a_row(site, tmp_path):
    site.sql("DROP TRIGGER audit_entries_refuse_delete", "DELETE FROM audit_entries WHERE seq = 9")
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.DELETED
    assert report.problem.entry_index == 9


def test_swap_two_rows(site, tmp_path):
    rows = dict(site.rows())
    site.sql(
        "DROP TRIGGER audit_entries_refuse_update",
        f"UPDATE audit_entries SET line = '{rows[6]}' WHERE seq = 5",
        f"UPDATE audit_entries SET line = '{rows[5]}' WHERE seq = 6",
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.REORDERED
    assert report.problem.entry_index == 5
    assert "entry 5 is at line 6" in report.problem.message


def test_truncate_the_tail(site, tmp_path):
    site.sql(
        "DROP TRIGGER audit_entries_refuse_delete", "DELETE FROM audit_entries WHERE seq >= 26"
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.TRUNCATED
    assert (report.problem.entry_index, report.problem.tree_size) == (26, 30)


def test_truncate_the_tail_and_the_tree_heads(site, tmp_path):
    site.sql(
        "DROP TRIGGER audit_entries_refuse_delete",
        "DROP TRIGGER audit_checkpoints_refuse_delete",
        "DELETE FROM audit_entries WHERE seq >= 26",
        "DELETE FROM audit_checkpoints WHERE tree_size > 20",
    )
    report = site.check(tmp_path / "export")
    assert report.problem.kind is ProblemKind.UNSIGNED_ENTRIES
    assert report.problem.entry_index == 20


def test_forge_tree_heads_with_another_key(site, tmp_path):
    rows = site.rows()
    lines = [line.encode() for _, line in rows]
    lines[3] = lines[3].replace(b'"bytes":1003', b'"bytes":3')
    builder = TreeBuilder()
    for i, line in enumerate(lines):
        if i > 3:
            obj = __import__("json").loads(line)
            obj["prev"] = leaf_hash(lines[i - 1]).hex()
            lines[i] = line = canonical_json(obj)
        builder.append(leaf_hash(line))
    insider = NoteSigner(name=site.signer.name, private_key=Ed25519PrivateKey.generate())
    heads = {}
    replay = TreeBuilder()
    for i, line in enumerate(lines, start=1):
        replay.append(leaf_hash(line))
        if i % EVERY == 0:
            cp = Checkpoint(origin=site.signer.name, size=i, root_hash=replay.root())
            heads[i] = sign_checkpoint(cp, insider)
    site.sql(
        "DROP TRIGGER audit_entries_refuse_update",
        "DROP TRIGGER audit_checkpoints_refuse_update",
        *(
            f"UPDATE audit_entries SET line = '{lines[i].decode()}' WHERE seq = {i}"
            for i in range(3, len(lines))
        ),
        *(
            f"UPDATE audit_checkpoints SET note = '{note}' WHERE tree_size = {size}"
            for size, note in heads.items()
        ),
    )
    out = tmp_path / "export"
    report = site.check(out)
    assert report.problem.kind is ProblemKind.FORGED_TREE_HEAD
    assert report.problem.tree_size == 10
    # Replacing the export's own key file changes nothing: the key comes out of band.
    (out / "audit.vkey").write_text(insider.verifier_key().encode() + "\n")
    again = check_export(out, site.signer.verifier_key())
    assert again.problem.kind is ProblemKind.FORGED_TREE_HEAD


def test_writer_refuses_to_append_over_a_gap(site):
    log = AuditLog(site.engine, signer=site.signer, clock=make_clock(), checkpoint_every=EVERY)
    for _ in range(3):
        log.append(SYSTEM, Action.NODE_CONNECTED, {"node": "hospital-b"})
    site.sql("DROP TRIGGER audit_entries_refuse_delete", "DELETE FROM audit_entries WHERE seq = 31")
    with pytest.raises(AppendFailed, match="gaps"):
        AuditLog(site.engine, signer=site.signer, clock=make_clock(), checkpoint_every=EVERY)


def test_untouched_database_verifies(site, tmp_path):
    report = site.check(tmp_path / "export")
    assert report.ok and report.entries == N
    assert [c.tree_size for c in report.checkpoints] == [10, 20, 30]


# --- PostgreSQL: the same refusal by a plpgsql trigger -----------------------------------

PG_URL = os.environ.get("GREENHOUSE_TEST_POSTGRES_URL", "")


@pytest.mark.skipif(
    not PG_URL,
    reason="needs a PostgreSQL server: set GREENHOUSE_TEST_POSTGRES_URL (set by .ci/run)",
)
def test_postgres_triggers_refuse_update_delete_truncate():
    schema = f"gh_attack_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        signer = NoteSigner(name="audit.example.org/pg", private_key=Ed25519PrivateKey.generate())
        with AuditLog(engine, signer=signer, clock=make_clock()) as log:
            log.append(NODE, Action.EGRESS_REPLY, {"run_id": "run-7"}, {"bytes": 1})
        for statement in (
            "UPDATE audit_entries SET line = 'x'",
            "DELETE FROM audit_entries",
            "TRUNCATE audit_entries CASCADE",
            "UPDATE audit_checkpoints SET note = 'forged'",
            "DELETE FROM audit_checkpoints",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

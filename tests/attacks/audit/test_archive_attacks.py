"""Named attacks on retention: archives, the cut, and deleting history without one.

A SuperLink log is archived twice (entries 0..5, then 6..13); the archives and
the live export form a chain that :func:`audit.check_chain` verifies with the
log's key. An insider then edits the archive files, or deletes old rows
straight from the SQLite file (dropping the triggers) to pretend an archive
was made. Each attack must be named with the entry it concerns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit import (
    SYSTEM,
    Action,
    AuditLog,
    ExportFailed,
    NoteSigner,
    ProblemKind,
    archive,
    canonical_json,
    check_chain,
    check_export,
    export,
    leaf_hash,
)

EVERY = 4


def minute_clock() -> Callable[[], datetime]:
    ticks = iter(range(1, 10**9))
    start = datetime(2025, 8, 1, tzinfo=UTC)
    return lambda: start + timedelta(minutes=next(ticks))


class Log:
    def __init__(self, directory: Path, signer: NoteSigner | None = None) -> None:
        self.directory = directory
        self.db = directory / "link.db"
        self.signer = signer or NoteSigner(
            name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate()
        )
        self.engine = sa.create_engine(f"sqlite:///{self.db}", poolclass=NullPool)
        self.log = AuditLog(
            self.engine, signer=self.signer, clock=minute_clock(), checkpoint_every=EVERY
        )

    def fill(self, n: int, run_id: str = "r") -> None:
        for i in range(n):
            self.log.append(SYSTEM, Action.BUDGET_SPENT, {"run_id": run_id}, {"epsilon_milli": i})

    def time_of(self, seq: int) -> datetime:
        conn = sqlite3.connect(self.db)
        try:
            (line,) = conn.execute(
                "SELECT line FROM audit_entries WHERE seq = ?", (seq,)
            ).fetchone()
        finally:
            conn.close()
        return datetime.fromisoformat(json.loads(line)["time"])

    def sql(self, *statements: str, params: tuple[object, ...] = ()) -> None:
        conn = sqlite3.connect(self.db)
        try:
            for statement in statements:
                conn.execute(statement, params if "?" in statement else ())
            conn.commit()
        finally:
            conn.close()

    def check(self, *names: str):
        return check_chain([self.directory / n for n in names], self.signer.verifier_key())


@pytest.fixture
def chain(tmp_path: Path) -> Log:
    log = Log(tmp_path)
    log.fill(10)
    archive(log.log, before=log.time_of(6), out_dir=tmp_path / "a1")  # 0..5, entry 10 records it
    log.fill(4)
    archive(log.log, before=log.time_of(14), out_dir=tmp_path / "a2")  # 6..13
    log.fill(2)
    export(log.log, tmp_path / "live")  # 14..
    return log


def lines(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().splitlines()


def write(d: Path, new: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in new))


def test_chain_of_archives_verifies(chain):
    report = chain.check("a1", "a2", "live")
    assert report.ok, report.problem
    assert [(s.start, s.end, s.sealed) for s in report.segments] == [
        (0, 6, 6),
        (6, 14, 14),
        (14, 18, None),
    ]


def test_editing_an_archived_entry(chain):
    old = lines(chain.directory / "a2")
    old[3] = old[3].replace(b'"epsilon_milli":9', b'"epsilon_milli":0')
    write(chain.directory / "a2", old)
    problem = chain.check("a1", "a2", "live").problem
    assert problem.kind is ProblemKind.EDITED and problem.entry_index == 9
    assert problem.message.startswith("a2: entry 9 was edited")


def test_editing_an_archived_entry_and_rewriting_its_chain(chain):
    old = lines(chain.directory / "a1")
    old[2] = old[2].replace(b'"epsilon_milli":2', b'"epsilon_milli":0')
    for i in range(3, len(old)):
        obj = json.loads(old[i])
        obj["prev"] = leaf_hash(old[i - 1]).hex()
        old[i] = canonical_json(obj)
    write(chain.directory / "a1", old)
    problem = chain.check("a1", "a2", "live").problem
    assert problem.kind is ProblemKind.TREE_MISMATCH
    assert (problem.entry_index, problem.tree_size) == (0, 4)
    # ...and the next archive still chains to the original last entry
    assert chain.check("a2", "live").ok


def test_dropping_the_end_of_an_archive(chain):
    write(chain.directory / "a2", lines(chain.directory / "a2")[:-2])
    problem = chain.check("a1", "a2", "live").problem
    assert problem.kind is ProblemKind.TRUNCATED and problem.entry_index == 12


def test_dropping_the_seal_of_an_archive(chain):
    (chain.directory / "a1" / "checkpoints" / f"{6:020d}.note").unlink()
    problem = chain.check("a1", "a2", "live").problem
    assert problem.kind is ProblemKind.BROKEN_SEGMENT
    assert "sealed at tree size 6 but ends at entry 6 with its last signed tree head at 4" in (
        problem.message
    )


def test_forging_where_a_segment_starts(chain):
    path = chain.directory / "live" / "segment.json"
    manifest = json.loads(path.read_text())
    manifest["start_compact_range"][0] = "00" * 32
    path.write_text(json.dumps(manifest))
    problem = chain.check("a1", "a2", "live").problem
    assert problem.kind is ProblemKind.BROKEN_SEGMENT and problem.tree_size == 14
    assert "start state folds to" in problem.message


def test_removing_a_segment_manifest_shows_the_missing_entries(chain):
    (chain.directory / "live" / "segment.json").unlink()
    report = check_export(chain.directory / "live", chain.signer.verifier_key())
    assert report.problem.kind is ProblemKind.DELETED
    assert report.problem.message == "entries 0..13 are missing: line 0 holds entry 14"


def test_leaving_out_an_archive(chain):
    problem = chain.check("a1", "live").problem
    assert problem.kind is ProblemKind.DELETED and problem.entry_index == 6


def test_archive_of_another_log_with_the_same_key(chain, tmp_path):
    """An insider with the key builds a parallel history and swaps in its archive."""
    (tmp_path / "other").mkdir()
    other = Log(tmp_path / "other", chain.signer)
    other.fill(7, run_id="r-hidden")
    archive(other.log, before=other.time_of(6), out_dir=tmp_path / "b1")
    problem = chain.check("b1", "a2", "live").problem
    assert problem.kind is ProblemKind.INCONSISTENT_CHECKPOINTS
    assert "forked at the cut" in problem.message


def test_deleting_old_rows_without_an_archive(tmp_path):
    log = Log(tmp_path)
    log.fill(10)
    log.log.close()
    log.sql("DROP TRIGGER audit_entries_refuse_delete", "DELETE FROM audit_entries WHERE seq < 4")
    export(log.engine, tmp_path / "e")
    problem = check_export(tmp_path / "e", log.signer.verifier_key()).problem
    assert problem.kind is ProblemKind.DELETED
    assert problem.message == "entries 0..3 are missing: line 0 holds entry 4"


def test_deleting_old_rows_with_a_forged_cut_record(tmp_path):
    """The insider also forges the audit_archives row (copying the real tree head at 8,
    so the export carries a plausible segment.json); no audit.archived entry signed by
    the log announces that cut, so the verifier reports the entries as deleted."""
    log = Log(tmp_path)
    log.fill(10)
    log.log.close()
    proof = log.log.inclusion_proof(7, 8)
    conn = sqlite3.connect(log.db)
    (root, compact) = conn.execute(
        "SELECT root_hash, compact_range FROM audit_checkpoints WHERE tree_size = 8"
    ).fetchone()
    conn.close()
    log.sql(
        "DROP TRIGGER audit_entries_refuse_delete",
        "DROP TRIGGER audit_checkpoints_refuse_delete",
        "DELETE FROM audit_entries WHERE seq < 8",
        "DELETE FROM audit_checkpoints WHERE tree_size < 8",
        "INSERT INTO audit_archives VALUES (8, 0, ?, ?, ?, ?, 'x', 'x', 'x')",
        params=(root, compact, proof.leaf_hash, b"".join(proof.hashes)),
    )
    export(log.engine, tmp_path / "e")
    assert (tmp_path / "e" / "segment.json").exists()
    problem = check_export(tmp_path / "e", log.signer.verifier_key()).problem
    assert problem.kind is ProblemKind.DELETED and problem.entry_index == 0
    assert "no audit.archived entry in it records an archive cut there" in problem.message


def test_archive_refuses_to_copy_a_tampered_log(tmp_path):
    log = Log(tmp_path)
    log.fill(10)
    log.sql(
        "DROP TRIGGER audit_entries_refuse_update",
        "UPDATE audit_entries SET line = replace(line, '\"epsilon_milli\":2', "
        "'\"epsilon_milli\":0') WHERE seq = 2",
    )
    with pytest.raises(ExportFailed, match="does not verify, nothing deleted: edited: entry 2"):
        archive(log.log, before=log.time_of(6), out_dir=tmp_path / "a")
    conn = sqlite3.connect(log.db)
    assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == (10,)
    conn.close()

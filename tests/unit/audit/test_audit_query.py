"""Sources and filters for `greenhouse audit show` (a view: nothing is verified here)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from audit import (
    Action,
    AuditUsageError,
    DatabaseSource,
    EntryQuery,
    ExportFailed,
    ExportSource,
    MalformedEntry,
    open_source,
    open_sqlite,
)


def seqs(source, **query) -> list[int]:
    return [e.seq for e in source.entries(EntryQuery(**query))]


def test_filters_on_a_database_and_an_export(federation):
    site_dir, _ = federation.export()
    db = open_source(federation.directory / "site.db")
    exported = open_source(site_dir)
    assert isinstance(db, DatabaseSource) and isinstance(exported, ExportSource)
    for source in (db, exported):
        assert seqs(source) == list(range(6))
        assert seqs(source, actions={Action.EGRESS_REPLY}) == [1, 4]
        assert seqs(source, actions={"checkpoint.seen", "message.received"}) == [0, 2, 3, 5]
        assert seqs(source, run_id="run-1", actions={Action.EGRESS_REPLY}) == [1, 4]
        assert seqs(source, run_id="run-2") == []
    times = [e.time for e in exported.entries(EntryQuery())]
    assert seqs(exported, since=times[3]) == [3, 4, 5]
    assert seqs(exported, since=times[-1] + timedelta(seconds=1)) == []


def test_bad_queries():
    with pytest.raises(AuditUsageError, match="unknown action"):
        EntryQuery(actions={"run.deleted"})
    with pytest.raises(AuditUsageError, match="must be timezone-aware"):
        EntryQuery(since=datetime(2025, 1, 1))
    assert EntryQuery(since=datetime(2025, 1, 1, tzinfo=UTC)).since is not None


def test_bad_sources(tmp_path):
    with pytest.raises(AuditUsageError, match="is not a database file"):
        open_source(tmp_path / "missing.db")
    with pytest.raises(AuditUsageError, match="is not a database file"):
        open_sqlite(tmp_path)
    empty = tmp_path / "other.db"
    sqlite3.connect(empty).execute("CREATE TABLE runs (id TEXT)").connection.close()
    with pytest.raises(AuditUsageError, match=r"other\.db holds no readable audit log"):
        list(open_source(empty).entries(EntryQuery()))
    with pytest.raises(ExportFailed, match=r"cannot read .*entries\.jsonl"):
        list(ExportSource(tmp_path).entries(EntryQuery()))
    (tmp_path / "entries.jsonl").write_bytes(b'{"seq":0}\n')
    with pytest.raises(MalformedEntry, match="entry must be an object with exactly"):
        list(ExportSource(tmp_path).entries(EntryQuery()))


def test_read_only_database_is_not_written(federation):
    path = federation.directory / "site.db"
    engine = open_sqlite(path)
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
        conn.exec_driver_sql("CREATE TABLE x (y INTEGER)")

"""Opening the state: URLs, SQLite defaults, schema version, unreachable databases."""

import sqlite3
import stat

import pytest

from appliance.state import InvalidArgument, State, StorageError, default_url


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_default_is_sqlite_in_the_data_dir(tmp_path):
    data_dir = tmp_path / "superlink"
    with State.open(data_dir=data_dir) as state:
        assert state.backend == "sqlite"
        state.record_event("superlink.started", {})
    db = data_dir / "state.db"
    assert default_url(data_dir) == f"sqlite:///{db}"
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "blobs") == 0o700
    assert _mode(db) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_connections_enforce_foreign_keys(tmp_path):
    with State.open(data_dir=tmp_path) as state, state._write() as session:
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_state_reports_its_backend(state, backend):
    assert state.backend == backend.name


BAD_URLS = {
    "memory": ("sqlite://", "needs a SQLite file"),
    "explicit memory": ("sqlite:///:memory:", "needs a SQLite file"),
    "psycopg2": ("postgresql://u:secret@localhost/db", r"use postgresql\+psycopg://"),
    "mysql": ("mysql://u@localhost/db", "unsupported database URL"),
    "garbage": ("not a url", "cannot parse database URL"),
}


@pytest.mark.parametrize("case", BAD_URLS.values(), ids=list(BAD_URLS))
def test_unsupported_urls(tmp_path, case):
    url, message = case
    with pytest.raises(InvalidArgument, match=message) as info:
        State.open(url, data_dir=tmp_path)
    assert "secret" not in str(info.value)


def test_newer_schema_is_refused(tmp_path):
    State.open(data_dir=tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE settings SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="schema version 99 is newer than this Greenhouse"):
        State.open(data_dir=tmp_path)


def test_unreachable_postgres_is_a_storage_error_without_the_password(tmp_path):
    url = "postgresql+psycopg://greenhouse:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    with pytest.raises(StorageError, match=r"state database postgresql\+psycopg://") as info:
        State.open(url, data_dir=tmp_path)
    assert "hunter2" not in str(info.value)

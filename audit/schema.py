"""The audit tables, their append-only triggers, and the read queries over them.

Four tables, portable SQLAlchemy 2.x Core types (SQLite and PostgreSQL):

``audit_entries``
    ``seq`` BIGINT primary key (= Merkle leaf index), ``line`` TEXT (the
    canonical entry line, UTF-8, no newline: the leaf data), ``leaf_hash``
    BLOB/BYTEA(32), ``prev_hash`` BLOB/BYTEA(32).
``audit_checkpoints``
    ``tree_size`` BIGINT primary key, ``root_hash`` (32 bytes),
    ``compact_range`` (the 32-byte subtree roots of ``[0, tree_size)``,
    concatenated, so the writer resumes without replaying the log),
    ``note`` TEXT (the signed note), ``signer_vkey`` TEXT, ``created_at`` TEXT
    (RFC 3339 UTC).
``audit_cosignatures``
    primary key (``tree_size``, ``key_name``, ``key_id`` hex), ``signature_line``
    TEXT, ``witness_vkey`` TEXT, ``created_at`` TEXT.
``audit_archives``
    one row per archive cut (:mod:`audit.archive`): ``tree_size`` BIGINT primary
    key (the sealing tree head = the first ``seq`` still stored), ``start_size``
    (first ``seq`` of the archived segment), ``root_hash``, ``compact_range``,
    ``last_leaf_hash`` and ``last_leaf_proof`` (leaf ``tree_size - 1`` and its
    inclusion proof in the sealed tree, concatenated), ``entries_sha256`` (hex
    digest of the archive's ``entries.jsonl``), ``before`` and ``created_at``.

UPDATE and DELETE (and TRUNCATE on PostgreSQL) are refused by database
triggers on all four tables, installed by :func:`ensure_schema`: on SQLite
``BEFORE UPDATE/DELETE ... SELECT RAISE(ABORT, ...)``, on PostgreSQL a plpgsql
function raising ``insufficient_privilege``. Triggers stop mistakes and casual
edits; an insider with DDL rights can drop them, which is why the log is also
hash-chained, Merkle-hashed and signed, and verified offline.

The one sanctioned exception is :func:`unsafe_delete_below`, called only by
:mod:`audit.archive` after a verified archive was written: inside the caller's
transaction it drops the DELETE guards, deletes the archived prefix and
reinstalls them, so no other connection ever sees the tables unguarded.

This module writes no entries (only :mod:`audit.log` appends).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    delete,
    select,
    text,
)

from audit.errors import AuditUsageError

__all__ = [
    "APPEND_ONLY_TABLES",
    "ArchiveRow",
    "CheckpointRow",
    "audit_archives",
    "audit_checkpoints",
    "audit_cosignatures",
    "audit_entries",
    "ensure_schema",
    "install_append_only_triggers",
    "iter_checkpoints",
    "iter_cosignature_lines",
    "iter_leaf_hashes",
    "iter_lines",
    "latest_archive",
    "latest_checkpoint",
    "metadata",
    "read_tail",
    "unsafe_delete_below",
]

metadata = MetaData()

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("line", Text, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("compact_range", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("signer_vkey", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)

audit_cosignatures = Table(
    "audit_cosignatures",
    metadata,
    Column(
        "tree_size",
        BigInteger,
        ForeignKey("audit_checkpoints.tree_size"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("key_name", String(255), primary_key=True),
    Column("key_id", String(8), primary_key=True),
    Column("signature_line", Text, nullable=False),
    Column("witness_vkey", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)

audit_archives = Table(
    "audit_archives",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("start_size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("compact_range", LargeBinary, nullable=False),
    Column("last_leaf_hash", LargeBinary(32), nullable=False),
    Column("last_leaf_proof", LargeBinary, nullable=False),
    Column("entries_sha256", String(64), nullable=False),
    Column("before", String(32), nullable=False),
    Column("created_at", String(32), nullable=False),
)

APPEND_ONLY_TABLES = ("audit_entries", "audit_checkpoints", "audit_cosignatures", "audit_archives")
_ARCHIVED_TABLES = (  # deletion order (foreign keys), with the column holding the position
    (audit_cosignatures, audit_cosignatures.c.tree_size),
    (audit_checkpoints, audit_checkpoints.c.tree_size),
    (audit_entries, audit_entries.c.seq),
)

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION greenhouse_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING
    MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused',
    ERRCODE = 'insufficient_privilege';
END;
$$
"""


def _sqlite_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_refuse_{op.lower()} "
        f"BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
        for op in ("UPDATE", "DELETE")
    ]


def _pg_triggers(table: str) -> list[tuple[str, str]]:
    return [
        (
            f"{table}_append_only",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION greenhouse_audit_append_only()",
        ),
        (
            f"{table}_no_truncate",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION greenhouse_audit_append_only()",
        ),
    ]


def install_append_only_triggers(conn: Connection) -> None:
    """(Re)install the triggers that refuse UPDATE/DELETE on the audit tables.

    Idempotent; also restores a trigger someone dropped.

    Raises:
        AuditUsageError: the database is neither SQLite nor PostgreSQL.
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for statement in _sqlite_triggers(table):
                conn.execute(text(statement))
    elif dialect == "postgresql":
        conn.execute(text(_PG_FUNCTION))
        exists = text(
            "SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass(:tbl)"
        )
        for table in APPEND_ONLY_TABLES:
            for name, statement in _pg_triggers(table):
                if conn.execute(exists, {"name": name, "tbl": table}).first() is None:
                    conn.execute(text(statement))
    else:
        raise AuditUsageError(f"audit log supports sqlite and postgresql, not {dialect}")


def _sqlite_in_transaction(conn: Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    return bool(getattr(dbapi, "in_transaction", False))


def unsafe_delete_below(conn: Connection, tree_size: int) -> None:
    """Delete entries, tree heads and cosignatures below ``tree_size``, past the triggers.

    WARNING: this is the only code that removes audit rows. Call it only from
    :func:`audit.archive.archive`, after the archive of those rows was written,
    synced and verified, in the transaction that also appends the
    ``audit.archived`` entry and records the cut in ``audit_archives``. The
    DELETE guards are dropped and reinstalled inside that transaction (DDL is
    transactional in SQLite and PostgreSQL; PostgreSQL's DROP TRIGGER also
    locks the tables until commit), so a failure anywhere rolls it all back.

    Raises:
        AuditUsageError: no database transaction is open on ``conn`` yet (on
            SQLite the DDL would otherwise commit on its own), or another dialect.
    """
    dialect = conn.dialect.name
    if not conn.in_transaction() or (dialect == "sqlite" and not _sqlite_in_transaction(conn)):
        raise AuditUsageError("unsafe_delete_below needs a transaction that has already written")
    for table, column in _ARCHIVED_TABLES:
        name = table.name
        if dialect == "sqlite":
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}_refuse_delete"))
        elif dialect == "postgresql":
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}_append_only ON {name}"))
        else:
            raise AuditUsageError(f"audit log supports sqlite and postgresql, not {dialect}")
        conn.execute(delete(table).where(column < tree_size))
    install_append_only_triggers(conn)


def ensure_schema(conn: Connection) -> None:
    """Create the audit tables if missing and install the append-only triggers."""
    metadata.create_all(conn, checkfirst=True)
    install_append_only_triggers(conn)


_STREAM = {"yield_per": 4096}
_TAIL = (
    select(audit_entries.c.seq, audit_entries.c.leaf_hash)
    .order_by(audit_entries.c.seq.desc())
    .limit(1)
)


def read_tail(conn: Connection) -> tuple[int, bytes | None]:
    """Return ``(number of entries, leaf hash of the last entry or None)``.

    The number of entries is the last ``seq`` + 1; gaps are the verifier's business.
    """
    row = conn.execute(_TAIL).first()
    if row is None:
        return 0, None
    return int(row.seq) + 1, bytes(row.leaf_hash)


def iter_leaf_hashes(conn: Connection, start: int, end: int) -> Iterator[bytes]:
    """Yield the stored leaf hashes of entries ``start <= seq < end`` in order."""
    query = (
        select(audit_entries.c.leaf_hash)
        .where(audit_entries.c.seq >= start, audit_entries.c.seq < end)
        .order_by(audit_entries.c.seq)
    )
    # Statement-level option: Connection.execution_options() would change the
    # caller's connection for good (server-side cursors for their next INSERT).
    result = conn.execute(query, execution_options=_STREAM)
    for (leaf,) in result:
        yield bytes(leaf)


def iter_lines(conn: Connection, end: int | None = None, start: int = 0) -> Iterator[str]:
    """Yield entry lines in ``seq`` order (optionally only ``start <= seq < end``)."""
    query = select(audit_entries.c.line).order_by(audit_entries.c.seq)
    if end is not None:
        query = query.where(audit_entries.c.seq < end)
    if start:
        query = query.where(audit_entries.c.seq >= start)
    for (line,) in conn.execute(query, execution_options=_STREAM):
        yield str(line)


class CheckpointRow(NamedTuple):
    """One stored signed tree head."""

    tree_size: int
    root_hash: bytes
    compact_range: bytes
    note: str
    signer_vkey: str
    created_at: str


def _checkpoint_row(row: Row[Any]) -> CheckpointRow:
    m = row._mapping
    return CheckpointRow(
        tree_size=int(m["tree_size"]),
        root_hash=bytes(m["root_hash"]),
        compact_range=bytes(m["compact_range"]),
        note=str(m["note"]),
        signer_vkey=str(m["signer_vkey"]),
        created_at=str(m["created_at"]),
    )


def latest_checkpoint(conn: Connection, max_size: int) -> CheckpointRow | None:
    """Return the largest stored checkpoint with ``tree_size <= max_size``."""
    c = audit_checkpoints.c
    row = conn.execute(
        select(audit_checkpoints)
        .where(c.tree_size <= max_size)
        .order_by(c.tree_size.desc())
        .limit(1)
    ).first()
    return None if row is None else _checkpoint_row(row)


def iter_checkpoints(conn: Connection, max_size: int | None = None) -> Iterator[CheckpointRow]:
    """Yield stored checkpoints in increasing tree size."""
    query = select(audit_checkpoints).order_by(audit_checkpoints.c.tree_size)
    if max_size is not None:
        query = query.where(audit_checkpoints.c.tree_size <= max_size)
    for row in conn.execute(query):
        yield _checkpoint_row(row)


def iter_cosignature_lines(conn: Connection, tree_size: int) -> Iterator[str]:
    """Yield the stored cosignature lines of one checkpoint, in a stable order."""
    c = audit_cosignatures.c
    query = select(c.signature_line).where(c.tree_size == tree_size).order_by(c.key_name, c.key_id)
    for (line,) in conn.execute(query):
        yield str(line)


class ArchiveRow(NamedTuple):
    """One archive cut: the stored log now starts at ``tree_size``."""

    tree_size: int
    start_size: int
    root_hash: bytes
    compact_range: bytes
    last_leaf_hash: bytes
    last_leaf_proof: bytes
    entries_sha256: str
    before: str
    created_at: str


def latest_archive(conn: Connection) -> ArchiveRow | None:
    """Return the most recent archive cut (largest ``tree_size``), or None."""
    query = select(audit_archives).order_by(audit_archives.c.tree_size.desc()).limit(1)
    row = conn.execute(query).first()
    if row is None:
        return None
    m = row._mapping
    return ArchiveRow(
        tree_size=int(m["tree_size"]),
        start_size=int(m["start_size"]),
        root_hash=bytes(m["root_hash"]),
        compact_range=bytes(m["compact_range"]),
        last_leaf_hash=bytes(m["last_leaf_hash"]),
        last_leaf_proof=bytes(m["last_leaf_proof"]),
        entries_sha256=str(m["entries_sha256"]),
        before=str(m["before"]),
        created_at=str(m["created_at"]),
    )

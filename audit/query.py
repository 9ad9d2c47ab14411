"""Reading entries for people: filters and pluggable sources (``greenhouse audit show``).

An :class:`EntrySource` yields the entries matching an :class:`EntryQuery`, in
``seq`` order. Two sources are built in: :class:`DatabaseSource` (the audit
tables of a local database) and :class:`ExportSource` (an export directory);
a source reading from the SuperLink's Control API plugs in by implementing the
same protocol. :func:`open_source` picks one for a local path.

Showing is not verifying: a source parses every entry strictly
(:func:`audit.entry.parse_entry`) but checks no chain, root or signature - that
is :mod:`audit.verify`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from audit.entry import Action, Entry, parse_entry
from audit.errors import AuditUsageError, ExportFailed
from audit.schema import iter_lines
from audit.verify import ENTRIES_FILE

__all__ = [
    "DatabaseSource",
    "EntryQuery",
    "EntrySource",
    "ExportSource",
    "open_source",
    "open_sqlite",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryQuery:
    """Which entries to show: all filters must match (empty = no filter)."""

    run_id: str | None = None
    actions: frozenset[Action] = field(default_factory=frozenset)
    since: datetime | None = None

    def __post_init__(self) -> None:
        try:
            actions = frozenset(Action(a) for a in self.actions)
        except ValueError as exc:
            raise AuditUsageError(f"unknown action: {exc}") from exc
        object.__setattr__(self, "actions", actions)
        if self.since is not None and (self.since.tzinfo is None or self.since.utcoffset() is None):
            raise AuditUsageError("the --since time must be timezone-aware")

    def _may_match(self, line: bytes) -> bool:
        """Cheap pre-filter on the raw line (exact for actions: canonical form)."""
        return not self.actions or any(
            b'"action":"' + a.value.encode() + b'"' in line for a in self.actions
        )

    def matches(self, entry: Entry) -> bool:
        """True when ``entry`` passes every filter (``run_id`` is ``subjects.run_id``)."""
        return (
            (not self.actions or entry.action in self.actions)
            and (self.run_id is None or entry.subjects.get("run_id") == self.run_id)
            and (self.since is None or entry.time >= self.since)
        )


class EntrySource(Protocol):
    """Where ``show`` reads entries from."""

    def entries(self, query: EntryQuery) -> Iterator[Entry]:
        """Yield the entries matching ``query`` in ``seq`` order.

        Raises:
            AuditError: the source cannot be read, or holds a malformed entry.
        """
        ...


def _select(lines: Iterable[bytes], query: EntryQuery) -> Iterator[Entry]:
    for line in lines:
        if query._may_match(line) and query.matches(entry := parse_entry(line)):
            yield entry


@dataclass(frozen=True, slots=True)
class DatabaseSource:
    """The audit tables of a database (SQLite or PostgreSQL)."""

    engine: Engine
    name: str = "the database"

    def entries(self, query: EntryQuery) -> Iterator[Entry]:
        """See :class:`EntrySource`.

        Raises:
            AuditUsageError: the database holds no audit tables or cannot be read.
            MalformedEntry: a stored line is not a valid entry.
        """
        try:
            with self.engine.connect() as conn:
                yield from _select((line.encode("utf-8") for line in iter_lines(conn)), query)
        except SQLAlchemyError as exc:
            raise AuditUsageError(
                f"{self.name} holds no readable audit log ({type(exc).__name__})"
            ) from exc


@dataclass(frozen=True, slots=True)
class ExportSource:
    """An export directory (its ``entries.jsonl``)."""

    directory: Path

    def entries(self, query: EntryQuery) -> Iterator[Entry]:
        """See :class:`EntrySource`.

        Raises:
            ExportFailed: ``entries.jsonl`` cannot be read.
            MalformedEntry: a line is not a valid entry.
        """
        path = self.directory / ENTRIES_FILE
        try:
            with path.open("rb") as f:
                yield from _select((raw.rstrip(b"\n") for raw in f), query)
        except OSError as exc:
            raise ExportFailed(f"cannot read {path}: {exc.strerror}") from exc


def open_sqlite(path: str | Path, *, read_only: bool = True) -> Engine:
    """Return an engine on an existing SQLite database file.

    A writable engine uses WAL with a synced log (``synchronous=FULL``): one
    fsync per committed entry, and an entry that returned is on disk even if
    the power fails next.

    Raises:
        AuditUsageError: the file does not exist.
    """
    target = Path(path)
    if not target.is_file():
        raise AuditUsageError(f"{target} is not a database file")
    if not read_only:
        engine = create_engine(URL.create("sqlite", database=str(target)))
        event.listen(engine, "connect", _durable_wal)
        return engine
    uri = f"file:{quote(str(target))}?mode=ro"
    return create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=NullPool
    )


def _durable_wal(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def open_source(path: str | Path) -> EntrySource:
    """An export directory or a local SQLite database file, whichever ``path`` is.

    Raises:
        AuditUsageError: ``path`` is neither.
    """
    target = Path(path)
    if target.is_dir():
        return ExportSource(target)
    return DatabaseSource(open_sqlite(target), name=str(target))

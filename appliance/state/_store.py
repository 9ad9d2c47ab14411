"""Engine setup and the transaction helpers every part of ``State`` uses.

This module owns how the state talks to its database: which URLs are accepted,
the SQLite pragmas (WAL, foreign keys, busy timeout), and the two kinds of
short transactions:

* ``_read()`` -- a plain transaction (``BEGIN`` / READ COMMITTED);
* ``_write()`` -- on SQLite ``BEGIN IMMEDIATE``, so the write lock is taken up
  front and waits up to the busy timeout instead of failing with "database is
  locked" when two read-then-write transactions race. PostgreSQL relies on
  conditional ``UPDATE ... WHERE status = ...`` statements and row locks.

Database driver errors are translated here, once: connection/lock failures
become :class:`StorageError`, a stray constraint violation :class:`Conflict`.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from appliance.state.audit_sink import AuditActor, AuditSink
from appliance.state.blobs import BlobStore
from appliance.state.errors import AuditFailed, Conflict, InvalidArgument, StateError, StorageError
from appliance.state.models import SCHEMA_VERSION, Base, SettingRow

#: How long a SQLite writer waits for the lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
_MAX_ID = 2**63 - 1
_WRITE_OPTION = "greenhouse_write"


class RetryTransaction(Exception):
    """Raised inside a transaction to roll it back so the caller can try again."""


def new_id() -> int:
    """A random id in ``1 .. 2**63 - 1`` (fits BIGINT, valid as unsigned 64-bit)."""
    while True:
        value = secrets.randbits(63)
        if value:
            return value


def check_id(value: object, what: str) -> int:
    """Return ``value`` if it is a valid node or run id, else raise InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise InvalidArgument(f"{what} must be an int in 0..2**63-1, got {value!r:.40}")
    return value


def check_text(value: object, what: str, max_chars: int) -> str:
    """A non-empty single-line name without control characters or edge spaces."""
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise InvalidArgument(f"{what} must be a string of 1..{max_chars} characters")
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(f"{what} {value!r:.80} has control characters or edge spaces")
    return check_key_text(value, what)


def clean_text(value: str) -> str:
    """Free text made storable on every backend.

    PostgreSQL refuses NUL characters in text and no driver can encode lone
    surrogates; both are replaced (by U+FFFD and ``?``), so a log line or a reason
    is stored the same way on SQLite and PostgreSQL instead of failing on one.
    """
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def is_key_text(value: str) -> bool:
    """Whether ``value`` can be stored (and looked up) exactly: no NUL, no lone surrogate."""
    return "\x00" not in value and clean_text(value) == value


def check_key_text(value: str, what: str) -> str:
    """An id-like string (message or group id) that must be stored exactly.

    Raises:
        InvalidArgument: it holds a NUL character or a lone surrogate.
    """
    if not is_key_text(value):
        raise InvalidArgument(f"{what} {value!r:.80} holds a NUL or an unencodable character")
    return value


def safe_url(url: URL) -> str:
    """The URL without its password, for messages."""
    return url.render_as_string(hide_password=True)


def parse_url(url: str) -> URL:
    """Parse and check a database URL (``sqlite:///FILE`` or ``postgresql+psycopg://``).

    Raises:
        InvalidArgument: unparsable, in-memory SQLite, or an unsupported driver.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The text may hold a password: do not echo it.
        raise InvalidArgument(
            "cannot parse database URL (expected sqlite:///PATH or postgresql+psycopg://...)"
        ) from None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            raise InvalidArgument("the state needs a SQLite file (sqlite:///PATH), not memory")
        return parsed
    if parsed.drivername == "postgresql+psycopg":
        return parsed
    hint = " (use postgresql+psycopg://)" if parsed.get_backend_name() == "postgresql" else ""
    raise InvalidArgument(f"unsupported database URL {safe_url(parsed)}{hint}")


def create_state_engine(url: URL) -> Engine:
    """An engine for ``url`` with Greenhouse's per-connection settings.

    Raises:
        StorageError: the SQLite file cannot be created.
    """
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _sqlite_engine(url: URL) -> Engine:
    assert url.database is not None
    path = Path(url.database)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite's -wal/-shm copy it
    except OSError as exc:
        raise StorageError(f"cannot create the state database {path}: {exc}") from exc
    engine = create_engine(url, pool_size=8, max_overflow=8, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Store:
    """What the parts of ``State`` share: engine, clock, blob store, transactions."""

    def __init__(
        self, engine: Engine, url: URL, blobs: BlobStore, clock: Callable[[], float]
    ) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        self._url = url
        self._blobs = blobs
        self._clock = clock
        self._audit_sink: AuditSink | None = None
        # SQLite has one writer at a time, and a writer that finds the lock taken
        # sleeps and polls (1, 2, 5, 10... ms). This process's writers queue on a
        # lock instead, so the next one starts the moment the last one commits.
        self._sqlite_writers = threading.RLock() if url.get_backend_name() == "sqlite" else None

    def attach_audit(self, sink: AuditSink) -> None:
        """Record every audited change from now on through ``sink`` (once, at startup)."""
        self._audit_sink = sink

    @property
    def writer_engine(self) -> Engine:
        """The engine whose transactions take the write lock up front (SQLite: IMMEDIATE).

        An audit log stored in this database must write through it (see
        :mod:`audit.log`: the database lock comes before the log's own lock).
        """
        return self._writer

    def _audit(
        self,
        session: Session,
        action: str,
        *,
        actor: AuditActor | None = None,
        subjects: Mapping[str, str],
        details: Mapping[str, object],
    ) -> None:
        """Write the audit entry of the change being made in ``session`` (if auditing).

        Call it last in the transaction: on PostgreSQL the entry takes the audit
        writers' lock, held until commit.

        Raises:
            AuditFailed: the sink refused; the caller's transaction rolls back.
        """
        if self._audit_sink is None:
            return
        try:
            self._audit_sink(session, action, actor=actor, subjects=subjects, details=details)
        except StateError:
            raise
        except Exception as exc:
            raise AuditFailed(f"audit entry {action} was not written: {exc}") from exc

    @property
    def blobs(self) -> BlobStore:
        """The content-addressed store holding message bodies and bundles."""
        return self._blobs

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    def _now(self, now: float | None = None) -> float:
        return self._clock() if now is None else float(now)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._translate(), Session(self._engine) as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with (
            self._writer_turn(),
            self._translate(),
            Session(self._writer) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        lock = self._sqlite_writers
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise StorageError(
                f"state database {safe_url(self._url)} failed: database is locked "
                f"(no write turn within {SQLITE_BUSY_TIMEOUT_MS / 1000:g} s)"
            )
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise Conflict(f"state constraint violated: {_driver_message(exc)}") from exc
        except DBAPIError as exc:
            raise StorageError(
                f"state database {safe_url(self._url)} failed: {_driver_message(exc)}"
            ) from exc
        except PoolTimeout as exc:
            raise StorageError(
                f"state database {safe_url(self._url)}: no free connection (pool exhausted)"
            ) from exc

    def _init_schema(self) -> None:
        """Create missing tables; refuse a database written by a newer schema.

        Raises:
            StorageError: the schema is newer than this code, or DDL failed.
        """
        with self._translate():
            Base.metadata.create_all(self._writer)
        with self._write() as session:
            row = session.get(SettingRow, "schema_version")
            if row is None:
                session.add(
                    SettingRow(key="schema_version", value=str(SCHEMA_VERSION), updated_at=0.0)
                )
            elif int(row.value) > SCHEMA_VERSION:
                raise StorageError(
                    f"state database schema version {row.value} is newer than this "
                    f"Greenhouse supports ({SCHEMA_VERSION}); upgrade Greenhouse"
                )


def _driver_message(exc: DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else type(exc).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__

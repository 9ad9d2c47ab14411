"""The append-only audit log on SQLAlchemy 2.x (SQLite or PostgreSQL).

:class:`AuditLog` is the only writer of audit entries. It guarantees:

* **atomic appends that join the caller's transaction** - pass the
  ``Connection`` (or ORM ``Session``) in which a state change is made and the
  entry commits or rolls back with it; without one, each append is its own
  transaction;
* **fail closed** - an entry that cannot be written raises :class:`AppendFailed`,
  never a warning; bad arguments raise :class:`MalformedEntry` or
  :class:`CanonicalJSONError` before anything is written;
* **hash chain + RFC 6962 tree** - entry ``seq`` is leaf ``seq``; its ``prev``
  is the leaf hash of entry ``seq - 1``; the tree state is a compact range
  updated in O(log n) per append;
* **signed tree heads** - a C2SP checkpoint signed with the injected Ed25519
  key every ``checkpoint_every`` entries (in the same transaction as the entry
  that completes the batch), and on :meth:`AuditLog.checkpoint` / :meth:`AuditLog.close`;
  :meth:`AuditLog.checkpoint_at` signs one at an earlier size (an archive's seal).

How the in-memory tree state stays right: an append made in the caller's
transaction first reads the last stored ``(seq, leaf_hash)`` *through that
connection*, so it sees the caller's uncommitted rows; if that differs from the
in-memory state (a rolled-back transaction, another writer), the state is
rebuilt from the latest stored checkpoint's compact range plus the leaf hashes
after it. An append in the log's own transaction knows whether it committed,
so after a successful one the next own append trusts the state and skips that
read. Either way the ``seq`` primary key makes a conflicting append by another
writer fail instead of forking the log (own transactions resynchronise and
retry once; a caller's transaction gets :class:`AppendFailed`). Time and the
signing key are injected; no globals.

Lock order, always: the database's write lock, then the log's in-process lock.
Own transactions begin before they take the in-process lock; on PostgreSQL
every writing transaction first takes a transaction-scoped advisory lock, so
concurrent callers' transactions append one after the other instead of
colliding on ``seq`` at commit. On SQLite, give the log an engine whose
transactions ``BEGIN IMMEDIATE`` (or append only inside callers' write
transactions): a deferred transaction takes the write lock only at its first
insert, after the in-process lock, and could wait on a caller that waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from audit.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint
from audit.entry import GENESIS_PREV, Action, Actor, Entry, encode_entry, format_time
from audit.errors import AppendFailed, AuditUsageError, BadSignature, MalformedEntry, MalformedNote
from audit.note import (
    NoteSignature,
    NoteSigner,
    VerifierKey,
    parse_note,
    parse_signature_line,
    parse_verifier_key,
)
from audit.proofs import (
    ConsistencyProof,
    InclusionProof,
    read_consistency_proof,
    read_inclusion_proof,
)
from audit.schema import (
    audit_checkpoints,
    audit_cosignatures,
    audit_entries,
    ensure_schema,
    iter_leaf_hashes,
    latest_archive,
    latest_checkpoint,
    read_tail,
)
from audit.tree import CompactRange, TreeBuilder, leaf_hash

__all__ = ["AuditLog", "Clock"]

Clock = Callable[[], datetime]
"""Returns the current time as a timezone-aware ``datetime``."""

_MAX_SIZE = 2**63 - 1
#: pg_advisory_xact_lock key serializing audit writers (int64 of b"GHAUDIT\x01").
_PG_LOCK_KEY = int.from_bytes(b"GHAUDIT\x01", "big") - 2**63


def _serialize_writers(conn: Connection) -> None:
    """On PostgreSQL, wait for other audit writers' transactions to end (held to commit)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _action(value: Action | str) -> Action:
    try:
        return Action(value)
    except ValueError as exc:
        raise MalformedEntry(f"action {value!r} is not in the vocabulary") from exc


def _connection_of(handle: Connection | Session) -> Connection:
    if isinstance(handle, Session):
        return handle.connection()
    if not isinstance(handle, Connection):
        raise AuditUsageError("connection must be an SQLAlchemy Connection or Session")
    if not handle.in_transaction():
        raise AuditUsageError("the connection passed to append() must be in a transaction")
    return handle


class AuditLog:
    """The audit log of one origin, stored in the ``audit_*`` tables of ``engine``.

    Thread-safe: appends are serialized by a lock (and by the database).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: NoteSigner,
        clock: Clock,
        origin: str | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        """Open (creating tables and triggers if needed) the log.

        Args:
            engine: SQLite or PostgreSQL engine.
            signer: the log's Ed25519 key (type 0x01) and key name.
            clock: returns aware ``datetime`` s; entry times come only from here.
            origin: checkpoint origin line; defaults to the signer's key name.
            checkpoint_every: sign a tree head every this many entries (>= 1).

        Raises:
            AuditUsageError: a bad argument or unsupported database.
            AppendFailed: the database could not be opened or its state is corrupt.
        """
        if checkpoint_every < 1:
            raise AuditUsageError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self._engine = engine
        self._signer = signer
        self._vkey = signer.verifier_key()
        self._vkey_text = self._vkey.encode()
        self._clock = clock
        self._origin = origin or signer.name
        if not self._origin or "\n" in self._origin:
            raise AuditUsageError("the checkpoint origin must be one non-empty line")
        self._every = checkpoint_every
        self._lock = threading.Lock()
        self._builder = TreeBuilder()
        self._last: bytes | None = None
        self._confirmed = False  # True: in-memory state equals the committed log
        self._closed = False
        try:
            with engine.begin() as conn:
                ensure_schema(conn)
                self._sync(conn)
        except SQLAlchemyError as exc:
            raise AppendFailed(f"cannot open the audit log: {type(exc).__name__}") from exc

    @classmethod
    def reopen(
        cls,
        engine: Engine,
        private_key: Ed25519PrivateKey,
        *,
        clock: Clock,
        checkpoint_every: int = 1000,
    ) -> AuditLog:
        """Open an existing log with its signing key; name and origin come from the log.

        The key name and checkpoint origin are read from the latest stored tree
        head, whose public key must be ``private_key``'s (so an operator tool
        cannot extend a log with the wrong key).

        Raises:
            AuditUsageError: no tree head is stored, or it is signed by another key.
            AppendFailed: the database could not be read.
        """
        try:
            with engine.connect() as conn:
                row = latest_checkpoint(conn, _MAX_SIZE)
        except SQLAlchemyError as exc:
            raise AppendFailed(f"cannot read the audit log: {type(exc).__name__}") from exc
        if row is None:
            raise AuditUsageError("the database holds no signed tree head: not an audit log yet")
        stored = parse_verifier_key(row.signer_vkey)
        signer = NoteSigner(name=stored.name, private_key=private_key)
        if signer.verifier_key() != stored:
            raise AuditUsageError(
                f"the key given is not the log's signing key {stored.name}+{stored.key_id.hex()}"
            )
        origin = parse_checkpoint(parse_note(row.note).text).origin
        return cls(
            engine, signer=signer, clock=clock, origin=origin, checkpoint_every=checkpoint_every
        )

    @property
    def engine(self) -> Engine:
        """The engine the log is stored in (for export and read-only queries)."""
        return self._engine

    @property
    def origin(self) -> str:
        """The checkpoint origin line."""
        return self._origin

    @property
    def verifier_key(self) -> VerifierKey:
        """The log's public verifier key (give it to auditors out of band)."""
        return self._vkey

    @property
    def size(self) -> int:
        """Entries this process has seen (including a caller's uncommitted ones)."""
        return self._builder.size

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise AuditUsageError("the audit clock must return timezone-aware datetimes")
        return now

    def _check_open(self) -> None:
        if self._closed:
            raise AuditUsageError("the audit log is closed")

    def _sync(self, conn: Connection) -> None:
        size, last = read_tail(conn)
        if size != self._builder.size or last != self._last:
            self._rebuild(conn, size, last)

    def _rebuild(self, conn: Connection, size: int, last: bytes | None) -> None:
        row = latest_checkpoint(conn, size)
        builder = TreeBuilder()
        if row is not None:
            start = CompactRange.from_bytes(row.tree_size, row.compact_range)
            if start.root() != row.root_hash:
                raise AppendFailed(
                    f"stored tree state at size {row.tree_size} does not match its root"
                )
            builder = TreeBuilder(start)
        builder.extend(iter_leaf_hashes(conn, builder.size, size))
        if builder.size != size:
            raise AppendFailed(
                f"audit_entries has gaps: {builder.size} leaves below seq {size}; "
                "the log was tampered with - verify an export"
            )
        self._builder, self._last = builder, last

    def append(
        self,
        actor: Actor,
        action: Action | str,
        subjects: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        *,
        connection: Connection | Session | None = None,
    ) -> Entry:
        """Append one entry, atomically.

        Args:
            actor: who acted (:data:`audit.entry.SYSTEM` for the appliance).
            action: an :class:`Action` or its string value.
            subjects: ids the entry is about (``run_id``, ``node``, ...).
            details: a JSON object without floats.
            connection: the caller's Connection (in a transaction) or Session;
                the entry then commits or rolls back with the caller's change.

        Returns:
            The entry as written (its ``seq`` is its Merkle leaf index).

        Raises:
            MalformedEntry: bad actor, action, subjects or details.
            CanonicalJSONError: details hold a float or another non-JSON value.
            AuditUsageError: the log is closed or ``connection`` is unusable.
            AppendFailed: the database refused or failed; nothing was appended.
        """
        self._check_open()
        args = (actor, action, subjects, details)
        try:
            if connection is not None:
                conn = _connection_of(connection)
                _serialize_writers(conn)
                with self._lock:
                    self._check_open()
                    self._confirmed = False  # the caller's transaction may still roll back
                    return self._append_in(conn, *args)
            try:
                return self._append_own(*args)
            except IntegrityError:  # another writer took this seq: resync, once
                return self._append_own(*args)
        except SQLAlchemyError as exc:
            raise AppendFailed(
                f"audit entry {self._builder.size} ({action}) was not written: {type(exc).__name__}"
            ) from exc

    def _append_own(
        self,
        actor: Actor,
        action: Action | str,
        subjects: Mapping[str, str] | None,
        details: Mapping[str, Any] | None,
    ) -> Entry:
        """Append in a transaction of our own; its outcome is known, so the tree
        state is trusted afterwards and the next own append skips the tail read."""
        with self._engine.begin() as conn:
            _serialize_writers(conn)
            with self._lock:
                self._check_open()
                trusted, self._confirmed = self._confirmed, False
                entry = self._append_in(conn, actor, action, subjects, details, trusted=trusted)
                written = (self._builder.size, self._last)
        with self._lock:  # committed (a failed commit raised above)
            # Trust the state only if no other append moved it since this commit: an
            # append in a caller's transaction may have, and may still roll back.
            self._confirmed = (self._builder.size, self._last) == written
        return entry

    def _append_in(
        self,
        conn: Connection,
        actor: Actor,
        action: Action | str,
        subjects: Mapping[str, str] | None,
        details: Mapping[str, Any] | None,
        *,
        trusted: bool = False,
    ) -> Entry:
        if not trusted:
            self._sync(conn)
        seq = self._builder.size
        prev = GENESIS_PREV if self._last is None else self._last
        entry = Entry(
            seq=seq,
            time=self._now(),
            actor=actor,
            action=_action(action),
            subjects=subjects or {},
            details=details or {},
            prev=prev,
        )
        line = encode_entry(entry)
        leaf = leaf_hash(line)
        conn.execute(
            insert(audit_entries),
            {"seq": seq, "line": line.decode("utf-8"), "leaf_hash": leaf, "prev_hash": prev},
        )
        self._builder.append(leaf)
        self._last = leaf
        if self._builder.size % self._every == 0:
            self._write_checkpoint(conn)
        return entry

    def _write_checkpoint(self, conn: Connection, state: CompactRange | None = None) -> str:
        state = self._builder.compact_range() if state is None else state
        size = state.size
        existing = conn.execute(
            select(audit_checkpoints.c.note).where(audit_checkpoints.c.tree_size == size)
        ).first()
        if existing is not None:
            return str(existing.note)
        root = state.root()
        note = sign_checkpoint(
            Checkpoint(origin=self._origin, size=size, root_hash=root), self._signer
        )
        conn.execute(
            insert(audit_checkpoints),
            {
                "tree_size": size,
                "root_hash": root,
                "compact_range": state.to_bytes(),
                "note": note,
                "signer_vkey": self._vkey_text,
                "created_at": format_time(self._now()),
            },
        )
        return note

    def checkpoint(self, *, connection: Connection | Session | None = None) -> str:
        """Sign and store a tree head at the current size (idempotent per size).

        Returns:
            The signed note text.

        Raises:
            AuditUsageError: the log is closed.
            AppendFailed: the checkpoint could not be stored.
        """
        self._check_open()
        try:
            if connection is not None:
                return self._checkpoint_in(_connection_of(connection))
            with self._engine.begin() as conn:
                return self._checkpoint_in(conn)
        except SQLAlchemyError as exc:
            raise AppendFailed(
                f"tree head at size {self._builder.size} was not stored: {type(exc).__name__}"
            ) from exc

    def _checkpoint_in(self, conn: Connection) -> str:
        _serialize_writers(conn)
        with self._lock:
            self._check_open()
            self._confirmed = False
            self._sync(conn)
            return self._write_checkpoint(conn)

    def checkpoint_at(self, tree_size: int) -> str:
        """Sign and store a tree head at an earlier size (idempotent per size).

        Used to seal an archive cut (:func:`audit.archive.archive`). The tree
        state at ``tree_size`` is rebuilt from the nearest stored tree head
        below it plus the leaf hashes in between.

        Returns:
            The signed note text.

        Raises:
            AuditUsageError: the log is closed, or ``tree_size`` is outside the stored log.
            AppendFailed: the tree head could not be stored.
        """
        self._check_open()
        try:
            with self._engine.begin() as conn:
                _serialize_writers(conn)
                with self._lock:
                    self._confirmed = False
                    self._sync(conn)
                    cut = latest_archive(conn)
                    first = 0 if cut is None else cut.tree_size
                    if not first <= tree_size <= self._builder.size:
                        raise AuditUsageError(
                            f"tree size {tree_size} is outside the stored log "
                            f"({first}..{self._builder.size})"
                        )
                    row = latest_checkpoint(conn, tree_size)
                    builder = TreeBuilder()
                    if row is not None:
                        builder = TreeBuilder(
                            CompactRange.from_bytes(row.tree_size, row.compact_range)
                        )
                    builder.extend(iter_leaf_hashes(conn, builder.size, tree_size))
                    if builder.size != tree_size:
                        raise AppendFailed(f"audit_entries has gaps below seq {tree_size}")
                    return self._write_checkpoint(conn, builder.compact_range())
        except SQLAlchemyError as exc:
            raise AppendFailed(
                f"tree head at size {tree_size} was not stored: {type(exc).__name__}"
            ) from exc

    def add_cosignature(
        self, tree_size: int, signature: NoteSignature | str, witness_key: VerifierKey
    ) -> None:
        """Verify a witness cosignature on a stored tree head and store it.

        Storing the same witness's cosignature twice keeps the first.

        Raises:
            AuditUsageError: no tree head of that size, or the signature is not
                by ``witness_key``.
            BadSignature: the cosignature does not verify.
            AppendFailed: it could not be stored.
        """
        if isinstance(signature, str):
            signature = parse_signature_line(signature.rstrip("\n"))
        if not signature.matches(witness_key):
            raise AuditUsageError(f"signature is by {signature.name}, not {witness_key.name}")
        try:
            with self._engine.begin() as conn:
                _serialize_writers(conn)
                self._store_cosignature(conn, tree_size, signature, witness_key)
        except SQLAlchemyError as exc:
            raise AppendFailed(
                f"cosignature on tree head {tree_size} was not stored: {type(exc).__name__}"
            ) from exc

    def _store_cosignature(
        self, conn: Connection, size: int, signature: NoteSignature, key: VerifierKey
    ) -> None:
        row = conn.execute(
            select(audit_checkpoints.c.note).where(audit_checkpoints.c.tree_size == size)
        ).first()
        if row is None:
            raise AuditUsageError(f"no stored tree head of size {size}")
        body = parse_note(str(row.note)).text
        try:
            signature.verify(key, body)
        except (InvalidSignature, MalformedNote) as exc:
            raise BadSignature(
                f"cosignature by {key.name} on tree head {size} does not verify", tree_size=size
            ) from exc
        c = audit_cosignatures.c
        exists = conn.execute(
            select(c.tree_size).where(
                c.tree_size == size, c.key_name == key.name, c.key_id == key.key_id.hex()
            )
        ).first()
        if exists is None:
            conn.execute(
                insert(audit_cosignatures),
                {
                    "tree_size": size,
                    "key_name": key.name,
                    "key_id": key.key_id.hex(),
                    "signature_line": signature.line(),
                    "witness_vkey": key.encode(),
                    "created_at": format_time(self._now()),
                },
            )

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """Prove entry ``index`` is in the tree of ``tree_size`` (default: latest tree head).

        See :func:`audit.proofs.read_inclusion_proof`.
        """
        with self._engine.connect() as conn:
            return read_inclusion_proof(conn, index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Prove the tree of ``old_size`` is a prefix of ``new_size`` (default: latest head).

        See :func:`audit.proofs.read_consistency_proof`.
        """
        with self._engine.connect() as conn:
            return read_consistency_proof(conn, old_size, new_size)

    def close(self) -> None:
        """Sign a final tree head covering every entry and refuse further appends."""
        if self._closed:
            return
        self.checkpoint()
        self._closed = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Retention: move the oldest entries into a sealed, verified archive (issue 7).

:func:`archive` is the only code that removes audit rows. It guarantees that
nothing is deleted unless a verifiable copy was written first, and that the
log stays verifiable across the cut:

1. **cut** - ``N`` is the ``seq`` of the first stored entry whose time is not
   before ``before`` (entries are taken in ``seq`` order, so with a clock that
   stepped back the cut is the longest prefix of older entries);
2. **seal** - a signed tree head of size ``N`` is stored
   (:meth:`AuditLog.checkpoint_at`), unless one exists;
3. **write** - the entries ``start..N-1`` (``start`` = 0 or the previous cut),
   their tree heads and cosignatures, and ``segment.json`` (``sealed: N``) go
   to ``out_dir`` in the export layout, every file and directory fsynced
   (:func:`audit.export.export_segment`);
4. **verify** - the written archive is verified with the log's key
   (:func:`audit.verify.verify_export`) and must cover exactly ``start..N-1``
   and end at the seal's root;
5. **cut, in one transaction** - append an ``audit.archived`` entry naming the
   seal (size, root) and the archive's SHA-256, record the cut in
   ``audit_archives`` (compact range at ``N``, leaf ``N - 1`` and its
   inclusion proof: what later exports put in their ``segment.json``), delete
   the rows below ``N`` past the triggers (:func:`audit.schema.unsafe_delete_below`,
   which reinstalls them before commit) and sign a tree head covering the
   new entry. Any failure rolls all of it back; the archive on disk then
   is a harmless verified copy.

The ``audit.archived`` entry is written into the segment that starts at ``N``,
so every later export announces its own start; the verifier reports a
segment without that announcement as deleted entries. Abuse and limits:
``docs/audit.md`` "Archive".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, insert
from sqlalchemy.exc import SQLAlchemyError

from audit.checkpoint import parse_checkpoint
from audit.entry import SYSTEM, Action, Actor, Entry, format_time
from audit.errors import AppendFailed, AuditUsageError, ExportFailed, VerificationError
from audit.export import export_segment
from audit.log import AuditLog
from audit.note import parse_note
from audit.proofs import read_inclusion_proof
from audit.schema import (
    audit_archives,
    iter_lines,
    latest_archive,
    latest_checkpoint,
    read_tail,
    unsafe_delete_below,
)
from audit.verify import ENTRIES_FILE, verify_export

__all__ = ["ArchiveSummary", "archive"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveSummary:
    """What :func:`archive` moved: entries ``start .. end - 1``, sealed at ``end``."""

    directory: Path
    start: int
    end: int
    root_hash: bytes
    checkpoints: int
    cosignatures: int
    entries_sha256: str
    entry: Entry
    files: tuple[Path, ...]

    @property
    def entries(self) -> int:
        """Number of entries archived."""
        return self.end - self.start


def _find_cut(conn: Connection, start: int, size: int, before: str) -> tuple[int, bool]:
    """Return (cut, whether the previous cut's audit.archived entry lies below it)."""
    cut, announced = start, start == 0
    for line in iter_lines(conn, end=size, start=start):
        obj = json.loads(line)
        if obj["time"] >= before:  # fixed-width RFC 3339 UTC: text order is time order
            break
        if obj["action"] == Action.AUDIT_ARCHIVED and obj["details"].get("tree_size") == start:
            announced = True
        cut = obj["seq"] + 1
    return cut, announced


def _plan(log: AuditLog, before: datetime) -> tuple[int, int]:
    before_text = format_time(before)
    with log.engine.connect() as conn:
        previous = latest_archive(conn)
        start = 0 if previous is None else previous.tree_size
        size, _ = read_tail(conn)
        cut, announced = _find_cut(conn, start, size, before_text)
    if cut == start:
        raise AuditUsageError(
            f"nothing to archive: no stored entry from entry {start} on is older than {before_text}"
        )
    if not announced:
        raise AuditUsageError(
            f"the audit.archived record of the previous cut at {start} is not older than "
            f"{before_text}: archive with a later date so that it is archived too"
        )
    return start, cut


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_written(log: AuditLog, out: Path, start: int, end: int, root: bytes) -> None:
    try:
        report = verify_export(out, log.verifier_key)
    except VerificationError as exc:
        raise ExportFailed(f"the archive in {out} does not verify, nothing deleted: {exc}") from exc
    if (report.start, report.end, report.root_at(end)) != (start, end, root):
        raise ExportFailed(
            f"the archive in {out} holds entries {report.start}..{report.end - 1}, "
            f"expected {start}..{end - 1} sealed at root {root.hex()}; nothing deleted"
        )


def _record_cut(
    conn: Connection, entry: Entry, *, start: int, end: int, digest: str, before: str
) -> None:
    seal = latest_checkpoint(conn, end)
    if seal is None or seal.tree_size != end:
        raise AppendFailed(f"the sealing tree head of size {end} disappeared")
    proof = read_inclusion_proof(conn, end - 1, end)
    conn.execute(
        insert(audit_archives),
        {
            "tree_size": end,
            "start_size": start,
            "root_hash": seal.root_hash,
            "compact_range": seal.compact_range,
            "last_leaf_hash": proof.leaf_hash,
            "last_leaf_proof": b"".join(proof.hashes),
            "entries_sha256": digest,
            "before": before,
            "created_at": format_time(entry.time),
        },
    )


def archive(
    log: AuditLog, *, before: datetime, out_dir: str | Path, actor: Actor = SYSTEM
) -> ArchiveSummary:
    """Move the stored entries older than ``before`` into a sealed archive in ``out_dir``.

    Args:
        log: the open log (its key signs the seal and the closing tree head).
        before: timezone-aware; entries with an earlier time are archived.
        out_dir: a directory that does not exist or is empty.
        actor: who asked (recorded in the ``audit.archived`` entry).

    Returns:
        What was archived and where.

    Raises:
        AuditUsageError: ``before`` is naive, nothing is older than it, or the
            previous cut's record would stay behind.
        ExportFailed: the archive could not be written or does not verify
            (nothing deleted).
        AppendFailed: the seal or the cut could not be recorded (nothing deleted).
    """
    if before.tzinfo is None or before.utcoffset() is None:
        raise AuditUsageError("the archive date must be timezone-aware")
    out = Path(out_dir)
    start, end = _plan(log, before)
    seal_note = log.checkpoint_at(end)
    root = parse_checkpoint(parse_note(seal_note).text).root_hash
    written = export_segment(log.engine, out, end=end, durable=True)
    _verify_written(log, out, start, end, root)
    digest = _sha256_file(out / ENTRIES_FILE)
    before_text = format_time(before)
    details = {
        "archive": out.name,
        "before": before_text,
        "checkpoints": written.checkpoints,
        "entries": end - start,
        "entries_sha256": digest,
        "root_hash": root.hex(),
        "start": start,
        "tree_size": end,
    }
    try:
        with log.engine.begin() as conn:
            entry = log.append(actor, Action.AUDIT_ARCHIVED, {}, details, connection=conn)
            _record_cut(conn, entry, start=start, end=end, digest=digest, before=before_text)
            unsafe_delete_below(conn, end)
            log.checkpoint(connection=conn)
    except SQLAlchemyError as exc:
        raise AppendFailed(
            f"the archive cut at {end} was not recorded ({type(exc).__name__}); nothing deleted, "
            f"{out} is a verified copy"
        ) from exc
    return ArchiveSummary(
        directory=out,
        start=start,
        end=end,
        root_hash=root,
        checkpoints=written.checkpoints,
        cosignatures=written.cosignatures,
        entries_sha256=digest,
        entry=entry,
        files=written.files,
    )

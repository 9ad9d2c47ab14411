"""Export the audit log to a directory a compliance officer can verify offline.

Layout written by :func:`export`::

    DIR/entries.jsonl        line i = the exact bytes of Merkle leaf i, then "\\n"
    DIR/checkpoints/<size>.note
                             every signed tree head, <size> zero-padded to 20
                             digits, as a C2SP signed note: the log's signature
                             line followed by the stored witness cosignature lines
    DIR/audit.vkey           the log's verifier key(s), one per line
    DIR/segment.json         only when the export does not start at entry 0, or is
                             a sealed archive (:mod:`audit.segment`)

The newline is **not** part of the leaf: leaf hash i = SHA-256(0x00 || line i
without its trailing "\\n"). ``audit.vkey`` is a convenience copy; a verifier
must obtain the key it trusts out of band (whoever could rewrite the export
could rewrite that file too).

The export is consistent under concurrent appends: it reads every stored tree
head first, then the entry count, and writes the entries below that count, so
later appends are left out rather than half-included, and no tree head is ever
dropped (a tree head larger than the entries shows truncation to the verifier).
After an archive cut at ``N`` the export starts at entry ``N`` and carries the
cut's ``segment.json``. :func:`export_segment` writes one archive (a sealed
segment), optionally durable (every file and directory fsynced) for
:mod:`audit.archive`. It checks nothing itself: that is :mod:`audit.verify`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import ExportFailed
from audit.log import AuditLog
from audit.note import parse_note, parse_signature_line
from audit.schema import (
    ArchiveRow,
    CheckpointRow,
    iter_checkpoints,
    iter_cosignature_lines,
    iter_lines,
    latest_archive,
    read_tail,
)
from audit.segment import SEGMENT_FILE, Segment
from audit.tree import HASH_SIZE, CompactRange
from audit.verify import CHECKPOINT_DIR, ENTRIES_FILE, VKEY_FILE, checkpoint_file_name

__all__ = ["ExportSummary", "export", "export_segment"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSummary:
    """What :func:`export` wrote: entries ``start .. start + entries - 1``."""

    directory: Path
    entries: int
    checkpoints: int
    cosignatures: int
    start: int = 0
    sealed: int | None = None
    files: tuple[Path, ...] = ()


def _prepare(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportFailed(f"export directory {out_dir} exists and is not empty")
    (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)


def _sync(path: Path) -> None:
    """fsync a file or directory (directories: so their new names are durable too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_entries(conn: Connection, path: Path, start: int, end: int) -> int:
    count = 0
    with path.open("wb") as out:
        batch: list[bytes] = []
        for line in iter_lines(conn, end=end, start=start):
            batch.append(line.encode("utf-8") + b"\n")
            count += 1
            if len(batch) >= 4096:
                out.write(b"".join(batch))
                batch.clear()
        out.write(b"".join(batch))
    return count


def _segment_after(cut: ArchiveRow | None, sealed: int | None) -> Segment | None:
    """The manifest of a segment starting at ``cut`` (None: a whole, unsealed export)."""
    if cut is None:
        return None if sealed is None else Segment(start_range=_EMPTY, start=0, sealed=sealed)
    proof = cut.last_leaf_proof
    return Segment(
        start=cut.tree_size,
        start_range=CompactRange.from_bytes(cut.tree_size, cut.compact_range),
        start_prev=cut.last_leaf_hash,
        start_prev_proof=tuple(proof[i : i + HASH_SIZE] for i in range(0, len(proof), HASH_SIZE)),
        sealed=sealed,
    )


_EMPTY = CompactRange(size=0, hashes=())


def _write_checkpoint(conn: Connection, directory: Path, row: CheckpointRow) -> int:
    note = parse_note(row.note)
    cosigs = [
        parse_signature_line(x.rstrip("\n")) for x in iter_cosignature_lines(conn, row.tree_size)
    ]
    if cosigs:
        note = note.with_signatures(*cosigs)
    (directory / checkpoint_file_name(row.tree_size)).write_text(
        note.encode(), encoding="utf-8", newline="\n"
    )
    return len(cosigs)


def _write_all(
    conn: Connection,
    out: Path,
    *,
    rows: list[CheckpointRow],
    segment: Segment | None,
    end: int,
    durable: bool,
) -> ExportSummary:
    start = 0 if segment is None else segment.start
    files = [out / ENTRIES_FILE]
    entries = _write_entries(conn, files[0], start, end)
    cosignatures = sum(_write_checkpoint(conn, out / CHECKPOINT_DIR, r) for r in rows)
    vkeys = list(dict.fromkeys(r.signer_vkey for r in rows))
    files.append(out / VKEY_FILE)
    files[-1].write_text("".join(k + "\n" for k in vkeys), encoding="utf-8")
    if segment is not None:
        files.append(out / SEGMENT_FILE)
        files[-1].write_bytes(segment.encode())
    notes = [out / CHECKPOINT_DIR / checkpoint_file_name(r.tree_size) for r in rows]
    if durable:
        for path in (*files, *notes, out / CHECKPOINT_DIR, out):
            _sync(path)
    return ExportSummary(
        directory=out,
        entries=entries,
        checkpoints=len(rows),
        cosignatures=cosignatures,
        start=start,
        sealed=None if segment is None else segment.sealed,
        files=(*files, *notes),
    )


def export(
    source: AuditLog | Engine, out_dir: str | Path, *, checkpoint: bool = True
) -> ExportSummary:
    """Write an offline-verifiable export of the audit log.

    After an archive cut the export starts at the cut (with ``segment.json``).

    Args:
        source: an open :class:`AuditLog` or the engine holding the audit tables.
        out_dir: a directory that does not exist or is empty.
        checkpoint: for an :class:`AuditLog`, first sign a tree head at the
            current size so that no entry is left unsigned.

    Returns:
        Counts of what was written and the files' paths.

    Raises:
        ExportFailed: the directory is not empty, or a file or query failed.
        AppendFailed: the closing tree head could not be signed.
    """
    out = Path(out_dir)
    if isinstance(source, AuditLog):
        if checkpoint:
            source.checkpoint()
        engine = source.engine
    else:
        engine = source
    try:
        _prepare(out)
        with engine.connect() as conn:
            # Tree heads first, then the entry count: every tree head read is then
            # covered by the entries read, unless entries were removed - which the
            # verifier must see, so no tree head is ever left out.
            rows = list(iter_checkpoints(conn))
            size, _ = read_tail(conn)
            segment = _segment_after(latest_archive(conn), None)
            return _write_all(conn, out, rows=rows, segment=segment, end=size, durable=False)
    except OSError as exc:
        raise ExportFailed(f"cannot write the export to {out}: {exc.strerror}") from exc
    except SQLAlchemyError as exc:
        raise ExportFailed(f"cannot read the audit log: {type(exc).__name__}") from exc


def export_segment(
    engine: Engine, out_dir: str | Path, *, end: int, durable: bool = True
) -> ExportSummary:
    """Write the stored entries below ``end`` as a sealed segment (an archive).

    The segment runs from the current start of the stored log (0, or the last
    archive cut) to ``end``, with the tree heads of sizes in that range; the
    tree head of size ``end`` must be stored (it is the seal). Used by
    :func:`audit.archive.archive`.

    Raises:
        ExportFailed: the directory is not empty, the seal is missing, or a
            file or query failed.
    """
    out = Path(out_dir)
    try:
        _prepare(out)
        with engine.connect() as conn:
            cut = latest_archive(conn)
            start = 0 if cut is None else cut.tree_size
            rows = list(iter_checkpoints(conn, max_size=end))
            rows = [r for r in rows if r.tree_size >= start]
            if not rows or rows[-1].tree_size != end:
                raise ExportFailed(f"no stored tree head of size {end} to seal the archive")
            segment = _segment_after(cut, end)
            return _write_all(conn, out, rows=rows, segment=segment, end=end, durable=durable)
    except OSError as exc:
        raise ExportFailed(f"cannot write the archive to {out}: {exc.strerror}") from exc
    except SQLAlchemyError as exc:
        raise ExportFailed(f"cannot read the audit log: {type(exc).__name__}") from exc

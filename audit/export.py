"""Export the audit log to a directory a compliance officer can verify offline.

Layout written by :func:`export`::

    DIR/entries.jsonl        line i = the exact bytes of Merkle leaf i, then "\\n"
    DIR/checkpoints/<size>.note
                             every signed tree head, <size> zero-padded to 20
                             digits, as a C2SP signed note: the log's signature
                             line followed by the stored witness cosignature lines
    DIR/audit.vkey           the log's verifier key(s), one per line

The newline is **not** part of the leaf: leaf hash i = SHA-256(0x00 || line i
without its trailing "\\n"). ``audit.vkey`` is a convenience copy; a verifier
must obtain the key it trusts out of band (whoever could rewrite the export
could rewrite that file too).

The export is consistent under concurrent appends: it reads every stored tree
head first, then the entry count, and writes the entries below that count, so
later appends are left out rather than half-included, and no tree head is ever
dropped (a tree head larger than the entries shows truncation to the verifier).
It checks nothing itself: that is :mod:`audit.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import ExportFailed
from audit.log import AuditLog
from audit.note import parse_note, parse_signature_line
from audit.schema import (
    CheckpointRow,
    iter_checkpoints,
    iter_cosignature_lines,
    iter_lines,
    read_tail,
)
from audit.verify import CHECKPOINT_DIR, ENTRIES_FILE, VKEY_FILE, checkpoint_file_name

__all__ = ["ExportSummary", "export"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSummary:
    """What :func:`export` wrote."""

    directory: Path
    entries: int
    checkpoints: int
    cosignatures: int


def _prepare(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportFailed(f"export directory {out_dir} exists and is not empty")
    (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)


def _write_entries(conn: Connection, path: Path, size: int) -> int:
    count = 0
    with path.open("wb") as out:
        batch: list[bytes] = []
        for line in iter_lines(conn, end=size):
            batch.append(line.encode("utf-8") + b"\n")
            count += 1
            if len(batch) >= 4096:
                out.write(b"".join(batch))
                batch.clear()
        out.write(b"".join(batch))
    return count


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


def export(
    source: AuditLog | Engine, out_dir: str | Path, *, checkpoint: bool = True
) -> ExportSummary:
    """Write an offline-verifiable export of the audit log.

    Args:
        source: an open :class:`AuditLog` or the engine holding the audit tables.
        out_dir: a directory that does not exist or is empty.
        checkpoint: for an :class:`AuditLog`, first sign a tree head at the
            current size so that no entry is left unsigned.

    Returns:
        Counts of what was written.

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
            entries = _write_entries(conn, out / ENTRIES_FILE, size)
            cosignatures = sum(_write_checkpoint(conn, out / CHECKPOINT_DIR, r) for r in rows)
        vkeys = list(dict.fromkeys(r.signer_vkey for r in rows))
        (out / VKEY_FILE).write_text("".join(k + "\n" for k in vkeys), encoding="utf-8")
    except OSError as exc:
        raise ExportFailed(f"cannot write the export to {out}: {exc.strerror}") from exc
    except SQLAlchemyError as exc:
        raise ExportFailed(f"cannot read the audit log: {type(exc).__name__}") from exc
    return ExportSummary(
        directory=out, entries=entries, checkpoints=len(rows), cosignatures=cosignatures
    )

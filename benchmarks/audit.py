"""Audit log throughput: appends/s on SQLite and offline verification entries/s.

Usage::

    python benchmarks/audit.py                    # 20,000 appends, 1,000,000-entry export
    python benchmarks/audit.py --entries 200000   # smaller export
    python benchmarks/audit.py --appends 5000 --entries 100000

Appends: one writer, a SQLite file in a temporary directory (WAL,
synchronous=NORMAL, as a SuperLink would configure it), each append its own
transaction, a signed tree head every 1,000 entries. Verification: an export
of ``--entries`` entries built directly with the library (no database, same
bytes as the log writes), then :func:`audit.check_export` over it; printed next
to plain SHA-256 leaf hashing of the same bytes in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# This file is named like the package it measures: run as a script, its own
# folder would shadow the ``audit`` package. Look in the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from sqlalchemy import create_engine, event  # noqa: E402

import audit  # noqa: E402
from audit.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from audit.entry import Entry, encode_entry  # noqa: E402
from audit.tree import TreeBuilder  # noqa: E402
from audit.verify import CHECKPOINT_DIR, ENTRIES_FILE, checkpoint_file_name  # noqa: E402

ACTOR = audit.Actor(identity="CN=node-7,O=Hospital B", role="node")
EVERY = 1000


class _Clock:
    """A deterministic clock: one microsecond per call."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


def bench_appends(count: int, workdir: Path, signer: audit.NoteSigner) -> float:
    engine = create_engine(f"sqlite:///{workdir / 'audit.db'}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: object, _record: object) -> None:
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    log = audit.AuditLog(engine, signer=signer, clock=_Clock(), checkpoint_every=EVERY)
    start = time.perf_counter()
    for i in range(count):
        log.append(
            ACTOR,
            audit.Action.MESSAGE_RECEIVED,
            {"run_id": "run-42", "message_id": f"m-{i}"},
            {"bytes": 4096 + i, "round": i // 100, "kind": "train.reply"},
        )
    elapsed = time.perf_counter() - start
    log.close()
    engine.dispose()
    return count / elapsed


def build_export(count: int, directory: Path, signer: audit.NoteSigner) -> int:
    """Write an export of ``count`` entries directly; return its size in bytes."""
    (directory / CHECKPOINT_DIR).mkdir(parents=True)
    clock = _Clock()
    builder = TreeBuilder()
    prev = bytes(32)
    total = 0
    origin = signer.name
    with (directory / ENTRIES_FILE).open("wb") as out:
        batch: list[bytes] = []
        for seq in range(count):
            entry = Entry(
                seq=seq,
                time=clock(),
                actor=ACTOR,
                action=audit.Action.MESSAGE_RECEIVED,
                subjects={"run_id": "run-42", "message_id": f"m-{seq}"},
                details={"bytes": 4096 + seq, "round": seq // 100, "kind": "train.reply"},
                prev=prev,
            )
            line = encode_entry(entry)
            prev = audit.leaf_hash(line)
            builder.append(prev)
            batch.append(line + b"\n")
            total += len(line) + 1
            if builder.size % EVERY == 0 or seq == count - 1:
                out.write(b"".join(batch))
                batch.clear()
                note = sign_checkpoint(
                    Checkpoint(origin=origin, size=builder.size, root_hash=builder.root()), signer
                )
                name = checkpoint_file_name(builder.size)
                (directory / CHECKPOINT_DIR / name).write_text(note, encoding="utf-8")
    return total


def bench_sha256(path: Path) -> tuple[float, int]:
    """Plain leaf hashing of every line of the export (the floor for verification)."""
    sha256 = hashlib.sha256
    start = time.perf_counter()
    n = 0
    with path.open("rb") as f:
        for raw in f:
            sha256(b"\x00" + raw[:-1]).digest()
            n += 1
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    signer = audit.NoteSigner(name="bench.example/audit", private_key=Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory(prefix="gh-audit-bench-") as tmp:
        work = Path(tmp)
        rate = bench_appends(args.appends, work, signer)
        print(
            f"appends:       {rate:12,.0f} entries/s  ({args.appends:,} appends, SQLite WAL, "
            f"tree head every {EVERY})"
        )
        export_dir = work / "export"
        start = time.perf_counter()
        size = build_export(args.entries, export_dir, signer)
        print(
            f"export built:  {args.entries:12,} entries, {size / 1e6:,.1f} MB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        hash_rate, _ = bench_sha256(export_dir / ENTRIES_FILE)
        start = time.perf_counter()
        report = audit.check_export(export_dir, signer.verifier_key())
        elapsed = time.perf_counter() - start
        if not report.ok:
            raise SystemExit(f"benchmark export did not verify: {report.problem}")
        verify_rate = report.entries / elapsed
        print(
            f"verification:  {verify_rate:12,.0f} entries/s  ({report.entries:,} entries, "
            f"{len(report.checkpoints):,} tree heads, {elapsed:.2f} s)"
        )
        print(f"plain SHA-256: {hash_rate:12,.0f} lines/s    (leaf hashing only, same bytes)")
        print(f"ratio:         {verify_rate / hash_rate:12.2f}  (verification / plain hashing)")


if __name__ == "__main__":
    main()

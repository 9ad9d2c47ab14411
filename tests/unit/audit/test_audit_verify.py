"""Offline verification of an export: every kind of damage is found and named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit.canonical import canonical_json
from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.entry import SYSTEM, Action
from audit.errors import (
    BadSignature,
    ChainBroken,
    ExportFailed,
    InconsistentCheckpoints,
    MalformedEntry,
    MalformedNote,
    TreeMismatch,
    TruncatedLog,
    UnsignedEntries,
)
from audit.export import export
from audit.log import AuditLog
from audit.note import NoteSigner
from audit.tree import leaf_hash
from audit.verify import ProblemKind, check_export, checkpoint_file_name, verify_export

N, EVERY = 20, 5


def sqlite_engine(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)


def fixed_clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return lambda: start + timedelta(milliseconds=next(ticks))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, NoteSigner]:
    base = tmp_path_factory.mktemp("pristine")
    signer = NoteSigner(name="audit.example.org/log", private_key=Ed25519PrivateKey.generate())
    engine = sqlite_engine(base / "audit.db")
    with AuditLog(engine, signer=signer, clock=fixed_clock(), checkpoint_every=EVERY) as log:
        for i in range(N):
            log.append(
                SYSTEM,
                Action.EGRESS_REPLY,
                {"run_id": "r-9", "node": f"n{i % 3}"},
                {"bytes": 1000 + i, "keys": ["loss", "accuracy"]},
            )
    export(engine, base / "export")
    engine.dispose()
    return base / "export", signer


@pytest.fixture
def copy(pristine, tmp_path) -> tuple[Path, NoteSigner]:
    src, signer = pristine
    shutil.copytree(src, tmp_path / "export")
    return tmp_path / "export", signer


def lines(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().split(b"\n")[:-1]


def write(d: Path, new: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in new))


def edit_details(line: bytes) -> bytes:
    edited = line.replace(b'"bytes":10', b'"bytes":99')
    assert edited != line
    return edited


def rechain(entries: list[bytes], start: int) -> list[bytes]:
    out = entries[:start]
    for line in entries[start:]:
        obj = json.loads(line)
        obj["prev"] = leaf_hash(out[-1]).hex() if out else "0" * 64
        out.append(canonical_json(obj))
    return out


def test_pristine_export_verifies(copy):
    d, signer = copy
    report = verify_export(d, signer.verifier_key().encode())
    assert report.ok and report.entries == N
    assert [c.tree_size for c in report.checkpoints] == [5, 10, 15, 20]
    assert all(c.cosignatures == 0 and c.unknown_signatures == 0 for c in report.checkpoints)


@dataclass(frozen=True)
class Case:
    tamper: Callable[[Path, NoteSigner], None]
    kind: ProblemKind
    error: type[Exception]
    entry_index: int | None
    tree_size: int | None
    message: str


def _edit(d, _s):
    e = lines(d)
    e[7] = edit_details(e[7])
    write(d, e)


def _edit_last(d, _s):
    e = lines(d)
    e[19] = edit_details(e[19])
    write(d, e)


def _edit_and_rechain(d, _s):
    e = lines(d)
    e[7] = edit_details(e[7])
    write(d, rechain(e, 8))


def _first_prev(d, _s):
    e = lines(d)
    obj = json.loads(e[0])
    obj["prev"] = "1" * 64
    e[0] = canonical_json(obj)
    write(d, e)


def _delete(d, _s):
    e = lines(d)
    del e[7]
    write(d, e)


def _delete_three(d, _s):
    e = lines(d)
    del e[7:10]
    write(d, e)


def _swap(d, _s):
    e = lines(d)
    e[7], e[8] = e[8], e[7]
    write(d, e)


def _duplicate(d, _s):
    e = lines(d)
    e.insert(8, e[7])
    write(d, e)


def _truncate(d, _s):
    write(d, lines(d)[:17])


def _cut_newline(d, _s):
    data = (d / "entries.jsonl").read_bytes()
    (d / "entries.jsonl").write_bytes(data[:-1])


def _garbage(d, _s):
    e = lines(d)
    e[4] = b'{"not": "an entry"}'
    write(d, e)


def _forge_head(d, _s):
    other = NoteSigner(name="audit.example.org/log", private_key=Ed25519PrivateKey.generate())
    cp = Checkpoint(origin="audit.example.org/log", size=10, root_hash=bytes(32))
    (d / "checkpoints" / checkpoint_file_name(10)).write_text(sign_checkpoint(cp, other))


def _rename_head(d, _s):
    (d / "checkpoints" / checkpoint_file_name(10)).rename(
        d / "checkpoints" / "00000000000000000011.note"
    )


def _split_view(d, s):
    cp = Checkpoint(origin=s.name, size=10, root_hash=bytes(32))
    (d / "checkpoints" / "10.note").write_text(sign_checkpoint(cp, s))


def _other_origin(d, s):
    cp = Checkpoint(origin="elsewhere.example/log", size=3, root_hash=bytes(32))
    (d / "checkpoints" / checkpoint_file_name(3)).write_text(sign_checkpoint(cp, s))


def _signed_lie(d, s):
    cp = Checkpoint(origin=s.name, size=12, root_hash=bytes(32))
    (d / "checkpoints" / checkpoint_file_name(12)).write_text(sign_checkpoint(cp, s))


def _drop_heads(d, _s):
    shutil.rmtree(d / "checkpoints")


def _drop_last_head(d, _s):
    (d / "checkpoints" / checkpoint_file_name(20)).unlink()


CASES = {
    "edited entry": Case(
        _edit, ProblemKind.EDITED, ChainBroken, 7, None, "entry 7 was edited: it hashes to"
    ),
    "edited last entry": Case(
        _edit_last,
        ProblemKind.TREE_MISMATCH,
        TreeMismatch,
        15,
        20,
        "an entry in 15..19 was altered",
    ),
    "edited and re-chained": Case(
        _edit_and_rechain, ProblemKind.TREE_MISMATCH, TreeMismatch, 5, 10, "root of entries 0..9 is"
    ),
    "genesis prev edited": Case(
        _first_prev, ProblemKind.EDITED, ChainBroken, 0, None, "expected all zeros"
    ),
    "deleted entry": Case(
        _delete,
        ProblemKind.DELETED,
        ChainBroken,
        7,
        None,
        "entry 7 is missing: line 7 holds entry 8",
    ),
    "deleted entries": Case(
        _delete_three, ProblemKind.DELETED, ChainBroken, 7, None, "entries 7..9 are missing"
    ),
    "swapped entries": Case(
        _swap,
        ProblemKind.REORDERED,
        ChainBroken,
        7,
        None,
        "line 7 holds entry 8; entry 7 is at line 8",
    ),
    "duplicated entry": Case(
        _duplicate, ProblemKind.REORDERED, ChainBroken, 8, None, "line 8 holds entry 7"
    ),
    "truncated tail": Case(
        _truncate, ProblemKind.TRUNCATED, TruncatedLog, 17, 20, "entries 17..19 were removed"
    ),
    "cut last line": Case(
        _cut_newline, ProblemKind.TRUNCATED, TruncatedLog, 19, None, "line 19 is cut short"
    ),
    "malformed line": Case(
        _garbage,
        ProblemKind.MALFORMED,
        MalformedEntry,
        4,
        None,
        "entry 4: .*not in canonical JSON form",
    ),
    "forged tree head": Case(
        _forge_head,
        ProblemKind.FORGED_TREE_HEAD,
        BadSignature,
        None,
        10,
        "no signature by the log key",
    ),
    "renamed tree head": Case(
        _rename_head,
        ProblemKind.FORGED_TREE_HEAD,
        BadSignature,
        None,
        10,
        "holds a tree head of size 10",
    ),
    "split view": Case(
        _split_view,
        ProblemKind.INCONSISTENT_CHECKPOINTS,
        InconsistentCheckpoints,
        None,
        10,
        "two signed tree heads of size 10",
    ),
    "other origin": Case(
        _other_origin,
        ProblemKind.INCONSISTENT_CHECKPOINTS,
        InconsistentCheckpoints,
        None,
        None,
        "2 different origins",
    ),
    "signed lie": Case(
        _signed_lie,
        ProblemKind.TREE_MISMATCH,
        TreeMismatch,
        10,
        12,
        "tree head of size 12 claims 0000",
    ),
    "no tree heads": Case(
        _drop_heads,
        ProblemKind.UNSIGNED_ENTRIES,
        UnsignedEntries,
        0,
        None,
        "entries 0..19 are covered by no signed tree head",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_damage_is_found_and_named(copy, case):
    d, signer = copy
    case.tamper(d, signer)
    report = check_export(d, signer.verifier_key())
    assert report.problem is not None
    assert report.problem.kind is case.kind
    assert (report.problem.entry_index, report.problem.tree_size) == (
        case.entry_index,
        case.tree_size,
    )
    with pytest.raises(case.error, match=case.message) as info:
        verify_export(d, signer.verifier_key())
    assert info.value.entry_index == case.entry_index
    assert info.value.tree_size == case.tree_size


def test_unsigned_tail_can_be_allowed(copy):
    d, signer = copy
    _drop_last_head(d, signer)
    with pytest.raises(UnsignedEntries, match=r"entries 15..19"):
        verify_export(d, signer.verifier_key())
    assert verify_export(d, signer.verifier_key(), allow_unsigned_tail=True).entries == N


def test_witness_keys_as_strings_and_unknown_counted(copy):
    d, signer = copy
    report = check_export(d, signer.verifier_key().encode(), witness_keys=[])
    assert report.ok


def test_bad_inputs(copy, tmp_path):
    d, signer = copy
    with pytest.raises(MalformedNote, match="verifier key"):
        check_export(d, "not a key")
    (d / "entries.jsonl").unlink()
    with pytest.raises(ExportFailed, match=r"cannot read entries.jsonl"):
        check_export(d, signer.verifier_key())


def test_empty_log_verifies(tmp_path, signer, clock):
    engine = sqlite_engine(tmp_path / "empty.db")
    AuditLog(engine, signer=signer, clock=clock).close()
    export(engine, tmp_path / "out")
    report = verify_export(tmp_path / "out", signer.verifier_key())
    assert report.entries == 0 and [c.tree_size for c in report.checkpoints] == [0]


def test_oversized_tree_head_file_is_refused(copy):
    d, signer = copy
    (d / "checkpoints" / checkpoint_file_name(10)).write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(BadSignature, match="larger than 1048576 bytes"):
        verify_export(d, signer.verifier_key())


def test_unreadable_tree_head_is_export_failed(copy):
    d, signer = copy
    target = d / "checkpoints" / checkpoint_file_name(10)
    target.unlink()
    target.mkdir()  # a directory where a file should be: reading it fails
    with pytest.raises(ExportFailed, match="cannot read checkpoints"):
        check_export(d, signer.verifier_key())

"""Export layout: entries.jsonl bytes, checkpoint files with cosignatures, audit.vkey."""

from __future__ import annotations

import pytest

from audit.checkpoint import cosign_checkpoint, parse_checkpoint, verify_checkpoint
from audit.entry import SYSTEM, Action, parse_entry
from audit.errors import ExportFailed
from audit.export import export
from audit.log import AuditLog
from audit.note import parse_note
from audit.tree import leaf_hash, root_of
from audit.verify import checkpoint_file_name, verify_export


def filled_log(engine, signer, clock, n: int = 7, every: int = 3) -> AuditLog:
    log = AuditLog(engine, signer=signer, clock=clock, checkpoint_every=every)
    for i in range(n):
        log.append(SYSTEM, Action.MESSAGE_RECEIVED, {"message_id": f"m-{i}"}, {"bytes": i})
    return log


def test_layout(engine, signer, clock, witness, tmp_path):
    log = filled_log(engine, signer, clock)
    cp = parse_checkpoint(parse_note(log.checkpoint()).text)
    log.add_cosignature(7, cosign_checkpoint(cp, witness, 1_700_000_000), witness.verifier_key())
    summary = export(log, tmp_path / "out")
    assert (summary.entries, summary.checkpoints, summary.cosignatures) == (7, 3, 1)
    data = (tmp_path / "out" / "entries.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 7
    lines = data.split(b"\n")[:-1]
    assert [parse_entry(x).seq for x in lines] == list(range(7))
    leaves = [leaf_hash(x) for x in lines]  # the newline is not part of the leaf
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert names == [checkpoint_file_name(s) for s in (3, 6, 7)]
    assert names[0] == "00000000000000000003.note"
    for name in names:
        text = (tmp_path / "out" / "checkpoints" / name).read_text(encoding="utf-8")
        vc = verify_checkpoint(text, signer.verifier_key(), [witness.verifier_key()])
        assert vc.checkpoint.root_hash == root_of(leaves[: vc.checkpoint.size])
        assert len(vc.witnesses) == (1 if vc.checkpoint.size == 7 else 0)
    vkey = (tmp_path / "out" / "audit.vkey").read_text(encoding="utf-8")
    assert vkey == signer.verifier_key().encode() + "\n"
    report = verify_export(tmp_path / "out", vkey.strip(), witness_keys=[witness.verifier_key()])
    assert [c.cosignatures for c in report.checkpoints] == [0, 0, 1]


def test_export_from_engine_does_not_sign(engine, signer, clock, tmp_path):
    filled_log(engine, signer, clock, n=7, every=3)
    summary = export(engine, tmp_path / "out")
    assert (summary.entries, summary.checkpoints) == (7, 2)
    report = verify_export(tmp_path / "out", signer.verifier_key(), allow_unsigned_tail=True)
    assert report.entries == 7


def test_export_refuses_a_non_empty_directory(engine, signer, clock, tmp_path):
    log = filled_log(engine, signer, clock, n=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(ExportFailed, match="exists and is not empty"):
        export(log, tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportFailed, match="exists and is not empty"):
        export(log, tmp_path / "file")


def test_export_wraps_os_errors(engine, signer, clock, tmp_path):
    log = filled_log(engine, signer, clock, n=1)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ExportFailed, match="cannot write the export"):
        export(log, blocker / "sub")

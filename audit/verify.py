"""Offline verification of an audit export (the layout of :mod:`audit.export`).

Given an export directory and the log's verifier key (obtained out of band),
:func:`check_export` establishes, streaming, in one pass over ``entries.jsonl``:

1. every tree head in ``checkpoints/`` carries a valid signature by the log key
   (C2SP signed note; unknown signatures ignored, a failing known one rejected),
   its file name matches its size, and all share one origin;
2. every line is a valid canonical entry (:func:`audit.entry.check_entry_line`),
   newline-terminated; line ``i`` has ``seq == i``;
3. the hash chain holds: entry ``i``'s ``prev`` is the leaf hash of line ``i - 1``
   (all zeros for ``i = 0``);
4. the RFC 6962 root of the first ``size`` leaves equals each tree head's root
   (which also makes the tree heads consistent with each other);
5. no tree head is larger than the export (truncation), and no entry lies past
   the last tree head (unless allowed).

A *segment* export (``segment.json``, :mod:`audit.segment`) starts at entry
``N > 0``: its tree head of size ``N`` (the previous segment's seal) must be
present and signed, the manifest's compact range must fold to that head's
root and its ``start_prev`` must be leaf ``N - 1`` of it; the scan then
continues the tree from that compact range, and one of the segment's entries
must be the ``audit.archived`` record of that cut - otherwise the missing
entries ``0..N-1`` are reported as deleted. A *sealed* segment (an archive)
must end exactly at its sealing tree head. Chains of segments are checked by
:mod:`audit.chain`.

The first problem is reported with its kind (edited, deleted, reordered,
truncated, forged tree head, ...), the entry index and expected versus found.
:func:`verify_export` raises it as a typed :class:`VerificationError` instead.

This module imports only the pure modules :mod:`audit.tree`,
:mod:`audit.checkpoint`, :mod:`audit.entry` and :mod:`audit.segment`; it never
touches a database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from audit.checkpoint import (
    VerifiedCheckpoint,
    VerifierKey,
    parse_verifier_key,
    verify_checkpoint,
)
from audit.entry import GENESIS_PREV, check_entry_line
from audit.errors import (
    BadSignature,
    ChainBroken,
    ExportFailed,
    InconsistentCheckpoints,
    MalformedEntry,
    MalformedNote,
    SegmentBroken,
    TreeMismatch,
    TruncatedLog,
    UnsignedEntries,
    VerificationError,
)
from audit.segment import SEGMENT_FILE, Segment, parse_segment
from audit.tree import EMPTY_ROOT, TreeBuilder

__all__ = [
    "CHECKPOINT_DIR",
    "ENTRIES_FILE",
    "VKEY_FILE",
    "CheckpointReport",
    "ExportReport",
    "Problem",
    "ProblemKind",
    "check_export",
    "checkpoint_file_name",
    "verify_export",
]

ENTRIES_FILE = "entries.jsonl"
CHECKPOINT_DIR = "checkpoints"
VKEY_FILE = "audit.vkey"
_GENESIS_HEX = GENESIS_PREV.hex()
_CHUNK_BYTES = 1 << 22
_MAX_NOTE_BYTES = 1 << 20


def checkpoint_file_name(tree_size: int) -> str:
    """Return ``<tree size zero-padded to 20 digits>.note``."""
    return f"{tree_size:020d}.note"


class ProblemKind(StrEnum):
    """What is wrong with an export."""

    MALFORMED = "malformed"
    EDITED = "edited"
    DELETED = "deleted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    TREE_MISMATCH = "tree mismatch"
    FORGED_TREE_HEAD = "forged tree head"
    INCONSISTENT_CHECKPOINTS = "inconsistent checkpoints"
    UNSIGNED_ENTRIES = "unsigned entries"
    BROKEN_SEGMENT = "broken segment"


_ERRORS: dict[ProblemKind, type[VerificationError]] = {
    ProblemKind.MALFORMED: MalformedEntry,
    ProblemKind.EDITED: ChainBroken,
    ProblemKind.DELETED: ChainBroken,
    ProblemKind.REORDERED: ChainBroken,
    ProblemKind.TRUNCATED: TruncatedLog,
    ProblemKind.TREE_MISMATCH: TreeMismatch,
    ProblemKind.FORGED_TREE_HEAD: BadSignature,
    ProblemKind.INCONSISTENT_CHECKPOINTS: InconsistentCheckpoints,
    ProblemKind.UNSIGNED_ENTRIES: UnsignedEntries,
    ProblemKind.BROKEN_SEGMENT: SegmentBroken,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """The first thing found wrong, with where and what."""

    kind: ProblemKind
    message: str
    entry_index: int | None = None
    tree_size: int | None = None

    def to_error(self) -> VerificationError:
        """Return the matching typed exception."""
        cls = _ERRORS[self.kind]
        text = f"{self.kind.value}: {self.message}"
        return cls(text, entry_index=self.entry_index, tree_size=self.tree_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointReport:
    """One verified tree head and who cosigned it."""

    tree_size: int
    root_hash: bytes
    witnesses: frozenset[str]
    unknown_signatures: int

    @property
    def cosignatures(self) -> int:
        """Verified cosignatures, counted by distinct witness key."""
        return len(self.witnesses)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    """Result of :func:`check_export`.

    ``entries`` counts lines verified before the first problem (all of them if
    none); they are entries ``start .. start + entries - 1``. ``segment`` is the
    export's ``segment.json`` (None for a whole export), ``last_leaf`` the leaf
    hash of the last verified entry (None if there is none).
    """

    entries: int
    checkpoints: tuple[CheckpointReport, ...]
    problem: Problem | None
    segment: Segment | None = None
    last_leaf: bytes | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.problem is None

    @property
    def start(self) -> int:
        """Sequence number of the export's first entry."""
        return 0 if self.segment is None else self.segment.start

    @property
    def end(self) -> int:
        """One past the last verified entry's sequence number."""
        return self.start + self.entries

    @property
    def sealed(self) -> int | None:
        """The sealing tree size of an archive, else None."""
        return None if self.segment is None else self.segment.sealed

    def root_at(self, tree_size: int) -> bytes | None:
        """The verified root of the tree head of that size in this export, if any."""
        return next((c.root_hash for c in self.checkpoints if c.tree_size == tree_size), None)


def _load_checkpoints(
    directory: Path, log_key: VerifierKey, witness_keys: Sequence[VerifierKey]
) -> tuple[list[VerifiedCheckpoint], Problem | None]:
    folder = directory / CHECKPOINT_DIR
    paths = sorted(folder.glob("*.note")) if folder.is_dir() else []
    verified: list[VerifiedCheckpoint] = []
    for path in paths:
        try:
            if path.stat().st_size > _MAX_NOTE_BYTES:
                raise MalformedNote(f"larger than {_MAX_NOTE_BYTES} bytes")
            vc = verify_checkpoint(path.read_bytes(), log_key, witness_keys)
        except (BadSignature, MalformedNote) as exc:
            size = getattr(exc, "tree_size", None)
            return verified, Problem(
                kind=ProblemKind.FORGED_TREE_HEAD,
                message=f"{CHECKPOINT_DIR}/{path.name}: {exc}",
                tree_size=size,
            )
        if not path.stem.isdigit() or int(path.stem) != vc.checkpoint.size:
            return verified, Problem(
                kind=ProblemKind.FORGED_TREE_HEAD,
                message=f"{path.name} holds a tree head of size {vc.checkpoint.size}",
                tree_size=vc.checkpoint.size,
            )
        verified.append(vc)
    return verified, _cross_check(verified)


def _cross_check(verified: list[VerifiedCheckpoint]) -> Problem | None:
    roots: dict[int, bytes] = {}
    origins = {vc.checkpoint.origin for vc in verified}
    if len(origins) > 1:
        return Problem(
            kind=ProblemKind.INCONSISTENT_CHECKPOINTS,
            message=f"tree heads name {len(origins)} different origins: {sorted(origins)}",
        )
    for vc in verified:
        cp = vc.checkpoint
        if roots.setdefault(cp.size, cp.root_hash) != cp.root_hash:
            return Problem(
                kind=ProblemKind.INCONSISTENT_CHECKPOINTS,
                message=f"two signed tree heads of size {cp.size} have different roots "
                f"{roots[cp.size].hex()} and {cp.root_hash.hex()}",
                tree_size=cp.size,
            )
    return None


def _misplaced(path: Path, index: int, seq: int, start: int) -> Problem:
    """Classify a line whose seq is not its index: deleted or reordered."""
    found_at = None
    line_no = index - start
    with path.open("rb") as f:
        for j, raw in enumerate(f):
            if j <= line_no:
                continue
            try:
                if json.loads(raw).get("seq") == index:
                    found_at = j
                    break
            except (ValueError, AttributeError):
                continue
    if found_at is not None or seq < index:
        where = f"entry {index} is at line {found_at}" if found_at is not None else "out of order"
        return Problem(
            kind=ProblemKind.REORDERED,
            message=f"line {line_no} holds entry {seq}; {where}",
            entry_index=index,
        )
    missing = f"entries {index}..{seq - 1} are" if seq - 1 > index else f"entry {index} is"
    return Problem(
        kind=ProblemKind.DELETED,
        message=f"{missing} missing: line {line_no} holds entry {seq}",
        entry_index=index,
    )


class _Scan:
    """One streaming pass over entries.jsonl against the verified tree heads."""

    def __init__(self, path: Path, heads: dict[int, bytes], segment: Segment | None) -> None:
        self.path = path
        self.heads = heads
        self.count = 0
        self.segment = segment
        self.start = 0 if segment is None else segment.start
        self.signed_upto = self.start
        self.announced = False
        self.last_leaf: bytes | None = None

    def _check_root(self, builder: TreeBuilder, size: int) -> Problem | None:
        calculated = builder.root() if size else EMPTY_ROOT
        claimed = self.heads[size]
        if calculated == claimed:
            self.signed_upto = size
            return None
        start = self.signed_upto
        return Problem(
            kind=ProblemKind.TREE_MISMATCH,
            message=f"the root of entries 0..{size - 1} is {calculated.hex()} but the signed "
            f"tree head of size {size} claims {claimed.hex()}: an entry in {start}..{size - 1} "
            "was altered and the hash chain rewritten",
            entry_index=start,
            tree_size=size,
        )

    def run(self) -> Problem | None:
        if 0 in self.heads and (problem := self._check_root(TreeBuilder(), 0)):
            return problem
        with self.path.open("rb") as f:
            problem = self._run(f)
        if problem is None and self.start and not self.announced:
            return Problem(
                kind=ProblemKind.DELETED,
                message=f"entries 0..{self.start - 1} are missing: the export starts at entry "
                f"{self.start} but no audit.archived entry in it records an archive cut there",
                entry_index=0,
            )
        return problem

    def _announces_cut(self, line: bytes) -> bool:
        """True if ``line`` is the audit.archived entry of this segment's start."""
        obj = json.loads(line)
        details = obj["details"]
        root = self.heads.get(self.start)
        return (
            obj["action"] == "audit.archived"
            and details.get("tree_size") == self.start
            and root is not None
            and details.get("root_hash") == root.hex()
        )

    def _run(self, f: BinaryIO) -> Problem | None:
        heads = self.heads
        segment = self.segment
        builder = TreeBuilder(None if segment is None else segment.start_range)
        append = builder.append
        sha256 = hashlib.sha256
        prev = _GENESIS_HEX if segment is None else segment.start_prev.hex()
        index = start = self.start
        announce = bool(start)
        tail = b""
        while chunk := f.read(_CHUNK_BYTES):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                try:
                    seq, entry_prev = check_entry_line(line)
                except MalformedEntry as exc:
                    return Problem(
                        kind=ProblemKind.MALFORMED,
                        message=f"entry {index}: {exc}",
                        entry_index=index,
                    )
                if seq != index:
                    return _misplaced(self.path, index, seq, start)
                if entry_prev != prev:
                    return _edited(index, entry_prev, prev, start)
                if announce and b'"audit.archived"' in line and self._announces_cut(line):
                    self.announced, announce = True, False
                leaf = sha256(b"\x00" + line).digest()
                append(leaf)
                prev = leaf.hex()
                self.last_leaf = leaf
                index += 1
                self.count = index - start
                if index in heads and (problem := self._check_root(builder, index)):
                    return problem
        if tail:
            return Problem(
                kind=ProblemKind.TRUNCATED,
                message=f"line {index - start} is cut short (no newline)",
                entry_index=index,
            )
        return None


def _edited(index: int, recorded: str, actual: str, start: int) -> Problem:
    if index == start and start:
        return Problem(
            kind=ProblemKind.BROKEN_SEGMENT,
            message=f"entry {index} records prev {recorded} but leaf {index - 1} of the "
            f"sealing tree head is {actual}: the segment does not continue it",
            entry_index=index,
            tree_size=start,
        )
    if index == 0:
        return Problem(
            kind=ProblemKind.EDITED,
            message=f"entry 0 has prev {recorded}, expected all zeros",
            entry_index=0,
        )
    return Problem(
        kind=ProblemKind.EDITED,
        message=f"entry {index - 1} was edited: it hashes to {actual} but entry {index} "
        f"records prev {recorded}",
        entry_index=index - 1,
    )


def _tail_problem(
    end: int, sizes: list[int], allow_unsigned_tail: bool, sealed: int | None
) -> Problem | None:
    largest = max(sizes, default=None)
    if largest is not None and largest > end:
        return Problem(
            kind=ProblemKind.TRUNCATED,
            message=f"the export's entries end at {end} but a signed tree head commits to "
            f"{largest}: entries {end}..{largest - 1} were removed",
            entry_index=end,
            tree_size=largest,
        )
    signed = largest or 0
    if sealed is not None and (signed != sealed or end != sealed):
        return Problem(
            kind=ProblemKind.BROKEN_SEGMENT,
            message=f"the archive is sealed at tree size {sealed} but ends at entry {end} "
            f"with its last signed tree head at {signed}",
            entry_index=min(end, sealed),
            tree_size=sealed,
        )
    if end > signed and not allow_unsigned_tail:
        return Problem(
            kind=ProblemKind.UNSIGNED_ENTRIES,
            message=f"entries {signed}..{end - 1} are covered by no signed tree head",
            entry_index=signed,
        )
    return None


def _load_segment(directory: Path) -> tuple[Segment | None, Problem | None]:
    path = directory / SEGMENT_FILE
    if not path.exists():
        return None, None
    try:
        return parse_segment(path.read_bytes()), None
    except SegmentBroken as exc:
        return None, Problem(kind=ProblemKind.BROKEN_SEGMENT, message=f"{SEGMENT_FILE}: {exc}")


def _check_start(
    segment: Segment | None,
    reports: tuple[CheckpointReport, ...],
    pinned: VerifiedCheckpoint | None,
) -> Problem | None:
    """Bind the segment's start to its signed tree head (and to a pinned one, if given)."""
    start = 0 if segment is None else segment.start
    early = [r.tree_size for r in reports if r.tree_size < start]
    if early:
        return Problem(
            kind=ProblemKind.BROKEN_SEGMENT,
            message=f"tree head of size {early[0]} predates the segment start {start}",
            tree_size=early[0],
        )
    root = next((r.root_hash for r in reports if r.tree_size == start), None)
    if segment is not None and start:
        if root is None:
            return Problem(
                kind=ProblemKind.BROKEN_SEGMENT,
                message=f"the segment starts at entry {start} but its sealing tree head of "
                f"size {start} is missing",
                entry_index=start,
                tree_size=start,
            )
        try:
            segment.check_start(root)
        except SegmentBroken as exc:
            return Problem(
                kind=ProblemKind.BROKEN_SEGMENT,
                message=str(exc),
                entry_index=start,
                tree_size=start,
            )
    if pinned is not None:
        cp = pinned.checkpoint
        expected = root if start else EMPTY_ROOT
        if cp.size != start or cp.root_hash != expected:
            return Problem(
                kind=ProblemKind.BROKEN_SEGMENT,
                message=f"the export starts at tree size {start}, not at the given tree head "
                f"of size {cp.size} and root {cp.root_hash.hex()}",
                entry_index=start,
                tree_size=cp.size,
            )
    return None


def check_export(
    directory: str | Path,
    verifier_key: VerifierKey | str,
    *,
    witness_keys: Sequence[VerifierKey | str] = (),
    allow_unsigned_tail: bool = False,
    start_checkpoint: str | bytes | None = None,
) -> ExportReport:
    """Verify an export directory offline and report the first problem, if any.

    Args:
        directory: the export (``entries.jsonl``, ``checkpoints/``, optionally
            ``segment.json``).
        verifier_key: the log's key, as object or ``name+hex+base64`` string.
        witness_keys: witness (cosigner) keys whose cosignatures are counted.
        allow_unsigned_tail: accept entries after the last signed tree head
            (never for a sealed archive).
        start_checkpoint: a signed tree head the export must start from (the
            seal of the previous segment, as the auditor holds it); checked
            against the log key.

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.

    Raises:
        MalformedNote: a key string or ``start_checkpoint`` does not parse.
        BadSignature: ``start_checkpoint`` is not signed by the log key.
        ExportFailed: the export cannot be read (wrapping ``OSError``).
    """
    root = Path(directory)
    log_key = _key(verifier_key)
    witnesses = [_key(k) for k in witness_keys]
    pinned = None if start_checkpoint is None else verify_checkpoint(start_checkpoint, log_key)
    try:
        segment, problem = _load_segment(root)
    except OSError as exc:
        raise ExportFailed(f"cannot read {SEGMENT_FILE} in {root}: {exc.strerror}") from exc
    if problem is not None:
        return ExportReport(entries=0, checkpoints=(), problem=problem)
    try:
        verified, problem = _load_checkpoints(root, log_key, witnesses)
    except OSError as exc:
        raise ExportFailed(f"cannot read {CHECKPOINT_DIR} in {root}: {exc.strerror}") from exc
    reports = tuple(
        CheckpointReport(
            tree_size=vc.checkpoint.size,
            root_hash=vc.checkpoint.root_hash,
            witnesses=vc.witnesses,
            unknown_signatures=vc.unknown_signatures,
        )
        for vc in sorted(verified, key=lambda v: v.checkpoint.size)
    )
    if problem is None:
        problem = _check_start(segment, reports, pinned)
    if problem is not None:
        return ExportReport(entries=0, checkpoints=reports, problem=problem, segment=segment)
    scan = _Scan(root / ENTRIES_FILE, {r.tree_size: r.root_hash for r in reports}, segment)
    try:
        problem = scan.run()
    except OSError as exc:
        raise ExportFailed(f"cannot read {ENTRIES_FILE} in {root}: {exc.strerror}") from exc
    if problem is None:
        problem = _tail_problem(
            scan.start + scan.count,
            [r.tree_size for r in reports],
            allow_unsigned_tail,
            None if segment is None else segment.sealed,
        )
    return ExportReport(
        entries=scan.count,
        checkpoints=reports,
        problem=problem,
        segment=segment,
        last_leaf=scan.last_leaf,
    )


def _key(key: VerifierKey | str) -> VerifierKey:
    return parse_verifier_key(key) if isinstance(key, str) else key


def verify_export(
    directory: str | Path,
    verifier_key: VerifierKey | str,
    *,
    witness_keys: Sequence[VerifierKey | str] = (),
    allow_unsigned_tail: bool = False,
    start_checkpoint: str | bytes | None = None,
) -> ExportReport:
    """Like :func:`check_export`, but raise the first problem.

    Raises:
        VerificationError: its subclass names the problem (MalformedEntry,
            ChainBroken, TreeMismatch, BadSignature, InconsistentCheckpoints,
            TruncatedLog, UnsignedEntries, SegmentBroken) with
            ``entry_index``/``tree_size``.
        MalformedNote: a key string or ``start_checkpoint`` does not parse.
        ExportFailed: the export cannot be read.
    """
    report = check_export(
        directory,
        verifier_key,
        witness_keys=witness_keys,
        allow_unsigned_tail=allow_unsigned_tail,
        start_checkpoint=start_checkpoint,
    )
    if report.problem is not None:
        raise report.problem.to_error()
    return report

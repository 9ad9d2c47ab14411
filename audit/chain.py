"""Offline verification of a chain of segment exports (archives, then the live log).

A log that was archived (:mod:`audit.archive`) is kept as several exports:
the sealed archives in order, then an export of what is still stored.
:func:`check_chain` verifies each one with :func:`audit.verify.check_export`
and then the joins: every export but the last must be a sealed archive; the
next one must start exactly at its seal, from the same signed root (otherwise
the log was forked at the cut), and the next one's first entry must chain to
the archive's last entry. Together the chain then proves what one export of
the whole log would.

Like :mod:`audit.verify`, this works on files only and never on a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditUsageError
from audit.note import VerifierKey
from audit.verify import ExportReport, Problem, ProblemKind, check_export

__all__ = ["ChainReport", "check_chain", "verify_chain"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    """Result of :func:`check_chain`: one report per export checked, and the first problem."""

    segments: tuple[ExportReport, ...]
    problem: Problem | None

    @property
    def ok(self) -> bool:
        """True when every segment and every join verified."""
        return self.problem is None

    @property
    def start(self) -> int:
        """First entry of the chain."""
        return self.segments[0].start if self.segments else 0

    @property
    def end(self) -> int:
        """One past the last verified entry of the chain."""
        return self.segments[-1].end if self.segments else 0

    @property
    def entries(self) -> int:
        """Entries verified in all segments."""
        return sum(s.entries for s in self.segments)


def _join(a: ExportReport, b: ExportReport, a_name: str, b_name: str) -> Problem | None:
    if a.sealed is None:
        return Problem(
            kind=ProblemKind.BROKEN_SEGMENT,
            message=f"{a_name} is not a sealed archive, yet {b_name} follows it",
            entry_index=a.end,
        )
    if b.start != a.sealed:
        what = (
            f"entries {a.sealed}..{b.start - 1} are missing"
            if b.start > a.sealed
            else f"they overlap from entry {b.start}"
        )
        return Problem(
            kind=ProblemKind.DELETED if b.start > a.sealed else ProblemKind.BROKEN_SEGMENT,
            message=f"{a_name} is sealed at {a.sealed} but {b_name} starts at {b.start}: {what}",
            entry_index=min(a.sealed, b.start),
        )
    a_root, b_root = a.root_at(a.sealed), b.root_at(b.start)
    if a_root != b_root:
        return Problem(
            kind=ProblemKind.INCONSISTENT_CHECKPOINTS,
            message=f"{a_name} is sealed at root {a_root.hex() if a_root else None} but "
            f"{b_name} continues from root {b_root.hex() if b_root else None}: forked at the cut",
            tree_size=a.sealed,
        )
    b_prev = None if b.segment is None else b.segment.start_prev
    if a.last_leaf != b_prev:
        return Problem(
            kind=ProblemKind.BROKEN_SEGMENT,
            message=f"{b_name} continues from leaf {b_prev.hex() if b_prev else None} but the "
            f"last entry of {a_name} hashes to {a.last_leaf.hex() if a.last_leaf else None}",
            entry_index=b.start,
        )
    return None


def check_chain(
    directories: Sequence[str | Path],
    verifier_key: VerifierKey | str,
    *,
    witness_keys: Sequence[VerifierKey | str] = (),
    allow_unsigned_tail: bool = False,
) -> ChainReport:
    """Verify exports that continue one another, oldest first, and report the first problem.

    Args:
        directories: the archives in order, then (optionally) the live export.
        verifier_key: the log's key.
        witness_keys: witness keys whose cosignatures are counted.
        allow_unsigned_tail: accept unsigned entries at the end of the last export.

    Returns:
        The report; with several exports, the problem's message names the one it is in.

    Raises:
        AuditUsageError: no directory given.
        MalformedNote: a key string does not parse.
        ExportFailed: an export cannot be read.
    """
    if not directories:
        raise AuditUsageError("no export directory given")
    reports: list[ExportReport] = []
    names = [Path(d).name or str(d) for d in directories]
    for i, directory in enumerate(directories):
        last = i == len(directories) - 1
        report = check_export(
            directory,
            verifier_key,
            witness_keys=witness_keys,
            allow_unsigned_tail=allow_unsigned_tail and last,
        )
        reports.append(report)
        problem = report.problem
        if problem is not None and len(directories) > 1:
            problem = Problem(
                kind=problem.kind,
                message=f"{names[i]}: {problem.message}",
                entry_index=problem.entry_index,
                tree_size=problem.tree_size,
            )
        elif i:
            problem = _join(reports[i - 1], report, names[i - 1], names[i])
        if problem is not None:
            return ChainReport(segments=tuple(reports), problem=problem)
    return ChainReport(segments=tuple(reports), problem=None)


def verify_chain(
    directories: Sequence[str | Path],
    verifier_key: VerifierKey | str,
    *,
    witness_keys: Sequence[VerifierKey | str] = (),
    allow_unsigned_tail: bool = False,
) -> ChainReport:
    """Like :func:`check_chain`, but raise the first problem.

    Raises:
        VerificationError: the problem's typed error (see :func:`audit.verify.verify_export`).
        AuditUsageError: no directory given.
        MalformedNote: a key string does not parse.
        ExportFailed: an export cannot be read.
    """
    report = check_chain(
        directories,
        verifier_key,
        witness_keys=witness_keys,
        allow_unsigned_tail=allow_unsigned_tail,
    )
    if report.problem is not None:
        raise report.problem.to_error()
    return report

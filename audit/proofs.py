"""Inclusion and consistency proofs read from the stored leaf hashes.

RFC 9162 §2.1.3 (inclusion) and §2.1.4 (consistency) proofs for the log in the
``audit_*`` tables. The proof shape comes from :mod:`audit.tree`
(:func:`~audit.tree.inclusion_ranges`, :func:`~audit.tree.consistency_ranges`);
each listed subtree root is recomputed from the stored leaf hashes, streaming
(O(tree size) rows read, O(log n) memory). Roots come from the signed tree
head of that size when one is stored, otherwise from the nearest stored
compact range plus the leaves after it. After an archive cut at ``N``
(:mod:`audit.archive`) the leaves below ``N`` are known only through the cut's
compact range: proofs about entries ``>= N`` and tree sizes ``>= N`` still work
(:func:`audit.tree.range_start`), earlier ones are refused - they are in the
archive. Every proof is verified before it is returned, so a stored leaf hash
that disagrees with a signed root is reported (:class:`ProofError`) rather than
handed out. Read-only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from audit.errors import AuditUsageError
from audit.schema import iter_leaf_hashes, latest_archive, latest_checkpoint, read_tail
from audit.tree import (
    CompactRange,
    TreeBuilder,
    consistency_ranges,
    inclusion_ranges,
    range_start,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "ConsistencyProof",
    "InclusionProof",
    "read_consistency_proof",
    "read_inclusion_proof",
]

_MAX_SIZE = 2**63 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionProof:
    """Proof that leaf ``index`` is in the tree of ``tree_size`` (RFC 9162 §2.1.3)."""

    index: int
    tree_size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]
    root_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyProof:
    """Proof that the tree of ``old_size`` is a prefix of ``new_size`` (RFC 9162 §2.1.4)."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    hashes: tuple[bytes, ...]


def _base(conn: Connection) -> CompactRange:
    """The compact range of the latest archive cut (size 0 when nothing was archived)."""
    cut = latest_archive(conn)
    if cut is None:
        return CompactRange(size=0, hashes=())
    return CompactRange.from_bytes(cut.tree_size, cut.compact_range)


def _size(conn: Connection, tree_size: int | None, base: CompactRange) -> int:
    if tree_size is None:
        row = latest_checkpoint(conn, _MAX_SIZE)
        return 0 if row is None else row.tree_size
    stored, _ = read_tail(conn)
    if not base.size <= tree_size <= stored:
        raise AuditUsageError(
            f"tree size {tree_size} is outside {base.size}..{stored} stored entries"
            + (" (earlier ones are archived)" if base.size else "")
        )
    return tree_size


def _range_root(conn: Connection, lo: int, hi: int, base: CompactRange) -> bytes:
    state, first = range_start(lo, hi, base)
    builder = TreeBuilder(state)
    builder.extend(iter_leaf_hashes(conn, first, hi))
    return builder.root()


def _root_at(conn: Connection, size: int) -> bytes:
    row = latest_checkpoint(conn, size)
    if row is not None and row.tree_size == size:
        return row.root_hash
    builder = TreeBuilder()
    if row is not None:
        builder = TreeBuilder(CompactRange.from_bytes(row.tree_size, row.compact_range))
    builder.extend(iter_leaf_hashes(conn, builder.size, size))
    return builder.root()


def read_inclusion_proof(
    conn: Connection, index: int, tree_size: int | None = None
) -> InclusionProof:
    """Build and check the inclusion proof of entry ``index``.

    Args:
        conn: a connection to the database holding the audit tables.
        index: the entry's ``seq``.
        tree_size: the tree to prove against; default the latest signed tree head.

    Raises:
        AuditUsageError: index or size out of range, or archived.
        ProofError: the stored leaf hashes do not match the stored root.
    """
    base = _base(conn)
    size = _size(conn, tree_size, base)
    if index < base.size:
        raise AuditUsageError(f"entry {index} is archived (the stored log starts at {base.size})")
    ranges = inclusion_ranges(index, size)
    hashes = tuple(_range_root(conn, a, b, base) for a, b in ranges)
    leaf = next(iter_leaf_hashes(conn, index, index + 1))
    root = _root_at(conn, size)
    verify_inclusion(leaf, index, size, hashes, root)
    return InclusionProof(
        index=index, tree_size=size, leaf_hash=leaf, hashes=hashes, root_hash=root
    )


def read_consistency_proof(
    conn: Connection, old_size: int, new_size: int | None = None
) -> ConsistencyProof:
    """Build and check the consistency proof from ``old_size`` to ``new_size``.

    Args:
        conn: a connection to the database holding the audit tables.
        old_size: the earlier tree size.
        new_size: the later one; default the latest signed tree head.

    Raises:
        AuditUsageError: sizes out of range, or ``old_size`` archived.
        ProofError: the stored leaf hashes do not match the stored roots.
    """
    base = _base(conn)
    size = _size(conn, new_size, base)
    if old_size < base.size and old_size != 0:
        raise AuditUsageError(
            f"tree size {old_size} predates the archive cut at {base.size}: "
            "prove it from the archive"
        )
    ranges = consistency_ranges(old_size, size)
    hashes = tuple(_range_root(conn, a, b, base) for a, b in ranges)
    old_root, new_root = _root_at(conn, old_size), _root_at(conn, size)
    verify_consistency(old_size, size, old_root, new_root, hashes)
    return ConsistencyProof(
        old_size=old_size, new_size=size, old_root=old_root, new_root=new_root, hashes=hashes
    )

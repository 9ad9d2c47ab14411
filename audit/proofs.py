"""Inclusion and consistency proofs read from the stored leaf hashes.

RFC 9162 §2.1.3 (inclusion) and §2.1.4 (consistency) proofs for the log in the
``audit_*`` tables. The proof shape comes from :mod:`audit.tree`
(:func:`~audit.tree.inclusion_ranges`, :func:`~audit.tree.consistency_ranges`);
each listed subtree root is recomputed from the stored leaf hashes, streaming
(O(tree size) rows read, O(log n) memory). Roots come from the signed tree
head of that size when one is stored, otherwise from the nearest stored
compact range plus the leaves after it. Every proof is verified before it is
returned, so a stored leaf hash that disagrees with a signed root is reported
(:class:`ProofError`) rather than handed out. Read-only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from audit.errors import AuditUsageError
from audit.schema import iter_leaf_hashes, latest_checkpoint, read_tail
from audit.tree import (
    CompactRange,
    TreeBuilder,
    consistency_ranges,
    inclusion_ranges,
    root_of,
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


def _size(conn: Connection, tree_size: int | None) -> int:
    if tree_size is None:
        row = latest_checkpoint(conn, _MAX_SIZE)
        return 0 if row is None else row.tree_size
    stored, _ = read_tail(conn)
    if not 0 <= tree_size <= stored:
        raise AuditUsageError(f"tree size {tree_size} is outside 0..{stored} stored entries")
    return tree_size


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
        AuditUsageError: index or size out of range.
        ProofError: the stored leaf hashes do not match the stored root.
    """
    size = _size(conn, tree_size)
    hashes = tuple(root_of(iter_leaf_hashes(conn, a, b)) for a, b in inclusion_ranges(index, size))
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
        AuditUsageError: sizes out of range.
        ProofError: the stored leaf hashes do not match the stored roots.
    """
    size = _size(conn, new_size)
    ranges = consistency_ranges(old_size, size)
    hashes = tuple(root_of(iter_leaf_hashes(conn, a, b)) for a, b in ranges)
    old_root, new_root = _root_at(conn, old_size), _root_at(conn, size)
    verify_consistency(old_size, size, old_root, new_root, hashes)
    return ConsistencyProof(
        old_size=old_size, new_size=size, old_root=old_root, new_root=new_root, hashes=hashes
    )

"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions and value objects: no I/O, clock or randomness. The tree is the
one of RFC 6962 §2.1 (re-stated in RFC 9162 §2.1.1):

* leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``;
* the empty tree's root is ``SHA-256("")``;
* a tree of ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``.

Appends are O(log n) through a *compact range*: the roots of the perfect
subtrees that make up ``[0, n)``, one per set bit of ``n``, largest first.
A log whose first entries were archived keeps only the compact range of the
cut (a *base*): :func:`range_start` and :class:`MerkleLevels` compute every
subtree root a proof about the remaining entries needs from that base plus
the remaining leaves. Proofs (RFC 9162 §2.1.3.1 and §2.1.4.1) are first described as the ranges of
leaves whose subtree roots they list, so that storage can compute those roots
however it likes (:func:`inclusion_ranges`, :func:`consistency_ranges`);
:func:`inclusion_proof` and :func:`consistency_proof` do it from a sequence of
leaf hashes. Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 to the letter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from audit.errors import AuditUsageError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleLevels",
    "TreeBuilder",
    "compact_range_spans",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "range_start",
    "root_from_inclusion_proof",
    "root_of",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n > 1``), RFC 6962 §2.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactRange:
    """The perfect-subtree roots covering leaves ``[0, size)``, largest first."""

    size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.size < 0:
            raise AuditUsageError(f"compact range size {self.size} is negative")
        if len(self.hashes) != self.size.bit_count():
            raise AuditUsageError(
                f"compact range of size {self.size} needs {self.size.bit_count()} hashes, "
                f"got {len(self.hashes)}"
            )
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise AuditUsageError("compact range holds a hash that is not 32 bytes")

    def root(self) -> bytes:
        """Return the Merkle tree hash of the ``size`` leaves."""
        return _fold(self.hashes)

    def to_bytes(self) -> bytes:
        """Return the hashes concatenated (``32 * popcount(size)`` bytes)."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """Rebuild a compact range from :meth:`to_bytes` output.

        Raises:
            AuditUsageError: the byte length does not fit ``size``.
        """
        if len(data) % HASH_SIZE:
            raise AuditUsageError(f"compact range bytes ({len(data)}) not a multiple of 32")
        hashes = tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE))
        return cls(size=size, hashes=hashes)


def _fold(hashes: Sequence[bytes]) -> bytes:
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for h in reversed(hashes[:-1]):
        root = _sha256(b"\x01" + h + root).digest()
    return root


class TreeBuilder:
    """A growing tree: O(log n) :meth:`append`, O(log n) :meth:`root`.

    Mutable on purpose (it is the hot loop of the log and of the verifier); take
    an immutable snapshot with :meth:`compact_range`.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self, start: CompactRange | None = None) -> None:
        self._size = 0 if start is None else start.size
        self._stack: list[bytes] = [] if start is None else list(start.hashes)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf *hash* (not leaf data)."""
        stack = self._stack
        h = leaf
        s = self._size
        while s & 1:
            h = _sha256(b"\x01" + stack.pop() + h).digest()
            s >>= 1
        stack.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """Return the current Merkle tree hash."""
        return _fold(self._stack)

    def compact_range(self) -> CompactRange:
        """Return an immutable snapshot of the current state."""
        return CompactRange(size=self._size, hashes=tuple(self._stack))


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """Return the Merkle tree hash of a sequence of leaf hashes (O(n), O(log n) memory)."""
    builder = TreeBuilder()
    builder.extend(leaf_hashes)
    return builder.root()


def subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """Return the Merkle tree hash of ``leaf_hashes[start:end]``."""
    return root_of(leaf_hashes[start:end])


def inclusion_ranges(index: int, size: int) -> tuple[tuple[int, int], ...]:
    """Leaf ranges whose subtree roots form PATH(index, D[size]) (RFC 9162 §2.1.3.1).

    Returned bottom-up, in proof order.

    Raises:
        AuditUsageError: ``index`` is not below ``size``.
    """
    if not 0 <= index < size:
        raise AuditUsageError(f"leaf index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
    ranges.reverse()
    return tuple(ranges)


def consistency_ranges(old_size: int, new_size: int) -> tuple[tuple[int, int], ...]:
    """Leaf ranges whose subtree roots form PROOF(old, D[new]) (RFC 9162 §2.1.4.1).

    Empty when ``old_size`` is 0 or equals ``new_size``.

    Raises:
        AuditUsageError: ``old_size > new_size`` or a size is negative.
    """
    if not 0 <= old_size <= new_size:
        raise AuditUsageError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return ()
    ranges: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while hi - lo != m:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return tuple(ranges)


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> tuple[bytes, ...]:
    """Return the inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves.

    Raises:
        AuditUsageError: ``index``/``size`` out of range for ``leaf_hashes``.
    """
    if size > len(leaf_hashes):
        raise AuditUsageError(f"tree size {size} exceeds the {len(leaf_hashes)} leaves given")
    return tuple(subtree_root(leaf_hashes, a, b) for a, b in inclusion_ranges(index, size))


def consistency_proof(
    old_size: int, new_size: int, leaf_hashes: Sequence[bytes]
) -> tuple[bytes, ...]:
    """Return the consistency proof between the trees of ``old_size`` and ``new_size`` leaves.

    Raises:
        AuditUsageError: sizes out of range for ``leaf_hashes``.
    """
    if new_size > len(leaf_hashes):
        raise AuditUsageError(f"tree size {new_size} exceeds the {len(leaf_hashes)} leaves given")
    return tuple(subtree_root(leaf_hashes, a, b) for a, b in consistency_ranges(old_size, new_size))


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Compute the root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-5).

    Raises:
        ProofError: the index is out of range or the proof has the wrong length.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf, "leaf hash")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        _check_hash(p, "proof hash")
        if sn == 0:
            raise ProofError(f"inclusion proof for leaf {index} of {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of {size} is too short")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Raises:
        ProofError: the proof does not lead to ``root`` or is malformed.
    """
    calculated = root_from_inclusion_proof(leaf, index, size, proof)
    if calculated != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} leads to root {calculated.hex()}, "
            f"expected {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify that the tree of ``old_size`` is a prefix of the tree of ``new_size``.

    RFC 9162 §2.1.4.2; the two degenerate cases follow common practice: equal sizes
    need an empty proof and equal roots, an empty old tree needs an empty proof and
    the empty root.

    Raises:
        ProofError: the proof does not verify.
    """
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency from size {old_size} to smaller size {new_size}")
    if old_size in (0, new_size):
        if proof:
            raise ProofError(f"consistency proof {old_size} -> {new_size} must be empty")
        expected = EMPTY_ROOT if old_size == 0 else new_root
        if old_root != expected:
            raise ProofError(
                f"root at size {old_size} is {old_root.hex()}, expected {expected.hex()}"
            )
        return
    fr, sr = _consistency_roots(old_size, new_size, old_root, proof)
    if fr != old_root or sr != new_root:
        raise ProofError(
            f"consistency proof {old_size} -> {new_size} gives roots {fr.hex()} / {sr.hex()}, "
            f"expected {old_root.hex()} / {new_root.hex()}"
        )


def _consistency_roots(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    if not proof:
        raise ProofError(f"consistency proof {old_size} -> {new_size} is empty")
    for p in proof:
        _check_hash(p, "proof hash")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof {old_size} -> {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof {old_size} -> {new_size} is too short")
    return fr, sr


def compact_range_spans(size: int) -> tuple[tuple[int, int], ...]:
    """Leaf ranges ``[a, b)`` of the perfect subtrees of ``[0, size)``, largest first."""
    spans: list[tuple[int, int]] = []
    lo = 0
    for bit in reversed(range(size.bit_length())):
        if size >> bit & 1:
            spans.append((lo, lo + (1 << bit)))
            lo += 1 << bit
    return tuple(spans)


def range_start(lo: int, hi: int, base: CompactRange) -> tuple[CompactRange, int]:
    """Where to start computing the root of leaves ``[lo, hi)`` over an archived prefix.

    The leaves below ``base.size`` are known only through ``base``'s subtree
    roots. Returns the state covering ``[lo, min(hi, base.size))`` (relative to
    ``lo``, ready for :class:`TreeBuilder`) and the first leaf to append after it.
    Every range a proof about leaves at or after ``base.size`` lists is covered
    (docs/audit.md "Archive"); a range that cuts through an archived subtree is not.

    Raises:
        AuditUsageError: ``[lo, hi)`` needs leaves hidden inside an archived subtree.
    """
    n = base.size
    if lo >= n:
        return CompactRange(size=0, hashes=()), lo
    end = min(hi, n)
    picked = [
        (a, b, h)
        for (a, b), h in zip(compact_range_spans(n), base.hashes, strict=True)
        if lo <= a and b <= end
    ]
    if not picked or picked[0][0] != lo or picked[-1][1] != end:
        raise AuditUsageError(
            f"leaves {lo}..{hi - 1} include archived entries below {n} that the cut's "
            "compact range does not cover; use the archive"
        )
    return CompactRange(size=end - lo, hashes=tuple(h for _, _, h in picked)), end


class MerkleLevels:
    """Every node of the tree over ``leaves`` (optionally after an archived base).

    Level ``k`` holds the perfect-subtree roots of width ``2**k`` in one
    ``bytearray`` (64 bytes per leaf in all), so any proof is O(log² n) after an
    O(n) build. With a ``base`` of size ``N``, level ``k`` starts at node
    ``(N >> k) - bit k of N``: the base's own subtree of that width, if any,
    followed by nodes built from the level below.
    """

    __slots__ = ("_base", "_levels", "_size", "_starts")

    def __init__(self, leaves: Iterable[bytes], base: CompactRange | None = None) -> None:
        base = base or CompactRange(size=0, hashes=())
        n = base.size
        by_width = {b - a: h for (a, b), h in zip(compact_range_spans(n), base.hashes, strict=True)}
        level = bytearray(by_width.get(1, b""))
        count = 0
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                raise AuditUsageError(f"leaf hash {count} is {len(leaf)} bytes, expected 32")
            level += leaf
            count += 1
        self._base = n
        self._size = n + count
        self._levels = [level]
        self._starts = [n - (n & 1)]
        k = 1
        while (1 << k) <= self._size:
            below = self._levels[-1]
            level = bytearray(by_width.get(1 << k, b""))
            for i in range(0, len(below) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE):
                level += _sha256(b"\x01" + below[i : i + 2 * HASH_SIZE]).digest()
            self._levels.append(level)
            self._starts.append((n >> k) - (n >> k & 1))
            k += 1

    @property
    def size(self) -> int:
        """Number of leaves, archived ones included."""
        return self._size

    @property
    def base_size(self) -> int:
        """Number of archived leaves known only through the base."""
        return self._base

    def _node(self, level: int, index: int) -> bytes | None:
        if level >= len(self._levels):
            return None
        j = index - self._starts[level]
        data = self._levels[level]
        if not 0 <= j < len(data) // HASH_SIZE:
            return None
        return bytes(data[j * HASH_SIZE : (j + 1) * HASH_SIZE])

    def range_root(self, lo: int, hi: int) -> bytes:
        """Return the Merkle tree hash of leaves ``[lo, hi)`` (``lo`` aligned as in proofs).

        Raises:
            AuditUsageError: the range is empty, beyond the leaves, or needs
                leaves hidden inside the archived base.
        """
        if not 0 <= lo < hi <= self._size:
            raise AuditUsageError(f"no leaves {lo}..{hi - 1} in a tree of {self._size}")
        width = hi - lo
        if width & (width - 1) == 0 and lo % width == 0:
            node = self._node(width.bit_length() - 1, lo // width)
            if node is None:
                raise AuditUsageError(
                    f"leaves {lo}..{hi - 1} lie inside the archived prefix of {self._base}"
                )
            return node
        k = _split(width)
        return node_hash(self.range_root(lo, lo + k), self.range_root(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        return EMPTY_ROOT if size == 0 else self.range_root(0, size)

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """Return PATH(index, D[size]) (RFC 9162 §2.1.3.1).

        Raises:
            AuditUsageError: out of range, or the leaf is archived.
        """
        return tuple(self.range_root(a, b) for a, b in inclusion_ranges(index, size))

    def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """Return PROOF(old_size, D[new_size]) (RFC 9162 §2.1.4.1).

        Raises:
            AuditUsageError: out of range, or ``old_size`` lies inside the archive.
        """
        return tuple(self.range_root(a, b) for a, b in consistency_ranges(old_size, new_size))

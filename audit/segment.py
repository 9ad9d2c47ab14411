"""The segment manifest: where an export that does not start at entry 0 starts.

After an archive cut (:mod:`audit.archive`) the stored log, and so every later
export, starts at entry ``N > 0``; the archive itself is a *sealed* segment
that ends at its sealing tree head. Such exports carry ``segment.json``, the
canonical JSON (sorted keys, no whitespace) of::

    {"sealed": M | null,              # an archive: it ends exactly at the tree head of size M
     "start": N,                      # seq of the first line of entries.jsonl
     "start_compact_range": ["<hex>", ...],
                                      # roots of the perfect subtrees of [0, N), largest first
     "start_prev": "<hex>" | null,    # leaf hash of entry N - 1 (the prev of entry N)
     "start_prev_proof": ["<hex>", ...],
                                      # inclusion proof of leaf N - 1 in the tree of size N
     "v": 1}

Nothing in it is trusted on its own: :meth:`Segment.check_start` binds it to
the signed tree head of size ``N`` (the compact range must fold to that root,
``start_prev`` must be leaf ``N - 1`` of it), and the verifier then continues
the tree from the compact range, so every later tree head checks the rest.
An export without ``segment.json`` starts at entry 0 and is not sealed.

Pure: parsing, encoding and checks; no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from audit.errors import AuditUsageError, ProofError, SegmentBroken
from audit.tree import HASH_SIZE, CompactRange, verify_inclusion

__all__ = ["SEGMENT_FILE", "SEGMENT_VERSION", "Segment", "parse_segment"]

SEGMENT_FILE = "segment.json"
SEGMENT_VERSION = 1
_MAX_BYTES = 1 << 16
_KEYS = frozenset({"sealed", "start", "start_compact_range", "start_prev", "start_prev_proof", "v"})
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_GENESIS = bytes(HASH_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """Where a segment export starts, and whether it is a sealed archive."""

    start: int
    start_range: CompactRange
    start_prev: bytes = _GENESIS
    start_prev_proof: tuple[bytes, ...] = ()
    sealed: int | None = None

    def __post_init__(self) -> None:
        if type(self.start) is not int or self.start < 0 or self.start_range.size != self.start:
            raise SegmentBroken(
                f"segment start {self.start!r} does not match its compact range of size "
                f"{self.start_range.size}"
            )
        if len(self.start_prev) != HASH_SIZE:
            raise SegmentBroken("segment start_prev is not 32 bytes")
        if self.start == 0 and (self.start_prev != _GENESIS or self.start_prev_proof):
            raise SegmentBroken("a segment starting at entry 0 has no previous leaf")
        if self.sealed is not None and (type(self.sealed) is not int or self.sealed <= self.start):
            raise SegmentBroken(f"seal {self.sealed!r} must be a tree size above {self.start}")

    def check_start(self, root_hash: bytes) -> None:
        """Check the start against the signed root of the tree of size ``start``.

        Raises:
            SegmentBroken: the compact range or the previous leaf do not belong to it.
        """
        if self.start == 0:
            return
        folded = self.start_range.root()
        if folded != root_hash:
            raise SegmentBroken(
                f"the segment's start state folds to {folded.hex()} but the signed tree "
                f"head of size {self.start} has root {root_hash.hex()}",
                tree_size=self.start,
            )
        try:
            verify_inclusion(
                self.start_prev, self.start - 1, self.start, self.start_prev_proof, root_hash
            )
        except ProofError as exc:
            raise SegmentBroken(
                f"start_prev is not leaf {self.start - 1} of the tree head of size "
                f"{self.start}: {exc}",
                tree_size=self.start,
            ) from exc

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as a plain JSON object."""
        return {
            "sealed": self.sealed,
            "start": self.start,
            "start_compact_range": [h.hex() for h in self.start_range.hashes],
            "start_prev": self.start_prev.hex() if self.start else None,
            "start_prev_proof": [h.hex() for h in self.start_prev_proof],
            "v": SEGMENT_VERSION,
        }

    def encode(self) -> bytes:
        """Return ``segment.json``'s bytes (canonical JSON and a newline)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return text.encode("ascii") + b"\n"


def _hashes(value: Any, what: str) -> tuple[bytes, ...]:
    if type(value) is not list or not all(type(x) is str and _HEX64.match(x) for x in value):
        raise SegmentBroken(f"segment {what} is not a list of 64-digit lowercase hex")
    return tuple(bytes.fromhex(x) for x in value)


def parse_segment(data: bytes) -> Segment:
    """Parse ``segment.json``.

    Raises:
        SegmentBroken: not the manifest described in the module docstring.
    """
    if len(data) > _MAX_BYTES:
        raise SegmentBroken(f"segment.json is larger than {_MAX_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_float=_no_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SegmentBroken(f"segment.json is not JSON: {exc}") from exc
    if type(obj) is not dict or obj.keys() != _KEYS:
        raise SegmentBroken(f"segment.json must hold exactly {sorted(_KEYS)}")
    if obj["v"] != SEGMENT_VERSION or type(obj["v"]) is not int:
        raise SegmentBroken(f"segment.json version {obj['v']!r} is not {SEGMENT_VERSION}")
    start, prev = obj["start"], obj["start_prev"]
    if type(start) is not int or start < 0:
        raise SegmentBroken("segment start is not an integer >= 0")
    if start and not (type(prev) is str and _HEX64.match(prev)):
        raise SegmentBroken("segment start_prev is not 64-digit lowercase hex")
    if not start and prev is not None:
        raise SegmentBroken("a segment starting at entry 0 has start_prev null")
    try:
        start_range = CompactRange(
            size=start, hashes=_hashes(obj["start_compact_range"], "start_compact_range")
        )
    except AuditUsageError as exc:  # wrong number of hashes for the size
        raise SegmentBroken(f"segment start_compact_range: {exc}") from exc
    return Segment(
        start=start,
        start_range=start_range,
        start_prev=bytes.fromhex(prev) if start else _GENESIS,
        start_prev_proof=_hashes(obj["start_prev_proof"], "start_prev_proof"),
        sealed=obj["sealed"],
    )


def _no_float(text: str) -> int:
    raise ValueError(f"number {text} is not an integer")

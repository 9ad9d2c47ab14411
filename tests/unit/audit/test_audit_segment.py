"""The segment manifest (segment.json): strict parsing and binding to the sealing tree head."""

from __future__ import annotations

import json

import pytest

from audit.errors import SegmentBroken
from audit.segment import Segment, parse_segment
from audit.tree import CompactRange, TreeBuilder, inclusion_proof, leaf_hash

LEAVES = [leaf_hash(bytes([i])) for i in range(11)]


def segment_at(n: int, sealed: int | None = None) -> Segment:
    builder = TreeBuilder()
    builder.extend(LEAVES[:n])
    return Segment(
        start=n,
        start_range=builder.compact_range(),
        start_prev=LEAVES[n - 1],
        start_prev_proof=inclusion_proof(n - 1, n, LEAVES),
        sealed=sealed,
    )


def root(n: int) -> bytes:
    builder = TreeBuilder()
    builder.extend(LEAVES[:n])
    return builder.root()


def test_round_trip_and_binding():
    seg = segment_at(6, sealed=9)
    data = seg.encode()
    assert data.endswith(b"\n") and b" " not in data
    assert parse_segment(data) == seg
    seg.check_start(root(6))
    whole = Segment(start=0, start_range=CompactRange(size=0, hashes=()), sealed=4)
    assert parse_segment(whole.encode()) == whole
    whole.check_start(b"anything")  # nothing to bind at entry 0
    assert json.loads(whole.encode())["start_prev"] is None


def test_start_bound_to_the_signed_root():
    seg = segment_at(6)
    with pytest.raises(SegmentBroken, match=r"start state folds to .* size 6 has root"):
        seg.check_start(root(7))
    lying = Segment(
        start=6,
        start_range=seg.start_range,
        start_prev=LEAVES[2],
        start_prev_proof=seg.start_prev_proof,
    )
    with pytest.raises(SegmentBroken, match="start_prev is not leaf 5 of the tree head of size 6"):
        lying.check_start(root(6))


def mutate(**changes: object) -> bytes:
    obj = json.loads(segment_at(6, sealed=9).encode())
    obj.update(changes)
    return json.dumps(obj).encode()


BAD = {
    "not json": (b"{", "not JSON"),
    "float": (mutate(start=6.0), "not an integer"),
    "extra key": (mutate(extra=1), "must hold exactly"),
    "version": (mutate(v=2), "version 2 is not 1"),
    "negative start": (mutate(start=-1), "start is not an integer >= 0"),
    "bad prev": (mutate(start_prev="XY"), "start_prev is not 64-digit"),
    "prev at zero": (mutate(start=0, start_compact_range=[]), "has start_prev null"),
    "range count": (mutate(start=7), "start_compact_range: compact range of size 7 needs 3"),
    "range hex": (mutate(start_compact_range=["zz"]), "not a list of 64-digit"),
    "proof hex": (mutate(start_prev_proof="ab"), "start_prev_proof is not a list"),
    "seal not above start": (mutate(sealed=6), "seal 6 must be a tree size above 6"),
    "huge": (b" " * 70000, "larger than 65536 bytes"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=list(BAD))
def test_malformed_manifests_are_refused(case):
    data, message = case
    with pytest.raises(SegmentBroken, match=message):
        parse_segment(data)


def test_value_object_validation():
    empty = CompactRange(size=0, hashes=())
    with pytest.raises(SegmentBroken, match="does not match its compact range of size 0"):
        Segment(start=3, start_range=empty)
    with pytest.raises(SegmentBroken, match="start_prev is not 32 bytes"):
        Segment(start=0, start_range=empty, start_prev=b"x")
    with pytest.raises(SegmentBroken, match="starting at entry 0 has no previous leaf"):
        Segment(start=0, start_range=empty, start_prev_proof=(LEAVES[0],))

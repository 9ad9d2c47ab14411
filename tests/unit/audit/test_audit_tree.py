"""RFC 6962 / RFC 9162 Merkle tree: known answers, a naive reference, properties.

The reference below is the recursive definition of RFC 6962 §2.1 (MTH, PATH,
PROOF/SUBPROOF) written as literally as possible and deliberately slow; the
library's compact-range and range-based code must agree with it everywhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditUsageError, ProofError
from audit.tree import (
    EMPTY_ROOT,
    CompactRange,
    MerkleLevels,
    TreeBuilder,
    compact_range_spans,
    consistency_proof,
    consistency_ranges,
    inclusion_proof,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    range_start,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "audit" / "merkle.json"


# --- the naive reference, straight from RFC 6962 §2.1 -------------------------------


def ref_mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [ref_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, data[:k], b), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


def ref_proof(m: int, data: list[bytes]) -> list[bytes]:
    return ref_subproof(m, data, True)


def leaves_data(n: int) -> list[bytes]:
    return [f"leaf {i}".encode() for i in range(n)]


def derive_vectors() -> dict[str, object]:
    """The derived part of merkle.json, recomputed with the reference."""
    data = leaves_data(70)
    return {
        "leaves": "leaf data i is the UTF-8 text 'leaf <i>'",
        "roots": {str(n): ref_mth(data[:n]).hex() for n in range(71)},
        "inclusion": [
            {"index": m, "size": n, "proof": [h.hex() for h in ref_path(m, data[:n])]}
            for n, m in [(1, 0), (7, 3), (8, 5), (13, 12), (64, 31), (70, 69), (70, 0)]
        ],
        "consistency": [
            {"old": m, "new": n, "proof": [h.hex() for h in ref_proof(m, data[:n])]}
            for m, n in [(1, 2), (3, 7), (4, 8), (6, 8), (13, 70), (64, 70), (69, 70)]
        ],
    }


@pytest.fixture(scope="module")
def vectors() -> dict[str, object]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


# --- known answers -------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == EMPTY_ROOT == TreeBuilder().root()


def test_certificate_transparency_roots(vectors):
    ct = vectors["rfc6962_ct"]
    leaves = [leaf_hash(bytes.fromhex(x)) for x in ct["leaves"]]
    for n, want in enumerate(ct["roots"], start=1):
        assert root_of(leaves[:n]).hex() == want
        assert ref_mth([bytes.fromhex(x) for x in ct["leaves"][:n]]).hex() == want


def test_certificate_transparency_proofs(vectors):
    ct = vectors["rfc6962_ct"]
    leaves = [leaf_hash(bytes.fromhex(x)) for x in ct["leaves"]]
    roots = [bytes.fromhex(r) for r in ct["roots"]]
    for case in ct["inclusion"]:
        proof = inclusion_proof(case["index"], case["size"], leaves)
        assert [h.hex() for h in proof] == case["proof"]
        verify_inclusion(
            leaves[case["index"]], case["index"], case["size"], proof, roots[case["size"] - 1]
        )
    for case in ct["consistency"]:
        proof = consistency_proof(case["old"], case["new"], leaves)
        assert [h.hex() for h in proof] == case["proof"]
        verify_consistency(
            case["old"], case["new"], roots[case["old"] - 1], roots[case["new"] - 1], proof
        )


def test_derived_vectors_match_reference_and_library(vectors):
    assert vectors["derived"] == derive_vectors()
    data = leaves_data(70)
    leaves = [leaf_hash(d) for d in data]
    for n, want in vectors["derived"]["roots"].items():
        assert root_of(leaves[: int(n)]).hex() == want
    for case in vectors["derived"]["inclusion"]:
        got = inclusion_proof(case["index"], case["size"], leaves)
        assert [h.hex() for h in got] == case["proof"]
    for case in vectors["derived"]["consistency"]:
        got = consistency_proof(case["old"], case["new"], leaves)
        assert [h.hex() for h in got] == case["proof"]


# --- library against the reference ----------------------------------------------------


def _sizes() -> list[int]:
    rng = random.Random(6962)
    return list(range(1, 71)) + sorted(rng.sample(range(71, 1100), 6)) + [1024, 1025]


def test_incremental_root_matches_reference_every_size():
    data = leaves_data(1100)
    builder = TreeBuilder()
    wanted = set(_sizes())
    for n, d in enumerate(data, start=1):
        builder.append(leaf_hash(d))
        if n in wanted:
            assert builder.root() == ref_mth(data[:n]), n
            snapshot = builder.compact_range()
            assert len(snapshot.hashes) == n.bit_count()
            assert CompactRange.from_bytes(n, snapshot.to_bytes()) == snapshot


def test_every_inclusion_proof_matches_reference_up_to_70():
    data = leaves_data(70)
    leaves = [leaf_hash(d) for d in data]
    for n in range(1, 71):
        root = ref_mth(data[:n])
        for m in range(n):
            proof = inclusion_proof(m, n, leaves)
            assert list(proof) == ref_path(m, data[:n]), (m, n)
            verify_inclusion(leaves[m], m, n, proof, root)


def test_every_consistency_proof_matches_reference_up_to_40():
    data = leaves_data(40)
    leaves = [leaf_hash(d) for d in data]
    roots = [ref_mth(data[:n]) for n in range(41)]
    for n in range(1, 41):
        for m in range(1, n):
            proof = consistency_proof(m, n, leaves)
            assert list(proof) == ref_proof(m, data[:n]), (m, n)
            verify_consistency(m, n, roots[m], roots[n], proof)


def test_large_random_sizes_against_reference():
    rng = random.Random(9162)
    data = leaves_data(600)
    leaves = [leaf_hash(d) for d in data]
    for _ in range(12):
        n = rng.randrange(71, 600)
        m = rng.randrange(1, n)
        i = rng.randrange(n)
        assert list(inclusion_proof(i, n, leaves)) == ref_path(i, data[:n])
        assert list(consistency_proof(m, n, leaves)) == ref_proof(m, data[:n])


# --- hypothesis properties -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=80), st.data())
def test_property_proofs_verify_and_tampering_fails(items, data):
    leaves = [leaf_hash(x) for x in items]
    n = len(leaves)
    root = root_of(leaves)
    assert root == ref_mth(items)
    i = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(i, n, leaves)
    verify_inclusion(leaves[i], i, n, proof, root)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes(32)
        with pytest.raises(ProofError, match="leads to root"):
            verify_inclusion(leaves[i], i, n, bad, root)
    if n > 1:
        m = data.draw(st.integers(1, n - 1))
        cproof = consistency_proof(m, n, leaves)
        old = root_of(leaves[:m])
        verify_consistency(m, n, old, root, cproof)
        with pytest.raises(ProofError, match="consistency proof"):
            verify_consistency(m, n, node_hash(old, old), root, cproof)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_property_ranges_partition_the_tree(n, data):
    i = data.draw(st.integers(0, n - 1))
    ranges = inclusion_ranges(i, n)
    covered = sorted([*ranges, (i, i + 1)])
    assert covered[0][0] == 0 and covered[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    m = data.draw(st.integers(0, n))
    assert len(consistency_ranges(m, n)) <= 2 * n.bit_length()


# --- error paths -----------------------------------------------------------------------


def test_inclusion_errors():
    leaves = [leaf_hash(d) for d in leaves_data(8)]
    proof = inclusion_proof(5, 8, leaves)
    root = root_of(leaves)
    with pytest.raises(ProofError, match="outside a tree of size 8"):
        root_from_inclusion_proof(leaves[5], 8, 8, proof)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(leaves[5], 5, 8, proof[:-1], root)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(leaves[5], 5, 8, (*proof, bytes(32)), root)
    with pytest.raises(ProofError, match="proof hash is 31 bytes"):
        verify_inclusion(leaves[5], 5, 8, (bytes(31), *proof[1:]), root)
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(leaves[4], 5, 8, proof, root)
    with pytest.raises(AuditUsageError, match="outside a tree of size 3"):
        inclusion_ranges(3, 3)
    with pytest.raises(AuditUsageError, match="exceeds the 8 leaves"):
        inclusion_proof(0, 9, leaves)


def test_consistency_errors():
    leaves = [leaf_hash(d) for d in leaves_data(8)]
    r6, r8 = root_of(leaves[:6]), root_of(leaves)
    proof = consistency_proof(6, 8, leaves)
    with pytest.raises(ProofError, match="to smaller size"):
        verify_consistency(8, 6, r8, r6, proof)
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(6, 8, r6, r8, ())
    with pytest.raises(ProofError, match="too long"):
        verify_consistency(6, 8, r6, r8, (*proof, bytes(32)))
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(8, 8, r8, r8, proof)
    with pytest.raises(ProofError, match="expected"):
        verify_consistency(8, 8, r6, r8, ())
    with pytest.raises(ProofError, match="old root is 31 bytes"):
        verify_consistency(6, 8, r6[:31], r8, proof)
    verify_consistency(0, 8, EMPTY_ROOT, r8, ())
    verify_consistency(8, 8, r8, r8, ())
    with pytest.raises(AuditUsageError, match="from size 9 to size 8"):
        consistency_ranges(9, 8)
    with pytest.raises(AuditUsageError, match="exceeds the 8 leaves"):
        consistency_proof(1, 9, leaves)


def test_compact_range_validation():
    with pytest.raises(AuditUsageError, match="needs 2 hashes, got 1"):
        CompactRange(size=3, hashes=(bytes(32),))
    with pytest.raises(AuditUsageError, match="negative"):
        CompactRange(size=-1, hashes=())
    with pytest.raises(AuditUsageError, match="not 32 bytes"):
        CompactRange(size=1, hashes=(bytes(31),))
    with pytest.raises(AuditUsageError, match="not a multiple of 32"):
        CompactRange.from_bytes(1, bytes(33))
    assert CompactRange(size=0, hashes=()).root() == EMPTY_ROOT


# --- archived prefixes: proofs from a cut's compact range ------------------------------


def _base(data: list[bytes], n: int) -> CompactRange:
    builder = TreeBuilder()
    builder.extend(leaf_hash(x) for x in data[:n])
    return builder.compact_range()


def _from_start(a: int, b: int, base: CompactRange, hashes: list[bytes]) -> bytes:
    state, first = range_start(a, b, base)
    builder = TreeBuilder(state)
    builder.extend(hashes[first:b])
    return builder.root()


def test_compact_range_spans():
    assert compact_range_spans(0) == ()
    assert compact_range_spans(13) == ((0, 8), (8, 12), (12, 13))
    assert compact_range_spans(16) == ((0, 16),)


def test_proofs_after_a_cut_match_the_full_tree_everywhere():
    """Every proof about leaves >= the cut, from the cut's compact range alone, equals
    the proof over all leaves (itself checked against the reference above)."""
    for total in range(1, 21):
        hashes = [leaf_hash(x) for x in leaves_data(total)]
        for cut in range(total + 1):
            base = _base(leaves_data(cut), cut)
            levels = MerkleLevels(hashes[cut:], base)
            assert (levels.size, levels.base_size) == (total, cut)
            for size in range(max(cut, 1), total + 1):
                assert levels.root(size) == root_of(hashes[:size])
                for old in range(max(cut, 1), size + 1):
                    want = consistency_proof(old, size, hashes)
                    assert levels.consistency_proof(old, size) == want
                    ranges = consistency_ranges(old, size)
                    assert tuple(_from_start(a, b, base, hashes) for a, b in ranges) == want
                for index in range(cut, size):
                    want = inclusion_proof(index, size, hashes)
                    assert levels.inclusion_proof(index, size) == want
                    ranges = inclusion_ranges(index, size)
                    assert tuple(_from_start(a, b, base, hashes) for a, b in ranges) == want


def test_archived_leaves_are_refused():
    data = leaves_data(12)
    hashes = [leaf_hash(x) for x in data]
    base = _base(data, 6)  # subtrees [0, 4) and [4, 6)
    levels = MerkleLevels(hashes[6:], base)
    with pytest.raises(AuditUsageError, match=r"leaves 0..1 lie inside the archived prefix of 6"):
        levels.range_root(0, 2)
    with pytest.raises(AuditUsageError, match="inside the archived prefix"):
        levels.inclusion_proof(2, 12)
    with pytest.raises(AuditUsageError, match=r"no leaves 10..12 in a tree of 12"):
        levels.range_root(10, 13)
    with pytest.raises(AuditUsageError, match=r"leaves 0..2 include archived entries below 6"):
        range_start(0, 3, base)
    assert levels.root(0) == EMPTY_ROOT
    assert range_start(6, 9, base) == (CompactRange(size=0, hashes=()), 6)


def test_levels_refuse_bad_leaf_hashes():
    with pytest.raises(AuditUsageError, match="leaf hash 1 is 3 bytes"):
        MerkleLevels([b"\x00" * 32, b"abc"])

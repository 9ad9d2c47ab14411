"""The fenced primitives (mask expansion, Shamir) and the key/AEAD helpers over them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from secagg_harness import SeededRng

from secagg import crypto
from secagg.primitives import prg, shamir

ROOT = Path(__file__).resolve().parents[3]


def test_mask_expansion_is_deterministic_full_key_and_typed() -> None:
    key = bytes(range(32))
    a = prg.expand_words(key, 1000, np.uint32)
    assert a.dtype == np.uint32 and a.size == 1000 and not a.flags.writeable
    assert np.array_equal(a, prg.expand_words(key, 1000, np.uint32))
    other = bytes(range(31)) + b"\xff"  # one bit of the key changes everything
    assert np.count_nonzero(a == prg.expand_words(other, 1000, np.uint32)) < 3
    wide = prg.expand_words(key, 500, np.uint64)
    assert wide.tobytes() == a.tobytes()  # the same little-endian keystream
    with pytest.raises(ValueError, match="32 bytes"):
        prg.expand_words(b"short", 4, np.uint32)
    with pytest.raises(ValueError, match="uint32 or uint64"):
        prg.expand_words(key, 4, np.int64)


def test_adding_and_subtracting_a_mask_wraps_back_exactly() -> None:
    values = np.arange(10, dtype=np.uint32) * (2**31)
    original = values.copy()
    prg.add_mask(values, b"k" * 32)
    assert not np.array_equal(values, original)
    prg.add_mask(values, b"k" * 32, subtract=True)
    assert np.array_equal(values, original)


def test_shamir_threshold_and_errors() -> None:
    rng = SeededRng(1)
    xs = [3, 5, 7, 11, 13]
    shares = shamir.split(42, 3, xs, rng)
    points = list(zip(xs, shares, strict=True))
    assert shamir.reconstruct(points[:3]) == 42
    assert shamir.reconstruct(points[2:]) == 42
    assert shamir.reconstruct(points[:2]) != 42  # two shares of degree-2: anything
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(1, 2, [1, 1], rng)
    with pytest.raises(ValueError, match="non-zero"):
        shamir.split(1, 2, [0, 1], rng)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(1, 4, [1, 2, 3], rng)
    with pytest.raises(ValueError, match="below the field prime"):
        shamir.element_from_bytes(b"\xff" * 32)


def test_shares_are_sealed_for_one_direction_of_one_pair() -> None:
    rng = SeededRng(2)
    a, b = shamir.random_element(rng), shamir.random_element(rng)
    shared = crypto.agree(crypto.private_key(a), crypto.public_key(b))
    assert shared == crypto.agree(crypto.private_key(b), crypto.public_key(a))
    round_id = bytes(32)
    sealed = crypto.seal_share(
        shared, round_id=round_id, sender=1, receiver=2, self_mask_share=7, key_share=9, rng=rng
    )
    assert len(sealed) == crypto.SEALED_SHARE_BYTES
    assert crypto.open_share(shared, sealed, round_id=round_id, sender=1, receiver=2) == (7, 9)
    for wrong in ({"sender": 2, "receiver": 1}, {"sender": 1, "receiver": 3}):
        with pytest.raises(ValueError, match="does not decrypt"):
            crypto.open_share(shared, sealed, round_id=round_id, **wrong)
    with pytest.raises(ValueError, match="does not decrypt"):
        crypto.open_share(shared, sealed, round_id=b"\x01" * 32, sender=1, receiver=2)


def test_pair_keys_are_symmetric_and_bound_to_round_and_pair() -> None:
    shared = b"s" * 32
    key = crypto.pair_mask_key(shared, bytes(32), 5, 9)
    assert key == crypto.pair_mask_key(shared, bytes(32), 9, 5)
    assert key != crypto.pair_mask_key(shared, b"\x01" * 32, 5, 9)
    assert key != crypto.pair_mask_key(shared, bytes(32), 5, 10)


def test_low_order_peer_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="shared key"):
        crypto.agree(crypto.private_key(12345), bytes(32))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_primitives_are_fenced_inside_secagg() -> None:
    for package in ("appliance", "certs", "dp", "audit", "benchmarks", "examples"):
        for path in (ROOT / package).rglob("*.py"):
            assert not any(n.startswith("secagg.primitives") for n in _imports(path)), path


def test_a_restricted_signer_signs_secagg_payloads_only() -> None:
    from secagg import UnsafeLocalKeyring, restrict_to_secagg

    signer = restrict_to_secagg(UnsafeLocalKeyring(SeededRng(3)).credentials(1).signer)
    payload = crypto.consistency_payload(bytes(32), bytes(32), [1, 2, 3])
    assert len(signer.sign(payload)) == crypto.SIGNATURE_BYTES
    with pytest.raises(PermissionError, match="SecAgg\\+ payloads only"):
        signer.sign(b"POST /fleet.Fleet/PushReplies")

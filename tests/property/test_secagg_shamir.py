"""Property tests: Shamir sharing over GF(2^255 - 19) (secagg.primitives.shamir)."""

from __future__ import annotations

import hashlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.primitives import shamir

elements = st.integers(min_value=0, max_value=shamir.PRIME - 1)
x_coordinates = st.integers(min_value=1, max_value=2**64 - 1)


def _rng(seed: int):
    counter = itertools.count()
    return lambda size: b"".join(
        hashlib.sha256(seed.to_bytes(8, "big") + next(counter).to_bytes(8, "big")).digest()
        for _ in range(-(-size // 32))
    )[:size]


@settings(max_examples=60, deadline=None)
@given(
    secret=elements,
    xs=st.lists(x_coordinates, min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_any_threshold_subset_reconstructs(secret: int, xs: list[int], data) -> None:
    threshold = data.draw(st.integers(min_value=1, max_value=len(xs)))
    seed = data.draw(st.integers(min_value=0, max_value=2**32))
    shares = shamir.split(secret, threshold, xs, _rng(seed))
    points = list(zip(xs, shares, strict=True))
    subset = data.draw(st.permutations(points)).copy()[:threshold]
    assert shamir.reconstruct(subset) == secret
    # More shares than needed give the same answer.
    assert shamir.reconstruct(points) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=elements,
    xs=st.lists(x_coordinates, min_size=2, max_size=8, unique=True),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_fewer_than_threshold_shares_do_not_give_the_secret(
    secret: int, xs: list[int], seed: int
) -> None:
    """The threshold is really t: t - 1 shares interpolate to an unrelated value (w.h.p.)."""
    threshold = len(xs)
    shares = shamir.split(secret, threshold, xs, _rng(seed))
    partial = list(zip(xs, shares, strict=True))[: threshold - 1]
    assert shamir.reconstruct(partial) != secret  # fails with probability 1/p


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(x_coordinates, min_size=1, max_size=10, unique=True))
def test_lagrange_coefficients_reproduce_constants(xs: list[int]) -> None:
    assert sum(shamir.lagrange_at_zero(xs)) % shamir.PRIME == 1


@settings(max_examples=100, deadline=None)
@given(value=elements)
def test_elements_round_trip_through_bytes(value: int) -> None:
    assert shamir.element_from_bytes(shamir.element_to_bytes(value)) == value

"""Distributed DP: Skellam shares sum to the intended variance, also with dropouts."""

import math

import numpy as np
import pytest

from dp import (
    AccountingError,
    InvalidPrivacyParameter,
    InvalidUpdateError,
    SkellamPlan,
    add_noise_share,
    dequantize,
    epsilon,
    from_modular,
    quantize,
    required_modulus_bits,
    skellam_spend,
    to_modular,
)


def _plan(**changes):
    params = {
        "clipping_norm": 1.0,
        "scale": 200.0,
        "dimension": 2_000,
        "noise_multiplier": 1.0,
        "expected_sites": 5,
        "min_surviving_sites": 3,
    }
    return SkellamPlan(**{**params, **changes})


@pytest.mark.parametrize("surviving", [5, 4, 3])
def test_sum_of_shares_has_the_intended_variance_also_with_dropouts(surviving):
    plan = _plan()
    rng = np.random.default_rng(surviving)
    zero = np.zeros(plan.dimension, dtype=np.int64)
    total = sum(add_noise_share(zero, plan, rng) for _ in range(surviving))
    empirical = float(np.var(total))
    assert empirical == pytest.approx(plan.surviving_variance(surviving), rel=0.06)
    if surviving == plan.min_surviving_sites:
        assert plan.surviving_variance(surviving) == pytest.approx(plan.target_variance)


def test_quantized_vector_respects_the_sensitivity_bound_and_roundtrips():
    plan = _plan(dimension=1_000, min_surviving_sites=5)
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=(10, 100)) * 0.1 for _ in range(5)]
    shares = []
    for update in updates:
        q = quantize([update], plan, rng)
        assert q.dtype == np.int64
        assert math.sqrt(float(np.dot(q, q))) <= plan.l2_sensitivity
        shares.append(to_modular(add_noise_share(q, plan, rng), plan.modulus_bits))
    masked_sum = sum(s.astype(np.uint64) for s in shares) & np.uint64((1 << plan.modulus_bits) - 1)
    mean = dequantize(from_modular(masked_sum, plan.modulus_bits), plan, count=5)
    clipped = [u * min(1.0, plan.clipping_norm / np.linalg.norm(u)) for u in updates]
    error = mean - np.mean(clipped, axis=0).reshape(-1)
    expected_std = math.sqrt(plan.surviving_variance(5) + 5 / 4) / (plan.scale * 5)
    assert np.std(error) == pytest.approx(expected_std, rel=0.1)


def test_modular_lift_is_centred():
    values = np.array([-5, -1, 0, 1, 2**15 - 1, -(2**15)], dtype=np.int64)
    np.testing.assert_array_equal(from_modular(to_modular(values, 16), 16), values)


def test_fewer_surviving_shares_mean_larger_epsilon():
    plan = _plan()
    full = skellam_spend(plan, [5] * 20, delta=1e-5)
    at_threshold = skellam_spend(plan, [3] * 20, delta=1e-5)
    one_bad_round = skellam_spend(plan, [3] * 19 + [1], delta=1e-5)
    assert full.epsilon < at_threshold.epsilon < one_bad_round.epsilon
    assert full.unit.value == "site-level"


def test_skellam_at_target_is_close_to_the_gaussian_with_integer_orders():
    """With large noise the Skellam bound approaches the Gaussian RDP bound."""
    plan = _plan(scale=2000.0, min_surviving_sites=5)
    spend = skellam_spend(plan, [5] * 10, delta=1e-5)
    gaussian = epsilon(
        noise_multiplier=1.0, sampling_rate=1.0, rounds=10, delta=1e-5, accountant="rdp"
    )
    assert gaussian <= spend.epsilon <= gaussian * 1.15


def test_accounting_refuses_a_round_without_noise():
    with pytest.raises(AccountingError, match="without any noise"):
        skellam_spend(_plan(), [5, 0], delta=1e-5)


def test_modulus_bits_cover_signal_and_noise():
    plan = _plan(scale=1000.0, dimension=10_000, expected_sites=10, min_surviving_sites=7)
    bits = required_modulus_bits(plan)
    half = 2 ** (bits - 1)
    assert half > 10 * 1000 + 8 * math.sqrt(plan.surviving_variance(10))
    assert bits <= 32


PLAN_ERRORS = {
    "threshold above cohort": ({"min_surviving_sites": 6}, "exceeds expected_sites"),
    "negative noise": ({"noise_multiplier": -1.0}, "noise_multiplier"),
    "zero scale": ({"scale": 0.0}, "scale"),
    "huge modulus": ({"modulus_bits": 63}, "modulus_bits"),
    "bad beta": ({"beta": 1.0}, "beta"),
}


@pytest.mark.parametrize("case", PLAN_ERRORS.values(), ids=list(PLAN_ERRORS))
def test_plan_refuses_nonsense(case):
    changes, match = case
    with pytest.raises(InvalidPrivacyParameter, match=match):
        _plan(**changes)


def test_shares_refuse_wrong_vectors():
    plan = _plan()
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidUpdateError, match="int64 vector of length 2000"):
        add_noise_share(np.zeros(plan.dimension), plan, rng)
    with pytest.raises(InvalidUpdateError, match="2000"):
        quantize([np.zeros(10)], plan, rng)

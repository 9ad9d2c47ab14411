"""Noise: empirical standard deviations match the formulas (seeded); adaptive clipping; RNG."""

import math

import numpy as np
import pytest
from dp_accounting import get_epsilon_gaussian

from dp import (
    ClippedSum,
    InvalidPrivacyParameter,
    InvalidUpdateError,
    adapt_clipping_norm,
    local_dp_noise_std,
    secure_rng,
    split_noise_multiplier,
)
from dp.mechanisms import local_dp_release, noised_count
from dp.rng import noise_rng


@pytest.mark.parametrize(
    ("sites", "noise_multiplier", "clipping_norm"), [(3, 1.0, 0.5), (10, 0.8, 2.0)]
)
def test_noised_mean_has_std_z_c_over_m(sites, noise_multiplier, clipping_norm):
    rng = np.random.default_rng(7)
    dim, aggregates = 400, 250
    errors = []
    for _ in range(aggregates):
        total = ClippedSum([(dim,)], clipping_norm)
        updates = [rng.normal(size=dim) for _ in range(sites)]
        clipped = []
        for update in updates:
            total.add([update])
            clipped.append(update * min(1.0, clipping_norm / np.linalg.norm(update)))
        (mean,) = total.noised_mean(noise_multiplier, rng)
        errors.append(mean - np.mean(clipped, axis=0))
    empirical = np.std(np.concatenate(errors))
    expected = noise_multiplier * clipping_norm / sites
    assert empirical == pytest.approx(expected, rel=0.02)


def test_clipped_sum_clips_each_update_and_counts_those_inside():
    total = ClippedSum([(2,)], 1.0)
    assert total.add([np.array([3.0, 4.0])]) is False
    assert total.add([np.array([0.3, 0.4])]) is True
    assert (total.count, total.within) == (2, 1)
    (mean,) = total.noised_mean(1e-12, np.random.default_rng(0))
    np.testing.assert_allclose(mean, [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)


def test_clipped_sum_refuses_bad_updates_without_touching_the_sum():
    total = ClippedSum([(2,)], 1.0)
    with pytest.raises(InvalidUpdateError, match="shape"):
        total.add([np.zeros(3)])
    with pytest.raises(InvalidUpdateError, match="arrays"):
        total.add([np.zeros(2), np.zeros(2)])
    with pytest.raises(InvalidUpdateError, match="NaN"):
        total.add([np.array([np.nan, 0.0])])
    assert total.count == 0
    with pytest.raises(InvalidPrivacyParameter, match="no update"):
        total.noised_mean(1.0, np.random.default_rng(0))
    total.add([np.zeros(2)])
    with pytest.raises(InvalidPrivacyParameter, match="noise_multiplier"):
        total.noised_mean(-1.0, np.random.default_rng(0))


def test_local_dp_std_is_the_analytic_gaussian_for_sensitivity_2c():
    std = local_dp_noise_std(clipping_norm=0.5, epsilon=2.0, delta=1e-5)
    assert get_epsilon_gaussian(std / 1.0, 1e-5) == pytest.approx(2.0, rel=1e-6)
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) * 1.0 / 0.5
    tight = local_dp_noise_std(clipping_norm=0.5, epsilon=0.5, delta=1e-5)
    assert tight < classical  # the analytic calibration beats the classical bound


def test_local_dp_release_adds_the_calibrated_noise():
    rng = np.random.default_rng(3)
    deltas = [np.zeros(200_000)]
    std = local_dp_release(deltas, clipping_norm=1.0, epsilon=1.0, delta=1e-5, rng=rng)
    assert np.std(deltas[0]) == pytest.approx(std, rel=0.01)


def test_local_dp_release_refuses_an_unclipped_update():
    with pytest.raises(InvalidUpdateError, match="clip first"):
        local_dp_release(
            [np.ones(4)], clipping_norm=1.0, epsilon=1.0, delta=1e-5, rng=np.random.default_rng(0)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clipping_norm": 1.0, "epsilon": 0.0, "delta": 1e-5}, "epsilon must be > 0"),
        ({"clipping_norm": 1.0, "epsilon": 1.0, "delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"clipping_norm": 1.0, "epsilon": -1.0, "delta": 1e-5}, "epsilon must be finite and >= 0"),
        ({"clipping_norm": 0.0, "epsilon": 1.0, "delta": 1e-5}, "clipping_norm"),
    ],
)
def test_local_dp_refuses_nonsense(kwargs, match):
    with pytest.raises(InvalidPrivacyParameter, match=match):
        local_dp_noise_std(**kwargs)


def test_split_noise_multiplier_recombines_to_the_total():
    z, sigma_b = 1.0, 2.0
    z_update = split_noise_multiplier(z, sigma_b)
    assert z_update > z
    assert (z_update**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(InvalidPrivacyParameter, match="must exceed z / 2"):
        split_noise_multiplier(1.0, 0.5)


def test_adaptive_clipping_tracks_the_target_quantile():
    rng = np.random.default_rng(11)
    norm, sites = 0.05, 10
    for _ in range(400):
        update_norms = rng.lognormal(mean=0.0, sigma=0.5, size=sites)  # median 1.0
        within = int(np.sum(update_norms <= norm))
        norm = adapt_clipping_norm(
            norm,
            noisy_within=noised_count(within, 1.0, rng),
            count=sites,
            target_quantile=0.5,
            learning_rate=0.2,
        )
    assert 0.7 < norm < 1.4


def test_adaptive_update_refuses_nonsense():
    with pytest.raises(InvalidPrivacyParameter, match="target_quantile"):
        adapt_clipping_norm(1.0, noisy_within=1, count=2, target_quantile=1.5, learning_rate=0.2)
    with pytest.raises(InvalidPrivacyParameter, match="count"):
        adapt_clipping_norm(1.0, noisy_within=1, count=0, target_quantile=0.5, learning_rate=0.2)


def test_secure_rng_is_fresh_and_injected_rng_is_used_as_is():
    a, b = secure_rng().standard_normal(4), secure_rng().standard_normal(4)
    assert not np.array_equal(a, b)
    seeded = np.random.default_rng(5)
    assert noise_rng(seeded) is seeded
    assert isinstance(noise_rng(None).bit_generator, np.random.PCG64DXSM)

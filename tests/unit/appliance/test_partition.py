import numpy as np
import pytest

from appliance.partition import dirichlet_partition, iid_partition, pathological_partition

LABELS = np.repeat(np.arange(5), 40)


def _assert_is_partition(parts, n):
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))


def test_iid_is_a_seeded_balanced_partition():
    parts = iid_partition(103, 4, seed=0)
    _assert_is_partition(parts, 103)
    assert {len(p) for p in parts} <= {25, 26}
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 4, seed=0), strict=True)
    )
    assert not all(
        np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 4, seed=1), strict=True)
    )


def test_dirichlet_skew_depends_on_alpha():
    def label_spread(alpha):
        parts = dirichlet_partition(LABELS, 4, alpha=alpha, seed=0, min_partition_size=5)
        _assert_is_partition(parts, len(LABELS))
        shares = [np.bincount(LABELS[p], minlength=5) / len(p) for p in parts]
        return float(np.mean(np.std(shares, axis=0)))

    assert label_spread(0.1) > 2 * label_spread(100.0)


def test_dirichlet_impossible_minimum():
    with pytest.raises(ValueError, match="no Dirichlet"):
        dirichlet_partition(LABELS, 4, alpha=0.5, seed=0, min_partition_size=100, max_attempts=5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet_partition(LABELS, 4, alpha=0, seed=0)


def test_pathological_gives_k_labels_per_partition():
    parts = pathological_partition(LABELS, 5, labels_per_partition=2, seed=3)
    _assert_is_partition(parts, len(LABELS))
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    with pytest.raises(ValueError, match="cannot cover"):
        pathological_partition(LABELS, 2, labels_per_partition=2, seed=0)


def test_too_few_samples():
    with pytest.raises(ValueError, match="cannot split 3 samples into 4"):
        iid_partition(3, 4, seed=0)

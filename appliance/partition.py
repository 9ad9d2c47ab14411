"""Seeded data partitioning: IID, Dirichlet-by-label and pathological (k labels per node).

A **test aid**: real sites hold their own data and never partition a shared set.
Examples, tests and the local runner use these splits to imitate sites whose data
differ (non-IID). Every function returns one array of sample indices per partition;
the partitions are disjoint, sorted, and together cover every sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["dirichlet_partition", "iid_partition", "pathological_partition"]

Indices = npt.NDArray[np.int64]


def _check_partitions(num_partitions: int, num_samples: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_samples < num_partitions:
        raise ValueError(f"cannot split {num_samples} samples into {num_partitions} partitions")


def iid_partition(num_samples: int, num_partitions: int, *, seed: int) -> list[Indices]:
    """Shuffle the samples and deal them into ``num_partitions`` near-equal parts."""
    _check_partitions(num_partitions, num_samples)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partition(
    labels: npt.ArrayLike,
    num_partitions: int,
    *,
    alpha: float,
    seed: int,
    min_partition_size: int = 1,
    max_attempts: int = 100,
) -> list[Indices]:
    """Split each label's samples across partitions in Dirichlet(``alpha``) proportions.

    Small ``alpha`` (e.g. 0.1) gives very skewed label mixes; large (e.g. 100) is close
    to IID. Draws again until every partition has ``min_partition_size`` samples.

    Raises:
        ValueError: invalid arguments, or no draw in ``max_attempts`` met the minimum.
    """
    y = np.asarray(labels)
    _check_partitions(num_partitions, len(y))
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_attempts):
        parts: list[list[Any]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(y == cls))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in result) >= min_partition_size:
            return result
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave every partition {min_partition_size} samples "
        f"in {max_attempts} attempts; raise alpha or lower min_partition_size"
    )


def pathological_partition(
    labels: npt.ArrayLike, num_partitions: int, *, labels_per_partition: int, seed: int
) -> list[Indices]:
    """Give each partition ``labels_per_partition`` labels (McMahan et al. 2017's shards).

    Labels are assigned round-robin over a seeded label order, so every label is used
    when ``num_partitions * labels_per_partition >= number of labels``; each label's
    samples are dealt evenly among the partitions that hold it.

    Raises:
        ValueError: invalid arguments, or some label would be held by no partition.
    """
    y = np.asarray(labels)
    _check_partitions(num_partitions, len(y))
    classes = np.unique(y)
    if not 1 <= labels_per_partition <= len(classes):
        raise ValueError(
            f"labels_per_partition must be in 1..{len(classes)}, got {labels_per_partition}"
        )
    if num_partitions * labels_per_partition < len(classes):
        raise ValueError(
            f"{num_partitions} partitions x {labels_per_partition} labels cannot cover "
            f"{len(classes)} labels"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    holders: dict[Any, list[int]] = {cls: [] for cls in classes}
    for p in range(num_partitions):
        for j in range(labels_per_partition):
            holders[order[(p * labels_per_partition + j) % len(order)]].append(p)
    parts: list[list[Any]] = [[] for _ in range(num_partitions)]
    for cls, owners in holders.items():
        members = rng.permutation(np.flatnonzero(y == cls))
        for owner, chunk in zip(owners, np.array_split(members, len(owners)), strict=True):
            parts[owner].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]

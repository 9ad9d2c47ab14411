"""Byzantine-robust aggregation rules, as pure numpy functions on individual updates.

- coordinate-wise median and trimmed mean: Yin et al. 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates" (ICML);
- Krum and Multi-Krum: Blanchard et al. 2017, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent" (NeurIPS);
- Bulyan: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning
  in Byzantium" (ICML).

Inputs are stacks ``(n, *shape)`` of the n sites' values for one array, or an
``(n, n)`` matrix of squared L2 distances between whole updates. Everything is
computed in float64; callers cast back. These rules need every individual update:
memory is O(n x model) by nature, and none of them can run under secure aggregation.
The strategies that use them (and validate the replies first) are in
:mod:`appliance.strategy.robust`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "bulyan_coordinates",
    "bulyan_select",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "pairwise_squared_distances",
    "trimmed_count",
    "trimmed_mean",
]

Float64Array = npt.NDArray[np.float64]
_ROUNDING_SLACK = 1e-9


def coordinate_median(stack: npt.NDArray[Any]) -> Float64Array:
    """The median of each coordinate over the n stacked values (axis 0)."""
    return np.median(np.asarray(stack, dtype=np.float64), axis=0)


def trimmed_count(n: int, beta: float) -> int:
    """How many values a ``beta``-trimmed mean drops from *each* side: ``floor(beta * n)``."""
    return math.floor(beta * n + _ROUNDING_SLACK)


def trimmed_mean(stack: npt.NDArray[Any], beta: float) -> Float64Array:
    """The coordinate-wise ``beta``-trimmed mean (drop the ``floor(beta n)`` lowest and highest).

    Raises:
        ValueError: ``beta`` is outside [0, 0.5).
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    values = np.sort(np.asarray(stack, dtype=np.float64), axis=0)
    n = values.shape[0]
    k = trimmed_count(n, beta)
    mean: Float64Array = np.mean(values[k : n - k], axis=0)
    return mean


def pairwise_squared_distances(updates: Sequence[Sequence[npt.NDArray[Any]]]) -> Float64Array:
    """Squared L2 distances between whole updates: ``D[i, j] = sum_arrays ||u_i - u_j||^2``.

    Args:
        updates: ``updates[i]`` is site i's arrays, in the same order for every site.
    """
    n = len(updates)
    distances = np.zeros((n, n), dtype=np.float64)
    if n == 0:
        return distances
    for index in range(len(updates[0])):
        stack = np.stack([np.asarray(u[index], dtype=np.float64).ravel() for u in updates])
        for i in range(n - 1):
            diff = stack[i + 1 :] - stack[i]
            distances[i, i + 1 :] += np.einsum("ij,ij->i", diff, diff)
    return distances + distances.T


def krum_scores(
    distances: Float64Array, num_malicious: int, *, num_closest: int | None = None
) -> Float64Array:
    """Krum's score of each update: the sum of its ``n - f - 2`` smallest squared distances.

    Args:
        distances: ``(n, n)`` squared distances.
        num_malicious: ``f``.
        num_closest: neighbours per score (default ``n - f - 2``; Bulyan's iterations
            pass ``max(n - f - 2, 1)`` as the candidate set shrinks).

    Raises:
        ValueError: fewer than one neighbour would be scored while others exist.
    """
    n = distances.shape[0]
    k = n - num_malicious - 2 if num_closest is None else num_closest
    k = min(k, n - 1)
    if n > 1 and k < 1:
        raise ValueError(f"Krum scores {k} neighbours with n={n}, f={num_malicious}")
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    others = np.where(np.eye(n, dtype=bool), np.inf, distances)
    scores: Float64Array = np.sort(others, axis=1)[:, :k].sum(axis=1)
    return scores


def krum_select(distances: Float64Array, num_malicious: int, num_selected: int = 1) -> list[int]:
    """The indices of the ``m`` updates with the lowest Krum scores, best first (Multi-Krum).

    Ties go to the lower index. ``num_selected=1`` is Krum.

    Raises:
        ValueError: ``n <= 2f + 2`` (Krum's guarantee needs ``n > 2f + 2``), or
            ``num_selected`` is not in ``1..n``.
    """
    n = distances.shape[0]
    if n <= 2 * num_malicious + 2:
        raise ValueError(f"Krum needs n > 2f + 2 = {2 * num_malicious + 2}, got n={n}")
    if not 1 <= num_selected <= n:
        raise ValueError(f"num_selected must be in 1..{n}, got {num_selected}")
    scores = krum_scores(distances, num_malicious)
    return [int(i) for i in np.argsort(scores, kind="stable")[:num_selected]]


def bulyan_select(distances: Float64Array, num_malicious: int) -> list[int]:
    """Bulyan's selection: apply Krum repeatedly, removing each winner, ``n - 2f`` times.

    Raises:
        ValueError: ``n < 4f + 3`` (Bulyan's requirement).
    """
    n = distances.shape[0]
    if n < 4 * num_malicious + 3:
        raise ValueError(f"Bulyan needs n >= 4f + 3 = {4 * num_malicious + 3}, got n={n}")
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < n - 2 * num_malicious:
        sub = distances[np.ix_(remaining, remaining)]
        closest = max(len(remaining) - num_malicious - 2, 1)
        scores = krum_scores(sub, num_malicious, num_closest=closest)
        winner = remaining[int(np.argmin(scores))]
        selected.append(winner)
        remaining.remove(winner)
    return selected


def bulyan_coordinates(stack: npt.NDArray[Any], num_malicious: int) -> Float64Array:
    """Bulyan's second step on the ``theta = n - 2f`` selected values of each coordinate.

    Averages, per coordinate, the ``beta = theta - 2f`` values closest to the median.

    Raises:
        ValueError: fewer than ``2f + 1`` values are stacked.
    """
    values = np.asarray(stack, dtype=np.float64)
    beta = values.shape[0] - 2 * num_malicious
    if beta < 1:
        raise ValueError(f"Bulyan averages theta - 2f = {beta} values; needs at least 1")
    median = np.median(values, axis=0)
    order = np.argsort(np.abs(values - median), axis=0, kind="stable")[:beta]
    mean: Float64Array = np.mean(np.take_along_axis(values, order, axis=0), axis=0)
    return mean

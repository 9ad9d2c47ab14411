"""Data and model of the hospital example: numpy logistic regression.

The breast-cancer data set ships with scikit-learn (no download). A seeded,
stratified 20% is held out as the public test set the server evaluates on; the rest
is split across the hospitals by diagnosis with a Dirichlet draw, so each hospital
sees a different mix of benign and malignant cases (non-IID), as real sites do.

Features are scaled with fixed per-feature ranges of the public data set (published
constants, like image-normalization means): every hospital applies the same
transform without sharing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from appliance.partition import dirichlet_partition

Array = np.ndarray


@dataclass(frozen=True)
class Split:
    x: Array
    y: Array


@cache
def _dataset(seed: int, test_fraction: float) -> tuple[Split, Split]:
    data = load_breast_cancer()
    x = data.data.astype(np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    x = (x - low) / (high - low)
    y = data.target.astype(np.float64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Split(x_train, y_train), Split(x_test, y_test)


def load_test_set(seed: int, test_fraction: float) -> Split:
    """The held-out public test set."""
    return _dataset(seed, test_fraction)[1]


def load_pooled_training_set(seed: int, test_fraction: float) -> Split:
    """All hospitals' training data pooled: only for the central baseline comparison."""
    return _dataset(seed, test_fraction)[0]


def load_hospital_data(
    partition_id: int, num_partitions: int, *, alpha: float, seed: int, test_fraction: float
) -> tuple[Split, Split]:
    """One hospital's own records, split 80/20 into local training and validation."""
    pool = _dataset(seed, test_fraction)[0]
    parts = dirichlet_partition(
        pool.y, num_partitions, alpha=alpha, seed=seed, min_partition_size=20
    )
    idx = np.random.default_rng(seed + partition_id).permutation(parts[partition_id])
    cut = int(0.8 * len(idx))
    return Split(pool.x[idx[:cut]], pool.y[idx[:cut]]), Split(pool.x[idx[cut:]], pool.y[idx[cut:]])


def initial_parameters(num_features: int = 30) -> list[Array]:
    """Weights and bias, all zero."""
    return [np.zeros(num_features, dtype=np.float32), np.zeros(1, dtype=np.float32)]


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def evaluate(params: list[Array], data: Split) -> tuple[float, float]:
    """Binary cross-entropy and accuracy of ``params`` on ``data``."""
    w, b = (p.astype(np.float64) for p in params)
    p = _sigmoid(data.x @ w + b[0])
    eps = 1e-12
    loss = -np.mean(data.y * np.log(p + eps) + (1 - data.y) * np.log(1 - p + eps))
    accuracy = np.mean((p >= 0.5) == (data.y == 1))
    return float(loss), float(accuracy)


def train(
    params: list[Array],
    data: Split,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> tuple[list[Array], float]:
    """Mini-batch gradient descent; returns new parameters and the final training loss.

    With ``proximal_mu > 0`` (FedProx, Li et al. 2020) the loss gains
    ``(mu / 2) * ||params - start||^2``, so the gradient gains ``mu * (params - start)``.
    """
    w, b = (p.astype(np.float64) for p in params)
    w_start, b_start = w.copy(), b.copy()
    rng = np.random.default_rng(seed)
    n = len(data.y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            x, y = data.x[batch], data.y[batch]
            error = _sigmoid(x @ w + b[0]) - y
            w -= learning_rate * ((x.T @ error) / len(batch) + proximal_mu * (w - w_start))
            b -= learning_rate * (error.mean() + proximal_mu * (b - b_start))
    new = [w.astype(np.float32), b.astype(np.float32)]
    return new, evaluate(new, data)[0]


def central_baseline(
    *, epochs: int, learning_rate: float, batch_size: int, seed: int, test_fraction: float
) -> float:
    """Accuracy on the public test set of the same model trained on the pooled data."""
    pooled = load_pooled_training_set(seed, test_fraction)
    params, _ = train(
        initial_parameters(),
        pooled,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    return evaluate(params, load_test_set(seed, test_fraction))[1]

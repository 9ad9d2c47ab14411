"""WARNING: unclipped noise samplers. They add exactly what they are told to add.

The caller (``dp.mechanisms`` / ``dp.distributed``) is responsible for clipping and
for deriving the scale from the sensitivity. Every sampler takes its generator as an
argument: no global RNG is used anywhere in ``dp``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["add_gaussian_inplace", "skellam"]


def add_gaussian_inplace(
    target: npt.NDArray[np.floating[Any]], std: float, rng: np.random.Generator
) -> None:
    """Add N(0, std^2) noise to every element of the float array ``target``, in place.

    Noise is drawn in float64 in chunks of at most 2^20 values, so the temporary
    memory stays bounded whatever the array's size.
    """
    flat = target.reshape(-1)
    chunk = 1 << 20
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        noise = rng.standard_normal(part.size)
        noise *= std
        part += noise.astype(part.dtype, copy=False)


def skellam(size: int, variance: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``size`` symmetric Skellam variates with the given variance.

    A symmetric Skellam variable is ``Poisson(variance / 2) - Poisson(variance / 2)``:
    integer valued, mean 0, variance ``variance``, and closed under summation (the
    sum of independent ones is Skellam with the summed variance).
    """
    if variance == 0:
        return np.zeros(size, dtype=np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)

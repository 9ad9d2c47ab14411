"""Gaussian mechanisms on clipped updates: central (DP-FedAvg), adaptive clipping, local DP.

Pure: no I/O, no clock; every function that draws noise takes the generator.

* :class:`ClippedSum` -- the central mechanism of DP-FedAvg (McMahan, Ramage,
  Talwar, Zhang 2018, "Learning Differentially Private Recurrent Language Models").
  Updates are clipped to L2 norm ``C`` as they arrive and summed in float64 (memory
  O(model) whatever the number of sites); :meth:`ClippedSum.noised_mean` adds
  N(0, (z C)^2) to each coordinate of the sum -- one site changes the sum by at most
  ``C`` -- and divides by the number of sites ``m``, i.e. noise std ``z C / m`` on the
  mean.
* Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially
  Private Learning with Adaptive Clipping"): the fraction of updates inside the
  current norm is released with Gaussian noise (std ``sigma_b`` on the count) and the
  norm moves geometrically towards the target quantile. Releasing the count costs
  privacy; :func:`split_noise_multiplier` gives the update noise multiplier ``z_Δ`` so
  that both releases together equal one Gaussian mechanism of multiplier ``z``
  (their Theorem 1: ``z = (z_Δ^-2 + (2 sigma_b)^-2)^-1/2``).
* Local DP: :func:`local_dp_noise_std` calibrates the Gaussian with the *analytic*
  Gaussian mechanism (Balle & Wang 2018, "Improving the Gaussian Mechanism for
  Differential Privacy: Analytical Calibration and Optimal Denoising"), not the
  classical ``sqrt(2 ln(1.25/δ)) Δ / ε`` bound, which is looser and only valid for
  ε < 1. The sensitivity is derived from the clipping norm: any two updates in the
  ball of radius ``C`` differ by at most ``2C``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from dp_accounting import get_sigma_gaussian

from dp.accounting import check_noise_multiplier
from dp.clipping import check_clipping_norm, l2_norm
from dp.errors import InvalidPrivacyParameter, InvalidUpdateError
from dp.primitives.noise import add_gaussian_inplace
from dp.spend import check_delta, check_epsilon

__all__ = [
    "ClippedSum",
    "adapt_clipping_norm",
    "local_dp_noise_std",
    "local_dp_release",
    "noised_count",
    "split_noise_multiplier",
]

F64 = npt.NDArray[np.float64]
_MARGIN = 1e-9


class ClippedSum:
    """A running sum of updates, each clipped to L2 norm ``clipping_norm`` as it is added.

    Args:
        shapes: the shapes of the update's arrays, in order.
        clipping_norm: ``C``, finite and > 0.

    Raises:
        InvalidPrivacyParameter: ``clipping_norm`` is not finite and > 0.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], clipping_norm: float) -> None:
        self.clipping_norm = check_clipping_norm(clipping_norm)
        self._shapes = [tuple(s) for s in shapes]
        self._sums = [np.zeros(s, dtype=np.float64) for s in self._shapes]
        self.count = 0
        #: How many added updates were already inside the ball (not scaled).
        self.within = 0

    def add(self, deltas: Sequence[npt.NDArray[Any]]) -> bool:
        """Clip ``deltas`` (one site's update) and add it to the sum.

        Returns:
            True if the update was inside the ball (not scaled down).

        Raises:
            InvalidUpdateError: wrong number of arrays or shapes, NaN/infinite values;
                the sum is left untouched.
        """
        if len(deltas) != len(self._shapes):
            raise InvalidUpdateError(
                f"update has {len(deltas)} arrays, expected {len(self._shapes)}"
            )
        for i, (delta, shape) in enumerate(zip(deltas, self._shapes, strict=True)):
            if delta.shape != shape:
                raise InvalidUpdateError(f"array {i} has shape {delta.shape}, expected {shape}")
        norm = l2_norm(deltas)
        if not math.isfinite(norm):
            raise InvalidUpdateError("update holds NaN or infinite values")
        inside = norm <= self.clipping_norm
        factor = 1.0 if inside else self.clipping_norm / norm * (1.0 - _MARGIN)
        for total, delta in zip(self._sums, deltas, strict=True):
            # In place: one float64 temporary of one array's size at most.
            total += np.multiply(delta, factor, dtype=np.float64)
        self.count += 1
        self.within += int(inside)
        return inside

    def noised_mean(self, noise_multiplier: float, rng: np.random.Generator) -> list[F64]:
        """Release ``(sum + N(0, (z C)^2 I)) / count``; the sum is consumed (noised in place).

        Raises:
            InvalidPrivacyParameter: ``noise_multiplier`` is not finite and > 0, or no
                update was added.
        """
        z = check_noise_multiplier(noise_multiplier)
        if self.count == 0:
            raise InvalidPrivacyParameter("no update was added: nothing to release")
        std = z * self.clipping_norm
        out = self._sums
        self._sums = []
        for total in out:
            add_gaussian_inplace(total, std, rng)
            total /= self.count
        return out

    @property
    def noise_std_of_mean(self) -> float:
        """Standard deviation per coordinate of the noise on the mean, per unit z: ``C / m``."""
        return self.clipping_norm / max(self.count, 1)


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The update noise multiplier ``z_Δ`` when the clipped count is released with std ``sigma_b``.

    Andrew et al. 2021, Theorem 1: the two releases together are as private as one
    Gaussian mechanism with ``z = (z_Δ^-2 + (2 sigma_b)^-2)^-1/2``; solved for ``z_Δ``.

    Raises:
        InvalidPrivacyParameter: ``2 sigma_b <= z`` (the count alone would spend the whole budget).
    """
    z = check_noise_multiplier(noise_multiplier)
    sigma_b = check_noise_multiplier(count_stddev, "clipped_count_stddev")
    if 2 * sigma_b <= z:
        raise InvalidPrivacyParameter(
            f"clipped_count_stddev {sigma_b:g} is too small for noise multiplier {z:g}: "
            f"it must exceed z / 2 = {z / 2:g} (Andrew et al. 2021, Theorem 1)"
        )
    return float((z**-2 - (2 * sigma_b) ** -2) ** -0.5)


def noised_count(count: int, stddev: float, rng: np.random.Generator) -> float:
    """``count + N(0, stddev^2)``: the Gaussian mechanism on a sum of 0/1 bits."""
    return float(count) + float(rng.normal(0.0, stddev))


def adapt_clipping_norm(
    clipping_norm: float,
    *,
    noisy_within: float,
    count: int,
    target_quantile: float,
    learning_rate: float,
) -> float:
    """The next clipping norm: ``C exp(-eta (b - gamma))`` with ``b`` the noisy fraction inside.

    Geometric update of Andrew et al. 2021 (Sec. 2.2): when more than the target
    quantile of updates fit inside ``C``, the norm shrinks; when fewer, it grows.

    Raises:
        InvalidPrivacyParameter: a parameter is out of range.
    """
    c = check_clipping_norm(clipping_norm)
    if count < 1:
        raise InvalidPrivacyParameter(f"count must be >= 1, got {count}")
    if not 0 <= target_quantile <= 1:
        raise InvalidPrivacyParameter(f"target_quantile must be in [0, 1], got {target_quantile}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidPrivacyParameter(f"learning_rate must be finite and > 0, got {learning_rate}")
    fraction = noisy_within / count
    return c * math.exp(-learning_rate * (fraction - target_quantile))


def local_dp_noise_std(*, clipping_norm: float, epsilon: float, delta: float) -> float:
    """Noise std that makes one clipped update (epsilon, delta)-DP on its own (local DP).

    Sensitivity ``2C`` (any two updates in the ball of radius ``C``); calibration by the
    analytic Gaussian mechanism (Balle & Wang 2018) through dp-accounting.

    Raises:
        InvalidPrivacyParameter: ``epsilon`` not > 0, ``delta`` not in (0, 1), or a bad norm.
    """
    c = check_clipping_norm(clipping_norm)
    eps = check_epsilon(epsilon)
    if eps == 0:
        raise InvalidPrivacyParameter("epsilon must be > 0 for local DP")
    d = check_delta(delta, allow_zero=False)
    return 2 * c * float(get_sigma_gaussian(eps, d))


def local_dp_release(
    deltas: Sequence[F64],
    *,
    clipping_norm: float,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
) -> float:
    """Add local-DP Gaussian noise to an already clipped update, in place.

    Args:
        deltas: the update (float64 arrays) whose joint L2 norm is ``<= clipping_norm``.
        clipping_norm: ``C``; the sensitivity is ``2C``.
        epsilon: per-release epsilon, > 0.
        delta: per-release delta, in (0, 1).
        rng: where the noise comes from.

    Returns:
        The noise standard deviation used.

    Raises:
        InvalidUpdateError: the update is outside the ball (it was not clipped).
        InvalidPrivacyParameter: a parameter is out of range.
    """
    std = local_dp_noise_std(clipping_norm=clipping_norm, epsilon=epsilon, delta=delta)
    norm = l2_norm(deltas)
    if not norm <= clipping_norm:
        raise InvalidUpdateError(
            f"update norm {norm:.6g} exceeds the clipping norm {clipping_norm:.6g}: clip first"
        )
    for array in deltas:
        add_gaussian_inplace(array, std, rng)
    return std

"""Distributed DP under secure aggregation: Skellam noise shares in the integer domain.

Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private
Federated Learning" (with the quantization of Kairouz, Liu, Steinke 2021, "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation"). Pure functions a SecAgg+ client calls on its update before masking,
and the server after unmasking; this module knows nothing about masks or transport.

Per site, per round:

1. :func:`quantize` -- clip the update to L2 norm ``C``, scale by ``gamma``, and round
   to integers with *conditional* randomized rounding: resample until the integer
   vector's L2 norm is at most ``Δ2`` (:attr:`SkellamPlan.l2_sensitivity`), so the
   sensitivity the accountant uses holds with certainty.
2. :func:`add_noise_share` -- add Skellam noise of variance ``share_variance``.
   Skellam is closed under summation: the sum of ``s`` shares is exactly Skellam
   with variance ``s * share_variance``. No single party ever sees a non-noised sum.
3. SecAgg+ sums the vectors modulo ``2**modulus_bits``; :func:`from_modular` lifts
   the sum back to centred integers and :func:`dequantize` to model units.

Dropouts: shares are sized for ``min_surviving_sites`` (the SecAgg+ threshold), so
the target noise is reached as long as SecAgg+ can unmask at all; more survivors
only add noise. :func:`skellam_spend` accounts each round with the *actual* number
of surviving shares (fewer shares, less noise, larger epsilon), composing the RDP
bound of Agarwal et al. (Corollary 3.6) over rounds without sampling amplification.

Modulus: the centred sum must fit in ``[-2**(b-1), 2**(b-1))``. Each coordinate of
one site's vector is at most ``ceil(gamma C)`` in absolute value (no random rotation
is applied, so one coordinate may carry the whole norm), hence
:func:`required_modulus_bits`. Wrap-around never weakens privacy (it is
post-processing of a noised sum) but destroys the model; see ``docs/dp.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from dp.accounting import check_count, check_noise_multiplier
from dp.clipping import check_clipping_norm, clip_arrays
from dp.errors import AccountingError, InvalidPrivacyParameter, InvalidUpdateError
from dp.primitives.noise import skellam
from dp.primitives.rounding import stochastic_round
from dp.spend import PrivacySpend, PrivacyUnit, check_delta

__all__ = [
    "SkellamPlan",
    "add_noise_share",
    "dequantize",
    "from_modular",
    "planned_skellam_spend",
    "quantize",
    "required_modulus_bits",
    "skellam_rdp",
    "skellam_spend",
    "to_modular",
]

I64 = npt.NDArray[np.int64]
#: Integer RDP orders (the Skellam bound is stated for integer alpha > 1).
RDP_ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 192, 256, 384, 512, 1024)
_MAX_ROUNDING_TRIES = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class SkellamPlan:
    """The parameters of distributed Skellam DP for one run.

    Attributes:
        clipping_norm: ``C``, L2 bound on a site's update in model units.
        scale: ``gamma``, integer units per model unit (quantization resolution).
        dimension: ``d``, number of values in the update.
        noise_multiplier: ``z``: the summed noise has std ``z * Δ2`` (integer units).
        expected_sites: sites asked to contribute in each round.
        min_surviving_sites: shares are sized so this many reach the target noise.
        beta: failure probability of the unconditional rounding bound
            (Kairouz et al. 2021, Eq. 7); conditional rounding makes it a certainty.
        modulus_bits: SecAgg+ sums modulo ``2**modulus_bits``.
    """

    clipping_norm: float
    scale: float
    dimension: int
    noise_multiplier: float
    expected_sites: int
    min_surviving_sites: int
    beta: float = math.exp(-0.5)
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        check_clipping_norm(self.clipping_norm)
        check_clipping_norm(self.scale, "scale")
        check_count(self.dimension, "dimension", minimum=1)
        check_noise_multiplier(self.noise_multiplier)
        check_count(self.expected_sites, "expected_sites", minimum=1)
        check_count(self.min_surviving_sites, "min_surviving_sites", minimum=1)
        if self.min_surviving_sites > self.expected_sites:
            raise InvalidPrivacyParameter(
                f"min_surviving_sites {self.min_surviving_sites} exceeds expected_sites "
                f"{self.expected_sites}"
            )
        if not 0 < self.beta < 1:
            raise InvalidPrivacyParameter(f"beta must be in (0, 1), got {self.beta}")
        check_count(self.modulus_bits, "modulus_bits", minimum=2)
        if self.modulus_bits > 62:
            raise InvalidPrivacyParameter("modulus_bits must be <= 62 (int64 arithmetic)")

    @property
    def l2_sensitivity(self) -> float:
        """``Δ2``: bound on the L2 norm of one site's rounded integer vector.

        ``min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)`` under
        the square root, with ``c = gamma C`` (Kairouz, Liu, Steinke 2021, Sec. 4.1).
        """
        c, d = self.scale * self.clipping_norm, float(self.dimension)
        likely = c * c + d / 4 + math.sqrt(2 * math.log(1 / self.beta)) * (c + math.sqrt(d) / 2)
        return math.sqrt(min(likely, (c + math.sqrt(d)) ** 2))

    @property
    def l1_sensitivity(self) -> float:
        """``Δ1 = min(Δ2^2, sqrt(d) Δ2)``: an integer vector's L1 norm is at most its squared L2."""
        l2 = self.l2_sensitivity
        return min(l2 * l2, math.sqrt(self.dimension) * l2)

    @property
    def target_variance(self) -> float:
        """Variance per coordinate of the summed noise when ``min_surviving_sites`` survive."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2

    @property
    def share_variance(self) -> float:
        """Variance per coordinate of one site's Skellam share."""
        return self.target_variance / self.min_surviving_sites

    def surviving_variance(self, surviving: int) -> float:
        """Variance per coordinate of the summed noise when ``surviving`` shares arrive."""
        return self.share_variance * check_count(surviving, "surviving", minimum=0)


def quantize(
    arrays: Sequence[npt.NDArray[Any]], plan: SkellamPlan, rng: np.random.Generator
) -> I64:
    """Clip, scale and conditionally round one site's update into an int64 vector.

    Returns:
        The flattened integer vector; its L2 norm is ``<= plan.l2_sensitivity``.

    Raises:
        InvalidUpdateError: the arrays do not hold ``plan.dimension`` finite float
            values, or rounding kept exceeding the bound (practically impossible).
    """
    total = sum(a.size for a in arrays)
    if total != plan.dimension:
        raise InvalidUpdateError(f"update has {total} values, the plan expects {plan.dimension}")
    clipped = clip_arrays(list(arrays), plan.clipping_norm).arrays
    scaled = np.concatenate([a.astype(np.float64).reshape(-1) for a in clipped]) * plan.scale
    bound_sq = plan.l2_sensitivity**2
    for _ in range(_MAX_ROUNDING_TRIES):
        rounded = stochastic_round(scaled, rng)
        if float(np.dot(rounded, rounded)) <= bound_sq:
            return rounded
    raise InvalidUpdateError(
        f"randomized rounding exceeded the norm bound {_MAX_ROUNDING_TRIES} times"
    )


def add_noise_share(quantized: I64, plan: SkellamPlan, rng: np.random.Generator) -> I64:
    """``quantized`` plus this site's Skellam noise share (variance ``plan.share_variance``).

    Raises:
        InvalidUpdateError: the vector is not int64 of length ``plan.dimension``.
    """
    if quantized.dtype != np.int64 or quantized.shape != (plan.dimension,):
        raise InvalidUpdateError(
            f"expected an int64 vector of length {plan.dimension}, got "
            f"{quantized.dtype.name}{list(quantized.shape)}"
        )
    return quantized + skellam(plan.dimension, plan.share_variance, rng)


def to_modular(vector: I64, bits: int) -> npt.NDArray[np.uint64]:
    """Map centred integers into ``Z_{2**bits}`` (what SecAgg+ masks and sums)."""
    return (vector.astype(np.uint64)) & np.uint64((1 << bits) - 1)


def from_modular(vector: npt.NDArray[np.unsignedinteger[Any]], bits: int) -> I64:
    """Lift a sum modulo ``2**bits`` back to centred integers in ``[-2**(bits-1), 2**(bits-1))``."""
    values = vector.astype(np.int64) & ((1 << bits) - 1)
    half = 1 << (bits - 1)
    return np.where(values >= half, values - (1 << bits), values)


def dequantize(total: I64, plan: SkellamPlan, count: int) -> npt.NDArray[np.float64]:
    """The noised mean update in model units: ``total / (gamma * count)``.

    Raises:
        InvalidPrivacyParameter: ``count`` < 1.
    """
    check_count(count, "count", minimum=1)
    return total.astype(np.float64) / (plan.scale * count)


def required_modulus_bits(
    plan: SkellamPlan, *, sites: int | None = None, tail_sigmas: float = 8.0
) -> int:
    """Bits for a modulus under which the centred noisy sum cannot wrap around.

    Per coordinate: ``sites * ceil(gamma C)`` (worst case without rotation) plus
    ``tail_sigmas`` standard deviations of the summed noise, both signs.
    """
    n = plan.expected_sites if sites is None else check_count(sites, "sites", minimum=1)
    signal = n * math.ceil(plan.scale * plan.clipping_norm)
    noise = tail_sigmas * math.sqrt(plan.surviving_variance(n))
    return math.ceil(math.log2(2 * (signal + noise) + 1))


def skellam_rdp(order: int, *, l1: float, l2: float, variance: float) -> float:
    """RDP at integer ``order`` of one Skellam release (Agarwal et al. 2021, Cor. 3.6).

    ``order Δ2^2 / (2 mu) + min(((2 order - 1) Δ2^2 + 6 Δ1) / (4 mu^2), 3 Δ1 / (2 mu))``,
    with ``mu`` the variance of the summed noise and sensitivities in integer units.
    """
    if variance <= 0:
        return math.inf
    a, mu = float(order), variance
    return a * l2 * l2 / (2 * mu) + min(
        ((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu)
    )


def skellam_spend(
    plan: SkellamPlan, surviving_per_round: Sequence[int], *, delta: float
) -> PrivacySpend:
    """Site-level (epsilon, delta) of the rounds so far, given each round's surviving shares.

    Raises:
        InvalidPrivacyParameter: ``delta`` not in (0, 1) or a negative count.
        AccountingError: a round had no surviving share (no noise: unbounded epsilon).
    """
    d = check_delta(delta, allow_zero=False)
    if not surviving_per_round:
        return PrivacySpend(epsilon=0.0, delta=0.0, unit=PrivacyUnit.SITE)
    l1, l2 = plan.l1_sensitivity, plan.l2_sensitivity
    variances = [plan.surviving_variance(s) for s in surviving_per_round]
    if min(variances) <= 0:
        raise AccountingError(
            "a round released a sum without any noise share: epsilon is unbounded"
        )
    rdp = [sum(skellam_rdp(a, l1=l1, l2=l2, variance=v) for v in variances) for a in RDP_ORDERS]
    eps, _ = compute_epsilon(RDP_ORDERS, rdp, d)
    return PrivacySpend(epsilon=float(eps), delta=d, unit=PrivacyUnit.SITE)


def planned_skellam_spend(
    *, noise_multiplier: float, scaled_clipping_norm: float, rounds: int, delta: float
) -> PrivacySpend:
    """A site-level (epsilon, delta) bound for ``rounds`` Skellam rounds, whatever the
    model's dimension and however many shares beyond the planned minimum survive.

    With summed noise of variance ``(z Δ2)^2`` (shares sized for the minimum
    survivors, so at least that much noise is always present), Corollary 3.6 of
    Agarwal et al. reads ``alpha / (2 z^2) + min(((2 alpha - 1) Δ2^2 + 6 Δ1) /
    (4 z^4 Δ2^4), 3 Δ1 / (2 z^2 Δ2^2))``. It grows with ``Δ1 <= Δ2^2`` and shrinks
    as ``Δ2`` grows, and ``Δ2 >= gamma C`` (``scaled_clipping_norm``) at any
    dimension, so evaluating it with ``Δ2 = gamma C`` and ``Δ1 = Δ2^2`` bounds every
    actual round from above. This is what a run's plan reports before the model's
    size or the round's survivors are known; :func:`skellam_spend` is the exact
    figure for known survivors.

    Raises:
        InvalidPrivacyParameter: a parameter out of range.
        AccountingError: the bound is infinite.
    """
    z = check_noise_multiplier(noise_multiplier)
    scaled = check_clipping_norm(scaled_clipping_norm, "scaled clipping norm")
    count = check_count(rounds, "rounds", minimum=0)
    d = check_delta(delta, allow_zero=False)
    if count == 0:
        return PrivacySpend(epsilon=0.0, delta=d, unit=PrivacyUnit.SITE)
    variance = (z * scaled) ** 2
    rdp = [
        count * skellam_rdp(a, l1=scaled * scaled, l2=scaled, variance=variance) for a in RDP_ORDERS
    ]
    eps, _ = compute_epsilon(RDP_ORDERS, rdp, d)
    if not math.isfinite(eps):
        raise AccountingError(f"epsilon is unbounded for noise multiplier {z}")
    return PrivacySpend(epsilon=float(eps), delta=d, unit=PrivacyUnit.SITE)

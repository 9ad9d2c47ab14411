"""Privacy accounting on Google's ``dp-accounting`` (RDP and PLD).

Pure functions: no I/O, no randomness. Each DP round of federated training is a
Gaussian mechanism on the sum of clipped site updates (noise multiplier ``z`` =
noise std / clipping norm), applied to a cohort of sites:

* Poisson sampling (each site joins a round independently with probability ``q``;
  ``q = 1`` means every site, every round) under add/remove-one-site adjacency,
  which also covers zero-out adjacency (a site's update replaced by zeros). Both
  accountants are available: ``"rdp"`` (Mironov 2017; Mironov, Talwar, Zhang 2019
  for the sampled Gaussian; conversion to (ε, δ) by Canonne, Kamath, Steinke 2020
  Prop. 12) and ``"pld"`` (privacy loss distributions, Koskela et al. 2020;
  Doroshenko et al. 2022), which is tighter.
* Fixed-size cohorts (``m`` of ``n`` sites drawn without replacement) under
  replace-one-site adjacency (Wang, Balle, Kasiviswanathan 2019), RDP only. Replacing
  a site's update moves the clipped sum by up to ``2C``, so the Gaussian's effective
  noise multiplier is ``z / 2``.

Sampling amplification is only valid when the cohort is drawn with secret
randomness; :mod:`dp.strategy` does that itself when given a ``sampling_rate`` and
otherwise accounts ``q = 1``.

Reference values (tested): z = 1.0, q = 0.1, T = 100, δ = 1e-5 gives ε ≈ 7.90 (RDP)
and ε ≈ 7.05 (PLD).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

from dp.errors import AccountingError, InvalidPrivacyParameter
from dp.spend import PrivacySpend, PrivacyUnit, check_delta, check_epsilon

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "RoundEvent",
    "RunAccountant",
    "epsilon",
    "epsilon_fixed_cohort",
    "gaussian_event",
    "noise_multiplier_for",
    "planned_spend",
]

Accountant = Literal["pld", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("pld", "rdp")
#: PLD discretization of the privacy-loss values (dp-accounting's default).
PLD_DISCRETIZATION = 1e-4


class _DropConvergenceNoise(logging.Filter):
    """dp-accounting logs (and then skips) RDP orders whose series did not converge."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropConvergenceNoise())


def check_noise_multiplier(value: float, what: str = "noise_multiplier") -> float:
    """Return ``value`` if it is a finite number > 0, else raise InvalidPrivacyParameter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameter(f"{what} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidPrivacyParameter(f"{what} must be finite and > 0, got {value}")
    return float(value)


def check_sampling_rate(value: float) -> float:
    """Return ``value`` if it lies in (0, 1], else raise InvalidPrivacyParameter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameter(f"sampling_rate must be a number, got {type(value).__name__}")
    if not 0 < value <= 1:
        raise InvalidPrivacyParameter(f"sampling_rate must be in (0, 1], got {value}")
    return float(value)


def check_count(value: int, what: str, *, minimum: int = 0) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise InvalidPrivacyParameter."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPrivacyParameter(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidPrivacyParameter(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_accountant(accountant: str) -> Accountant:
    if accountant not in ACCOUNTANTS:
        raise InvalidPrivacyParameter(
            f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
        )
    return accountant  # type: ignore[return-value]


def _fresh(accountant: Accountant) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return rdp.RdpAccountant()
    return pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)


def gaussian_event(
    noise_multiplier: float, sampling_rate: float, rounds: int
) -> dp_accounting.DpEvent:
    """The ``DpEvent`` of ``rounds`` Poisson-sampled Gaussian rounds (validated inputs)."""
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


def _epsilon_of(
    accountant: dp_accounting.PrivacyAccountant, event: dp_accounting.DpEvent, delta: float
) -> float:
    try:
        accountant.compose(event)
        value = float(accountant.get_epsilon(delta))
    except (ValueError, OverflowError, dp_accounting.UnsupportedEventError) as exc:
        raise AccountingError(f"the accountant failed: {exc}") from exc
    if math.isnan(value):
        raise AccountingError("the accountant returned NaN")
    return value


def epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    accountant: Accountant = "pld",
) -> float:
    """Epsilon of ``rounds`` Poisson-sampled Gaussian rounds at ``delta``.

    Args:
        noise_multiplier: noise std divided by the clipping norm (L2 sensitivity), > 0.
        sampling_rate: probability that a site takes part in a round, in (0, 1].
        rounds: number of rounds, >= 0.
        delta: target delta, in (0, 1).
        accountant: ``"pld"`` (tighter) or ``"rdp"``.

    Returns:
        The epsilon (may be ``inf`` for extreme inputs). Reports should wrap it in a
        :class:`~dp.spend.PrivacySpend` with its unit (see :func:`planned_spend`).

    Raises:
        InvalidPrivacyParameter: an argument is out of range.
        AccountingError: dp-accounting could not compute a bound.
    """
    z = check_noise_multiplier(noise_multiplier)
    q = check_sampling_rate(sampling_rate)
    t = check_count(rounds, "rounds")
    d = check_delta(delta, allow_zero=False)
    kind = _check_accountant(accountant)
    if t == 0:
        return 0.0
    return _epsilon_of(_fresh(kind), gaussian_event(z, q, t), d)


def epsilon_fixed_cohort(
    *, noise_multiplier: float, cohort_size: int, num_sites: int, rounds: int, delta: float
) -> float:
    """Epsilon of ``rounds`` rounds, each on ``cohort_size`` of ``num_sites`` sites drawn
    uniformly without replacement, under replace-one-site adjacency (RDP accountant).

    The clipped sum moves by up to ``2C`` when one site's update is replaced, so the
    mechanism is accounted with noise multiplier ``noise_multiplier / 2``.

    Raises:
        InvalidPrivacyParameter: an argument is out of range (cohort larger than the
            population, non-positive noise, delta outside (0, 1), ...).
        AccountingError: dp-accounting could not compute a bound.
    """
    z = check_noise_multiplier(noise_multiplier)
    n = check_count(num_sites, "num_sites", minimum=1)
    m = check_count(cohort_size, "cohort_size", minimum=1)
    if m > n:
        raise InvalidPrivacyParameter(f"cohort_size {m} is larger than num_sites {n}")
    t = check_count(rounds, "rounds")
    d = check_delta(delta, allow_zero=False)
    if t == 0:
        return 0.0
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(n, m, gaussian), t
    )
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
    return _epsilon_of(rdp.RdpAccountant(neighboring_relation=replace_one), event, d)


def noise_multiplier_for(
    *,
    epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: int,
    accountant: Accountant = "rdp",
) -> float:
    """The smallest noise multiplier whose ``rounds`` rounds stay within (epsilon, delta).

    The result is rounded up (never below the calibrated value), so using it cannot
    exceed the target.

    Raises:
        InvalidPrivacyParameter: an argument is out of range (epsilon must be > 0,
            rounds >= 1).
        AccountingError: no noise multiplier below 2**30 reaches the target.
    """
    target = check_epsilon(epsilon)
    if target == 0:
        raise InvalidPrivacyParameter("epsilon must be > 0 to calibrate a noise multiplier")
    d = check_delta(delta, allow_zero=False)
    q = check_sampling_rate(sampling_rate)
    t = check_count(rounds, "rounds", minimum=1)
    kind = _check_accountant(accountant)
    tol = 1e-4

    def make_event(z: float) -> dp_accounting.DpEvent:
        return gaussian_event(max(z, 1e-6), q, t)

    try:
        z = dp_accounting.calibrate_dp_mechanism(
            lambda: _fresh(kind),
            make_event,
            target,
            d,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=tol,
        )
    except Exception as exc:  # dp-accounting raises several unrelated types here
        raise AccountingError(
            f"cannot calibrate a noise multiplier for ε = {target}: {exc}"
        ) from exc
    return float(z) + tol


def planned_spend(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    unit: PrivacyUnit,
    accountant: Accountant = "pld",
) -> PrivacySpend:
    """:func:`epsilon` wrapped with its delta and privacy unit (what reports should carry)."""
    eps = epsilon(
        noise_multiplier=noise_multiplier,
        sampling_rate=sampling_rate,
        rounds=rounds,
        delta=delta,
        accountant=accountant,
    )
    if not math.isfinite(eps):
        raise AccountingError(f"epsilon is unbounded for noise multiplier {noise_multiplier}")
    return PrivacySpend(epsilon=eps, delta=delta, unit=unit)


@dataclass(frozen=True, slots=True)
class RoundEvent:
    """``count`` rounds of a Poisson-sampled Gaussian with these parameters."""

    noise_multiplier: float
    sampling_rate: float
    count: int = 1


class RunAccountant:
    """The running privacy spend of one run, round by round (pure: no I/O, no clock).

    Rounds may differ (e.g. a run that changes its sampling rate); each is recorded
    as a :class:`RoundEvent` and the whole history is recomposed on :meth:`spend`.

    Args:
        delta: the delta at which epsilon is reported.
        unit: the privacy unit of the guarantee.
        accountant: ``"rdp"`` (fast, default) or ``"pld"`` (tighter).
    """

    def __init__(self, *, delta: float, unit: PrivacyUnit, accountant: Accountant = "rdp") -> None:
        self.delta = check_delta(delta, allow_zero=False)
        self.unit = unit
        self.accountant = _check_accountant(accountant)
        self._events: list[RoundEvent] = []

    @property
    def events(self) -> tuple[RoundEvent, ...]:
        """The recorded rounds, merged where consecutive rounds are identical."""
        return tuple(self._events)

    @property
    def rounds(self) -> int:
        """How many rounds were recorded."""
        return sum(e.count for e in self._events)

    def add_rounds(self, *, noise_multiplier: float, sampling_rate: float, count: int = 1) -> None:
        """Record ``count`` rounds. Raises InvalidPrivacyParameter for out-of-range values."""
        z = check_noise_multiplier(noise_multiplier)
        q = check_sampling_rate(sampling_rate)
        n = check_count(count, "count", minimum=1)
        last = self._events[-1] if self._events else None
        if last is not None and (last.noise_multiplier, last.sampling_rate) == (z, q):
            self._events[-1] = RoundEvent(z, q, last.count + n)
        else:
            self._events.append(RoundEvent(z, q, n))

    def spend(self) -> PrivacySpend:
        """The (epsilon, delta) spent by all recorded rounds, with the unit.

        Raises:
            AccountingError: dp-accounting could not compute a bound.
        """
        if not self._events:
            return PrivacySpend(epsilon=0.0, delta=0.0, unit=self.unit)
        event = dp_accounting.ComposedDpEvent(
            [gaussian_event(e.noise_multiplier, e.sampling_rate, e.count) for e in self._events]
        )
        eps = _epsilon_of(_fresh(self.accountant), event, self.delta)
        if not math.isfinite(eps):
            raise AccountingError("epsilon is unbounded")
        return PrivacySpend(epsilon=eps, delta=self.delta, unit=self.unit)

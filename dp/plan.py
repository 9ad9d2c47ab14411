"""A run's DP plan: declared by the data scientist in the run config, checked by all.

The ServerApp's DP settings are plain run-config keys, so the SuperLink and every
site read the same plan without running any app code:

=======================  ===============================================================
``dp-mode``              ``"central"`` (sites clip, the server adds Gaussian noise to
                         the sum: DP-FedAvg) or ``"dp-sgd"`` (each site trains with
                         DP-SGD); absent or ``""``: no DP (other keys are ignored)
``dp-noise-multiplier``  z, the noise std over the clipping norm (central: required)
``dp-clipping-norm``     C, the L2 norm updates are clipped to (central: required)
``dp-sampling-rate``     q, the chance that a site joins a round (default 1: all sites)
``dp-rounds``            T, rounds the plan covers (default ``num-server-rounds``)
``dp-delta``             δ at which ε is reported (default 1e-5)
``dp-accountant``        ``"rdp"`` (default) or ``"pld"``
``dp-target-epsilon``    dp-sgd: the record-level ε each site spends on the run
=======================  ===============================================================

:meth:`DPPlan.spend` is the run's planned (ε, δ) and its privacy unit: site-level for
``central`` (one site's whole contribution; accounted with Poisson sampling of sites
at rate q), record-level for ``dp-sgd`` (one record within a site).
:meth:`DPPlan.site_spend` is what a *site* books for itself: it cannot check that the
server samples sites at rate q, so it accounts each round it takes part in without
sampling amplification (q = 1) -- an upper bound it can stand behind.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from dp.accounting import Accountant, planned_spend
from dp.errors import InvalidPrivacyParameter
from dp.spend import PrivacySpend, PrivacyUnit, check_delta, check_epsilon

__all__ = ["DPPlan", "PlanMode"]

DEFAULT_DELTA = 1e-5
MAX_ROUNDS = 100_000
_KEYS = frozenset(
    {
        "dp-mode", "dp-noise-multiplier", "dp-clipping-norm", "dp-sampling-rate", "dp-rounds",
        "dp-delta", "dp-accountant", "dp-target-epsilon",
    }
)  # fmt: skip


class PlanMode(enum.StrEnum):
    """Which DP a run declares."""

    CENTRAL = "central"
    DP_SGD = "dp-sgd"

    @property
    def unit(self) -> PrivacyUnit:
        """The privacy unit of the mode's guarantee."""
        return PrivacyUnit.SITE if self is PlanMode.CENTRAL else PrivacyUnit.RECORD


def _number(config: Mapping[str, object], key: str) -> float | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameter(f"run config {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidPrivacyParameter(f"run config {key} must be finite, got {value!r}")
    return float(value)


def _required(config: Mapping[str, object], key: str, mode: PlanMode) -> float:
    value = _number(config, key)
    if value is None:
        raise InvalidPrivacyParameter(f"run config dp-mode = {mode.value!r} needs {key}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class DPPlan:
    """A run's declared DP plan (see the module docstring for the run-config keys)."""

    mode: PlanMode
    rounds: int
    delta: float = DEFAULT_DELTA
    noise_multiplier: float = 0.0  # central
    clipping_norm: float = 0.0  # central
    sampling_rate: float = 1.0  # central
    target_epsilon: float = 0.0  # dp-sgd
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise InvalidPrivacyParameter(
                f"dp-rounds must be in 1..{MAX_ROUNDS}, got {self.rounds}"
            )
        check_delta(self.delta, "dp-delta", allow_zero=False)
        if self.accountant not in ("rdp", "pld"):
            raise InvalidPrivacyParameter(
                f"dp-accountant must be 'rdp' or 'pld', not {self.accountant!r}"
            )
        if self.mode is PlanMode.CENTRAL:
            if self.noise_multiplier <= 0:
                raise InvalidPrivacyParameter("dp-noise-multiplier must be > 0")
            if self.clipping_norm <= 0:
                raise InvalidPrivacyParameter("dp-clipping-norm must be > 0")
            if not 0 < self.sampling_rate <= 1:
                raise InvalidPrivacyParameter("dp-sampling-rate must be in (0, 1]")
        elif check_epsilon(self.target_epsilon, "dp-target-epsilon") <= 0:
            raise InvalidPrivacyParameter("dp-target-epsilon must be > 0")

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> DPPlan | None:
        """The plan a run config declares, or ``None`` without ``dp-mode``.

        Raises:
            InvalidPrivacyParameter: a ``dp-*`` key is unknown, missing or out of range
                (the message names it).
        """
        unknown = sorted(k for k in config if k.startswith("dp-") and k not in _KEYS)
        if unknown:
            raise InvalidPrivacyParameter(
                f"unknown DP plan key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
            )
        raw_mode = config.get("dp-mode")
        if raw_mode is None or raw_mode == "":  # the other dp-* keys are then unused
            return None
        try:
            mode = PlanMode(str(raw_mode))
        except ValueError:
            choices = ", ".join(repr(m.value) for m in PlanMode)
            raise InvalidPrivacyParameter(
                f"run config dp-mode must be one of {choices}, got {raw_mode!r}"
            ) from None
        rounds = config.get("dp-rounds", config.get("num-server-rounds"))
        if isinstance(rounds, bool) or not isinstance(rounds, int):
            raise InvalidPrivacyParameter(
                "run config dp-rounds (or num-server-rounds) must be an integer number of rounds"
            )
        accountant = config.get("dp-accountant", "rdp")
        delta = _number(config, "dp-delta")
        common = {
            "mode": mode,
            "rounds": rounds,
            "delta": DEFAULT_DELTA if delta is None else delta,
            "accountant": accountant,
        }
        if mode is PlanMode.CENTRAL:
            rate = _number(config, "dp-sampling-rate")
            return cls(
                **common,  # type: ignore[arg-type]
                noise_multiplier=_required(config, "dp-noise-multiplier", mode),
                clipping_norm=_required(config, "dp-clipping-norm", mode),
                sampling_rate=1.0 if rate is None else rate,
            )
        return cls(**common, target_epsilon=_required(config, "dp-target-epsilon", mode))  # type: ignore[arg-type]

    @property
    def unit(self) -> PrivacyUnit:
        """Site-level (central) or record-level (dp-sgd)."""
        return self.mode.unit

    def spend(self, rounds: int | None = None) -> PrivacySpend:
        """The run's (ε, δ) after ``rounds`` rounds (default: the whole plan).

        Central: Poisson sampling of sites at ``sampling_rate``. dp-sgd: each site's
        target, whatever the rounds (the sites' own accountants enforce it).
        """
        if self.mode is PlanMode.DP_SGD:
            return PrivacySpend(epsilon=self.target_epsilon, delta=self.delta, unit=self.unit)
        return self._gaussian(self.sampling_rate, self.rounds if rounds is None else rounds)

    def site_spend(self, rounds: int | None = None) -> PrivacySpend:
        """What one site books after taking part in ``rounds`` rounds (default: all):
        no sampling amplification for central DP (see the module docstring)."""
        if self.mode is PlanMode.DP_SGD:
            return self.spend()
        return self._gaussian(1.0, self.rounds if rounds is None else rounds)

    def _gaussian(self, sampling_rate: float, rounds: int) -> PrivacySpend:
        if rounds <= 0:
            return PrivacySpend(epsilon=0.0, delta=self.delta, unit=self.unit)
        return planned_spend(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=sampling_rate,
            rounds=rounds,
            delta=self.delta,
            unit=self.unit,
            accountant=self.accountant,
        )

    def describe(self) -> dict[str, str | int]:
        """The plan as JSON-safe text fields (floats as ``repr`` strings) for records."""
        fields: dict[str, str | int] = {
            "mode": self.mode.value,
            "unit": self.unit.value,
            "rounds": self.rounds,
            "delta": repr(self.delta),
            "accountant": self.accountant,
        }
        if self.mode is PlanMode.CENTRAL:
            fields["noise_multiplier"] = repr(self.noise_multiplier)
            fields["clipping_norm"] = repr(self.clipping_norm)
            fields["sampling_rate"] = repr(self.sampling_rate)
        else:
            fields["target_epsilon"] = repr(self.target_epsilon)
        return fields

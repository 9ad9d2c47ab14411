"""A run's DP plan: declared by the data scientist in the run config, checked by all.

The ServerApp's DP settings are plain run-config keys, so the SuperLink and every
site read the same plan without running any app code:

============================  ===============================================================
``dp-mode``                   ``"central"`` (sites clip, the server adds Gaussian noise to
                              the sum: DP-FedAvg), ``"distributed"`` (sites clip and add
                              Skellam noise shares under SecAgg+) or ``"dp-sgd"`` (each
                              site trains with DP-SGD); absent or ``""``: no DP (other keys
                              are ignored)
``dp-noise-multiplier``       z, the noise std over the sensitivity (central, distributed:
                              required)
``dp-clipping-norm``          C, the L2 norm updates are clipped to (central, distributed:
                              required)
``dp-sampling-rate``          q, the chance that a site joins a round (central only;
                              default 1: all sites)
``dp-scale``                  distributed: gamma, integer units per model unit (default
                              ``1024 / C``: the clipped update spans ±1024 units)
``dp-min-surviving-sites``    distributed: each site sizes its noise share so this many
                              shares reach the target noise (required); SecAgg+ must not
                              unmask a sum of fewer
``dp-rounds``                 T, rounds the plan covers (default ``num-server-rounds``)
``dp-delta``                  δ at which ε is reported (default 1e-5)
``dp-accountant``             ``"rdp"`` (default) or ``"pld"``
``dp-target-epsilon``         dp-sgd: the record-level ε each site spends on the run
============================  ===============================================================

:meth:`DPPlan.spend` is the run's planned (ε, δ) and its privacy unit: site-level for
``central`` (one site's whole contribution; accounted with Poisson sampling of sites
at rate q) and ``distributed`` (the Skellam bound of
:func:`dp.distributed.planned_skellam_spend`, valid at any model size and for any
number of surviving shares at or above the minimum), record-level for ``dp-sgd``
(one record within a site).
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
from dp.distributed import planned_skellam_spend
from dp.errors import InvalidPrivacyParameter
from dp.spend import PrivacySpend, PrivacyUnit, check_delta, check_epsilon

__all__ = ["DPPlan", "PlanMode"]

DEFAULT_DELTA = 1e-5
MAX_ROUNDS = 100_000
#: Distributed DP's default gamma * C: a clipped update spans ±1024 integer units.
DEFAULT_SCALED_CLIPPING_NORM = 1024.0
_KEYS = frozenset(
    {
        "dp-mode", "dp-noise-multiplier", "dp-clipping-norm", "dp-sampling-rate", "dp-rounds",
        "dp-delta", "dp-accountant", "dp-target-epsilon", "dp-scale", "dp-min-surviving-sites",
    }
)  # fmt: skip


class PlanMode(enum.StrEnum):
    """Which DP a run declares."""

    CENTRAL = "central"
    DISTRIBUTED = "distributed"
    DP_SGD = "dp-sgd"

    @property
    def unit(self) -> PrivacyUnit:
        """The privacy unit of the mode's guarantee."""
        return PrivacyUnit.RECORD if self is PlanMode.DP_SGD else PrivacyUnit.SITE


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
    noise_multiplier: float = 0.0  # central, distributed
    clipping_norm: float = 0.0  # central, distributed
    sampling_rate: float = 1.0  # central
    scale: float = 0.0  # distributed
    min_surviving_sites: int = 0  # distributed
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
        if self.mode is not PlanMode.DP_SGD:
            if self.noise_multiplier <= 0:
                raise InvalidPrivacyParameter("dp-noise-multiplier must be > 0")
            if self.clipping_norm <= 0:
                raise InvalidPrivacyParameter("dp-clipping-norm must be > 0")
            if not 0 < self.sampling_rate <= 1:
                raise InvalidPrivacyParameter("dp-sampling-rate must be in (0, 1]")
        if self.mode is PlanMode.DISTRIBUTED:
            self._check_distributed()
        elif (
            self.mode is PlanMode.DP_SGD
            and check_epsilon(self.target_epsilon, "dp-target-epsilon") <= 0
        ):
            raise InvalidPrivacyParameter("dp-target-epsilon must be > 0")

    def _check_distributed(self) -> None:
        if self.sampling_rate != 1:
            raise InvalidPrivacyParameter(
                "dp-sampling-rate is not used with dp-mode = 'distributed' (every invited "
                "site adds a noise share each round)"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InvalidPrivacyParameter(f"dp-scale must be finite and > 0, got {self.scale}")
        if self.scale * self.clipping_norm < 1:
            raise InvalidPrivacyParameter(
                f"dp-scale {self.scale:g} times dp-clipping-norm {self.clipping_norm:g} is "
                "below one integer unit: the update would round away"
            )
        if isinstance(self.min_surviving_sites, bool) or self.min_surviving_sites < 1:
            raise InvalidPrivacyParameter("dp-min-surviving-sites must be an integer >= 1")
        if self.accountant != "rdp":
            raise InvalidPrivacyParameter(
                "dp-mode = 'distributed' is accounted with the Skellam RDP bound; "
                "dp-accountant must be 'rdp'"
            )

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
        if mode is PlanMode.DISTRIBUTED:
            clipping_norm = _required(config, "dp-clipping-norm", mode)
            scale = _number(config, "dp-scale")
            survivors = config.get("dp-min-surviving-sites")
            if isinstance(survivors, bool) or not isinstance(survivors, int):
                raise InvalidPrivacyParameter(
                    "run config dp-mode = 'distributed' needs dp-min-surviving-sites "
                    "(an integer number of sites)"
                )
            rate = _number(config, "dp-sampling-rate")
            return cls(
                **common,  # type: ignore[arg-type]
                noise_multiplier=_required(config, "dp-noise-multiplier", mode),
                clipping_norm=clipping_norm,
                sampling_rate=1.0 if rate is None else rate,
                scale=DEFAULT_SCALED_CLIPPING_NORM / clipping_norm if scale is None else scale,
                min_surviving_sites=survivors,
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
        if self.mode is PlanMode.DISTRIBUTED:
            return self._skellam(self.rounds if rounds is None else rounds)
        return self._gaussian(self.sampling_rate, self.rounds if rounds is None else rounds)

    def site_spend(self, rounds: int | None = None) -> PrivacySpend:
        """What one site books after taking part in ``rounds`` rounds (default: all):
        no sampling amplification for central DP (see the module docstring)."""
        if self.mode is not PlanMode.CENTRAL:
            return self.spend(rounds)
        return self._gaussian(1.0, self.rounds if rounds is None else rounds)

    def _skellam(self, rounds: int) -> PrivacySpend:
        return planned_skellam_spend(
            noise_multiplier=self.noise_multiplier,
            scaled_clipping_norm=self.scale * self.clipping_norm,
            rounds=max(rounds, 0),
            delta=self.delta,
        )

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
        if self.mode is not PlanMode.DP_SGD:
            fields["noise_multiplier"] = repr(self.noise_multiplier)
            fields["clipping_norm"] = repr(self.clipping_norm)
            fields["sampling_rate"] = repr(self.sampling_rate)
        if self.mode is PlanMode.DISTRIBUTED:
            fields["scale"] = repr(self.scale)
            fields["min_surviving_sites"] = self.min_surviving_sites
        elif self.mode is PlanMode.DP_SGD:
            fields["target_epsilon"] = repr(self.target_epsilon)
        return fields

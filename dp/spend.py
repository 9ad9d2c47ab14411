"""Typed privacy spend: every epsilon Greenhouse reports carries its delta and its unit.

A bare float says nothing about *what* is protected. Two units exist:

* ``site-level`` -- central, distributed or local DP across sites: the guarantee
  covers one site's whole contribution to the run (all of its records at once).
* ``record-level`` -- DP-SGD inside a site: the guarantee covers one record (one
  patient, one customer) of that site's data.

The two are never added together; the ledger keeps a separate budget for each.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from dp.errors import InvalidPrivacyParameter

__all__ = ["PrivacySpend", "PrivacyUnit", "check_delta", "check_epsilon"]


class PrivacyUnit(enum.StrEnum):
    """What one (epsilon, delta) guarantee protects."""

    SITE = "site-level"
    RECORD = "record-level"

    @property
    def metric_suffix(self) -> str:
        """The short suffix used in metric keys (``site`` or ``record``)."""
        return "site" if self is PrivacyUnit.SITE else "record"


def check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    """Return ``epsilon`` as a float if it is a finite number >= 0, else raise."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise InvalidPrivacyParameter(f"{what} must be a number, got {type(epsilon).__name__}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise InvalidPrivacyParameter(f"{what} must be finite and >= 0, got {epsilon}")
    return float(epsilon)


def check_delta(delta: float, what: str = "delta", *, allow_zero: bool = True) -> float:
    """Return ``delta`` as a float if it lies in [0, 1) (or (0, 1)), else raise."""
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise InvalidPrivacyParameter(f"{what} must be a number, got {type(delta).__name__}")
    low_ok = delta >= 0 if allow_zero else delta > 0
    if not (low_ok and delta < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise InvalidPrivacyParameter(f"{what} must be in {interval}, got {delta}")
    return float(delta)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySpend:
    """An (epsilon, delta) guarantee and the unit it protects.

    Example:
        >>> spend = PrivacySpend(epsilon=7.9, delta=1e-5, unit=PrivacyUnit.SITE)
        >>> str(spend)
        '(ε = 7.9, δ = 1e-05) site-level'
        >>> spend.to_metrics()
        {'dp-epsilon-site': 7.9, 'dp-delta-site': 1e-05}
    """

    epsilon: float
    delta: float
    unit: PrivacyUnit

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        if not isinstance(self.unit, PrivacyUnit):
            raise InvalidPrivacyParameter(f"unit must be a PrivacyUnit, got {self.unit!r}")

    def __str__(self) -> str:
        return f"(ε = {self.epsilon:.4g}, δ = {self.delta:.4g}) {self.unit.value}"

    def __add__(self, other: PrivacySpend) -> PrivacySpend:
        """Basic composition: epsilons and deltas add. Units must match."""
        if not isinstance(other, PrivacySpend):
            return NotImplemented
        if other.unit is not self.unit:
            raise InvalidPrivacyParameter(
                f"cannot add a {other.unit.value} spend to a {self.unit.value} spend"
            )
        return PrivacySpend(
            epsilon=self.epsilon + other.epsilon,
            delta=min(self.delta + other.delta, math.nextafter(1.0, 0.0)),
            unit=self.unit,
        )

    def keys(self) -> tuple[str, str]:
        """The metric keys of this unit: ``dp-epsilon-<unit>`` and ``dp-delta-<unit>``."""
        return metric_keys(self.unit)

    def to_metrics(self) -> dict[str, float]:
        """The spend as metric entries for a ``MetricRecord``."""
        eps_key, delta_key = self.keys()
        return {eps_key: self.epsilon, delta_key: self.delta}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object], unit: PrivacyUnit) -> PrivacySpend | None:
        """The spend of ``unit`` reported in ``metrics``, or None if it is not there.

        Raises:
            InvalidPrivacyParameter: the entries are present but not a valid spend.
        """
        eps_key, delta_key = metric_keys(unit)
        if eps_key not in metrics and delta_key not in metrics:
            return None
        if eps_key not in metrics or delta_key not in metrics:
            raise InvalidPrivacyParameter(f"metrics report only one of {eps_key}, {delta_key}")
        epsilon, delta = metrics[eps_key], metrics[delta_key]
        if not isinstance(epsilon, int | float) or not isinstance(delta, int | float):
            raise InvalidPrivacyParameter(f"{eps_key} and {delta_key} must be numbers")
        return cls(epsilon=epsilon, delta=delta, unit=unit)


def metric_keys(unit: PrivacyUnit) -> tuple[str, str]:
    """``("dp-epsilon-<unit>", "dp-delta-<unit>")`` for ``unit``."""
    return f"dp-epsilon-{unit.metric_suffix}", f"dp-delta-{unit.metric_suffix}"

"""Client sampling: which nodes a round asks, by fraction/minimum rules, reproducibly.

A round's cohort is a uniform sample without replacement of the available nodes:
``max(floor(fraction * available), min_nodes)`` of them, after waiting for at least
``max(min_available, min_nodes)`` nodes. The draw is a pure function of the seed,
the round, the purpose (``train`` or ``evaluate``) and the sorted available ids, so a
run repeats its cohorts exactly, and evaluation sampling never shifts training
sampling. Every draw is described by a :class:`SamplingRecord` (available, sampled,
fraction, seed) that :meth:`~appliance.strategy.Strategy.start` keeps per round in
``Result.sampling``: privacy accounting needs each round's sampling rate.

What this module does *not* give: secret sampling. The seed is recorded, so anyone
holding the record can recompute the cohort; privacy amplification by sampling
needs the secret Poisson sampling of the DP wrappers (``dp.strategy``).
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import StrategyError
from appliance.grid import Grid

__all__ = [
    "UNIFORM",
    "UNRECORDED",
    "SamplingRecord",
    "check_fraction",
    "new_seed",
    "sample_cohort",
]

#: The method of :func:`sample_cohort`.
UNIFORM = "uniform-without-replacement"
#: A strategy that did not say how it chose its cohort (only the counts are known).
UNRECORDED = "unrecorded"
# Guards floor(fraction * n) against binary rounding (0.29 * 100 = 28.999999999999996).
_ROUNDING_SLACK = 1e-9


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` if it is a fraction in [0, 1].

    Raises:
        ValueError: ``value`` is outside [0, 1] or not a number.
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SamplingRecord:
    """How one round's training cohort was chosen.

    Attributes:
        server_round: the round.
        available: how many nodes were available when the cohort was drawn.
        sampled: how many nodes were sent a training message.
        fraction: the configured fraction (``None`` when the strategy did not say).
        min_nodes: the configured minimum cohort (``None`` when unknown).
        seed: the seed the cohort was drawn with (``None`` when unknown).
        method: :data:`UNIFORM` or :data:`UNRECORDED`.
    """

    server_round: int
    available: int
    sampled: int
    fraction: float | None
    min_nodes: int | None
    seed: int | None
    method: str = UNIFORM

    @property
    def rate(self) -> float:
        """The realised sampling rate ``sampled / available`` (0 when none were available)."""
        return self.sampled / self.available if self.available else 0.0

    def with_sampled(self, sampled: int) -> SamplingRecord:
        """A copy whose ``sampled`` is ``sampled`` (a wrapper may thin the cohort further)."""
        return SamplingRecord(
            server_round=self.server_round,
            available=self.available,
            sampled=sampled,
            fraction=self.fraction,
            min_nodes=self.min_nodes,
            seed=self.seed,
            method=self.method,
        )

    def to_dict(self) -> dict[str, int | float | str | None]:
        """A JSON-ready view (used by checkpoints' ``metrics.json``)."""
        return {
            "available": self.available,
            "sampled": self.sampled,
            "rate": self.rate,
            "fraction": self.fraction,
            "min_nodes": self.min_nodes,
            "seed": self.seed,
            "method": self.method,
        }


def new_seed() -> int:
    """A fresh 63-bit seed, for strategies given none (it is recorded, so runs can be replayed)."""
    return secrets.randbits(63)


def _wait_for_nodes(
    grid: Grid,
    needed: int,
    wait_s: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> list[int]:
    deadline = clock() + wait_s
    delay = 0.01
    while True:
        available = sorted(grid.get_node_ids())
        if len(available) >= needed:
            return available
        if clock() >= deadline:
            raise StrategyError(
                f"{len(available)} node(s) available, the strategy needs at least {needed}"
            )
        sleep(min(delay, max(deadline - clock(), 0.0)))
        delay = min(delay * 2, 1.0)


def sample_cohort(
    grid: Grid,
    *,
    server_round: int,
    fraction: float,
    min_nodes: int,
    min_available: int,
    seed: int,
    purpose: str = "train",
    wait_s: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[int], SamplingRecord]:
    """Wait for enough nodes, then draw this round's cohort.

    Args:
        grid: the run's grid.
        server_round: the round (part of the draw, so each round differs).
        fraction: fraction of the available nodes to sample.
        min_nodes: sample at least this many.
        min_available: wait until at least this many nodes are available.
        seed: the run's sampling seed.
        purpose: ``"train"`` or ``"evaluate"`` (separate draws).
        wait_s: how long to wait for ``max(min_available, min_nodes)`` nodes.
        sleep: injected for tests.
        clock: monotonic seconds, injected for tests.

    Returns:
        The sorted sampled node ids and the record of the draw.

    Raises:
        StrategyError: fewer than ``max(min_available, min_nodes)`` nodes became
            available within ``wait_s``.
    """
    available = _wait_for_nodes(grid, max(min_available, min_nodes), wait_s, sleep, clock)
    count = max(math.floor(len(available) * fraction + _ROUNDING_SLACK), min_nodes)
    count = min(count, len(available))
    # str seeds are hashed with SHA-512 by random.seed: stable across processes.
    rng = random.Random(f"greenhouse-sampling/{seed}/{purpose}/{server_round}")  # noqa: S311
    cohort = sorted(rng.sample(available, count))
    record = SamplingRecord(
        server_round=server_round,
        available=len(available),
        sampled=len(cohort),
        fraction=fraction,
        min_nodes=min_nodes,
        seed=seed,
    )
    return cohort, record

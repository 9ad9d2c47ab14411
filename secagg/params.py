"""Round parameters: the neighbour count k, the Shamir threshold t, and the modulus.

Everything here is a pure function of public values, so the server and every client
compute the same parameters from the same inputs, and a client refuses a server
that claims others (:mod:`secagg.client`).

The formula (worst case; ``docs/secagg.md`` has the argument). With ``n``
participants after key advertisement, a tolerated dropout fraction ``delta`` and a
tolerated fraction ``gamma`` of clients colluding with the server::

    D = floor(delta * n)                  dropouts tolerated after keys are advertised
    C = floor(gamma * n)                  corrupted clients tolerated
    k = min(n - 1, smallest even k > 2D + C)         neighbours per client
    t = floor((k + min(C, k)) / 2) + 1               Shamir threshold

- privacy: every honest neighbour reveals one kind of share per peer (self-mask seed
  *or* mask key, never both), so the server plus ``C`` colluders need ``2t - C <= k``
  shares to learn both secrets of one client; ``t > (k + C) / 2`` rules that out;
- correctness: a client keeps ``>= k - D >= t`` share holders after ``D`` dropouts;
- partial sums: the ring graph is k-connected, so removing ``D + C < k`` nodes
  cannot split the honest survivors into groups whose sums could be learnt apart.

``k = n - 1`` is the original SecAgg (Bonawitz et al. 2017). A round accepts at most
``max_dropouts = min(D, k - t)`` dropouts after advertisement; beyond that every
party stops with :class:`~secagg.errors.TooManyDropouts`.

Quantization: values are clipped to ``[-c, c]`` and rounded stochastically to
integers in ``[0, L]`` with ``L = 2**bits - 1``; a client adds ``weight * q`` with an
integer ``weight <= max_weight``, so the sum is at most ``n * max_weight * L``. The
modulus is ``2**32`` when that bound is below it (masked vectors travel as uint32),
else ``2**64`` (uint64); a larger bound is refused: the sum can never wrap.

Integer inputs (``integer_scale > 0``): each client contributes a vector of centred
integers it encoded itself (for example values scaled by ``integer_scale``, rounded
and noised by a distributed DP mechanism), reduced modulo ``2**integer_modulus_bits``
(32 or 64, chosen by the caller, who knows how large the noisy sum can grow). Every
client counts once (``max_weight = 1``; the last element sums to the number of
contributors) and no metrics travel. The server lifts the sum back to centred
integers and divides by ``integer_scale`` times the count.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.errors import ParameterError

__all__ = [
    "MAX_PARTICIPANTS",
    "MAX_VALUES",
    "ROUND_ID_BYTES",
    "GraphParams",
    "RoundConfig",
    "RoundParams",
    "choose_modulus_bits",
    "choose_parameters",
    "derive_round_params",
]

ROUND_ID_BYTES = 32
MAX_PARTICIPANTS = 10_000
#: Most values (array elements plus metrics) one masked vector may carry.
MAX_VALUES = 2**31 - 2
MAX_FRACTION = 0.5
_FLOOR_SLACK = 1e-9  # floor(0.1 * 30) must be 3, not 2.9999999999999996 -> 2


def _count(fraction: float, n: int) -> int:
    return math.floor(fraction * n + _FLOOR_SLACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphParams:
    """The neighbour count, threshold and tolerances for ``n`` participants."""

    n: int
    neighbours: int
    threshold: int
    max_dropouts: int
    corrupted: int

    @property
    def is_complete(self) -> bool:
        """Whether every participant masks with every other (original SecAgg)."""
        return self.neighbours == self.n - 1


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParameterError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= value < MAX_FRACTION:
        raise ParameterError(f"{name} must be in [0, {MAX_FRACTION}), got {value}")


def choose_parameters(
    n: int,
    *,
    dropout_fraction: float,
    corrupted_fraction: float,
    neighbours: int | None = None,
    threshold: int | None = None,
) -> GraphParams:
    """k and t for ``n`` participants (formula in the module docstring).

    Args:
        n: participants whose keys were advertised (3..MAX_PARTICIPANTS).
        dropout_fraction: fraction of ``n`` that may drop after advertising keys.
        corrupted_fraction: fraction of ``n`` that may collude with the server.
        neighbours: an explicit k (even, or >= n - 1 for the complete graph); it must
            still exceed ``2D + C`` unless it gives the complete graph.
        threshold: an explicit t; it must be in ``floor((k + C) / 2) + 1 .. k``.

    Returns:
        The parameters, with the dropouts the round accepts (``max_dropouts``).

    Raises:
        ParameterError: the inputs admit no safe and correct choice; the message says
            which bound fails.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 3 <= n <= MAX_PARTICIPANTS:
        raise ParameterError(f"SecAgg+ needs 3..{MAX_PARTICIPANTS} participants, got {n}")
    _check_fraction("dropout_fraction", dropout_fraction)
    _check_fraction("corrupted_fraction", corrupted_fraction)
    dropouts, corrupted = _count(dropout_fraction, n), _count(corrupted_fraction, n)
    bound = 2 * dropouts + corrupted  # k must exceed this (unless the graph is complete)
    if neighbours is None:
        k = bound + 1 + (bound + 1) % 2
    else:
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 2:
            raise ParameterError(f"neighbours must be an integer >= 2, got {neighbours}")
        if neighbours < n - 1 and neighbours % 2:
            raise ParameterError(f"neighbours must be even (ring graph), got {neighbours}")
        k = neighbours
    k = min(k, n - 1)
    if k < n - 1 and k <= bound:
        raise ParameterError(
            f"{k} neighbours cannot tolerate {dropouts} dropouts and {corrupted} corrupted "
            f"clients of {n}: need k > 2*{dropouts} + {corrupted} = {bound}"
        )
    corrupted_neighbours = min(corrupted, k)
    t_min = (k + corrupted_neighbours) // 2 + 1
    if threshold is None:
        t = t_min
    elif isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ParameterError(f"threshold must be an integer, got {threshold!r}")
    else:
        t = threshold
    if not t_min <= t <= k:
        raise ParameterError(
            f"threshold {t} is outside {t_min}..{k} for {k} neighbours and {corrupted} "
            f"corrupted clients (privacy needs t > (k + C) / 2)"
        )
    return GraphParams(
        n=n,
        neighbours=k,
        threshold=t,
        max_dropouts=min(dropouts, k - t),
        corrupted=corrupted,
    )


def choose_modulus_bits(n: int, *, quantization_bits: int, max_weight: int) -> int:
    """32 or 64: the smallest power-of-two modulus the weighted sum of ``n`` inputs cannot wrap.

    Raises:
        ParameterError: even 2**64 could wrap (``n * max_weight * (2**bits - 1)``).
    """
    largest_sum = n * max_weight * (2**quantization_bits - 1)
    for bits in (32, 64):
        if largest_sum < 2**bits:
            return bits
    raise ParameterError(
        f"{n} inputs of weight <= {max_weight} at {quantization_bits} bits can sum to "
        f"{largest_sum}, which does not fit in 64 bits; lower quantization_bits or max_weight"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundConfig:
    """What the server proposes for one round; every client checks and signs over it.

    Attributes:
        round_id: 32 fresh random bytes naming the round; seeds the neighbour graph.
        dropout_fraction: tolerated dropouts after key advertisement, as a fraction of n.
        corrupted_fraction: tolerated clients colluding with the server, as a fraction.
        neighbours: explicit k, or 0 to use the formula.
        threshold: explicit t, or 0 to use the formula.
        num_values: array elements per input (the weight travels as one extra element).
        num_metrics: metric values per input, after the array elements.
        clip_range: array values are clipped to ``[-clip_range, clip_range]``.
        metric_range: metric values are clipped to ``[-metric_range, metric_range]``.
        quantization_bits: values are rounded to ``2**bits`` levels.
        max_weight: largest integer weight a client may contribute.
        min_participants: fewest participants (after advertisement) the round accepts.
        invited: how many nodes the server invited (sites may refuse small cohorts early).
        integer_scale: 0 for fixed-point inputs; > 0: clients send centred integers
            in units of ``1 / integer_scale`` (see the module docstring).
        integer_modulus_bits: with integer inputs, the modulus' bits (32 or 64).
    """

    round_id: bytes = field(repr=False)
    dropout_fraction: float
    corrupted_fraction: float
    neighbours: int = 0
    threshold: int = 0
    num_values: int
    num_metrics: int = 0
    clip_range: float
    metric_range: float = 1.0
    quantization_bits: int = 16
    max_weight: int = 4096
    min_participants: int = 3
    invited: int
    integer_scale: float = 0.0
    integer_modulus_bits: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, bytes) or len(self.round_id) != ROUND_ID_BYTES:
            raise ParameterError(f"round_id must be {ROUND_ID_BYTES} bytes")
        _check_fraction("dropout_fraction", self.dropout_fraction)
        _check_fraction("corrupted_fraction", self.corrupted_fraction)
        _check_int("neighbours", self.neighbours, 0, MAX_PARTICIPANTS)
        _check_int("threshold", self.threshold, 0, MAX_PARTICIPANTS)
        _check_int("num_values", self.num_values, 0, MAX_VALUES)
        _check_int("num_metrics", self.num_metrics, 0, 1024)
        if (
            self.num_values + self.num_metrics < 1
            or self.num_values + self.num_metrics > MAX_VALUES
        ):
            raise ParameterError(f"an input must hold 1..{MAX_VALUES} values")
        for name in ("clip_range", "metric_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number")
            if not (math.isfinite(value) and 0 < value <= 1e15):
                raise ParameterError(f"{name} must be finite and in (0, 1e15], got {value}")
        _check_int("quantization_bits", self.quantization_bits, 1, 32)
        _check_int("max_weight", self.max_weight, 1, 2**32)
        _check_int("min_participants", self.min_participants, 3, MAX_PARTICIPANTS)
        _check_int("invited", self.invited, 1, MAX_PARTICIPANTS)
        if self.invited < self.min_participants:
            raise ParameterError(
                f"{self.invited} nodes invited, fewer than min_participants {self.min_participants}"
            )
        if self.integer_inputs:
            self._check_integer_inputs()
            return
        if self.integer_modulus_bits:
            raise ParameterError("integer_modulus_bits is only used with integer_scale > 0")
        choose_modulus_bits(
            self.invited,
            quantization_bits=self.quantization_bits,
            max_weight=self.max_weight,
        )

    def _check_integer_inputs(self) -> None:
        scale = self.integer_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ParameterError("integer_scale must be a number")
        if not (math.isfinite(scale) and 0 < scale <= 1e15):
            raise ParameterError(f"integer_scale must be finite and in (0, 1e15], got {scale}")
        if self.integer_modulus_bits not in (32, 64):
            raise ParameterError(
                "integer inputs need integer_modulus_bits 32 or 64, got "
                f"{self.integer_modulus_bits}"
            )
        if self.num_metrics:
            raise ParameterError("integer inputs carry no metrics (num_metrics must be 0)")
        if self.max_weight != 1:
            raise ParameterError("with integer inputs every client counts once (max_weight 1)")

    @property
    def integer_inputs(self) -> bool:
        """Whether clients send their own centred integers (``integer_scale > 0``)."""
        return self.integer_scale != 0

    @property
    def modulus_bits(self) -> int | None:
        """The modulus' bits when the config fixes it (integer inputs), else ``None``."""
        return self.integer_modulus_bits if self.integer_inputs else None

    @property
    def vector_length(self) -> int:
        """Elements of a masked vector: values, metrics, then the weight."""
        return self.num_values + self.num_metrics + 1

    def digest(self) -> bytes:
        """SHA-256 of a fixed binary encoding; clients sign over it."""
        packed = struct.pack(
            ">32sddIIQIddBQII",
            self.round_id,
            float(self.dropout_fraction),
            float(self.corrupted_fraction),
            self.neighbours,
            self.threshold,
            self.num_values,
            self.num_metrics,
            float(self.clip_range),
            float(self.metric_range),
            self.quantization_bits,
            self.max_weight,
            self.min_participants,
            self.invited,
        )
        if not self.integer_inputs:
            return hashlib.sha256(b"greenhouse/secagg/round-config/v1\x00" + packed).digest()
        packed += struct.pack(">dB", float(self.integer_scale), self.integer_modulus_bits)
        return hashlib.sha256(b"greenhouse/secagg/round-config/v2\x00" + packed).digest()


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ParameterError(f"{name} must be in {low}..{high}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundParams:
    """Parameters fixed once the participants are known (same on every party)."""

    config: RoundConfig
    graph: GraphParams
    modulus_bits: int

    @property
    def n(self) -> int:
        """Participants after key advertisement."""
        return self.graph.n

    @property
    def threshold(self) -> int:
        """Shamir threshold t."""
        return self.graph.threshold

    @property
    def max_dropouts(self) -> int:
        """Dropouts after advertisement the round accepts."""
        return self.graph.max_dropouts

    @property
    def dtype(self) -> np.dtype[Any]:
        """uint32 or uint64: the masked vectors' element type."""
        return np.dtype(np.uint32) if self.modulus_bits == 32 else np.dtype(np.uint64)

    @property
    def min_survivors(self) -> int:
        """Fewest participants that must remain at every stage."""
        return max(self.n - self.max_dropouts, self.threshold, self.config.min_participants)


def derive_round_params(config: RoundConfig, n: int) -> RoundParams:
    """The parameters for ``config`` with ``n`` participants.

    Raises:
        ParameterError: no safe choice exists (see :func:`choose_parameters`), or
            ``n`` is below ``config.min_participants`` or above ``config.invited``.
    """
    if n > config.invited:
        raise ParameterError(f"{n} participants, but only {config.invited} were invited")
    if n < config.min_participants:
        raise ParameterError(
            f"{n} participants, fewer than min_participants {config.min_participants}"
        )
    graph = choose_parameters(
        n,
        dropout_fraction=config.dropout_fraction,
        corrupted_fraction=config.corrupted_fraction,
        neighbours=config.neighbours or None,
        threshold=config.threshold or None,
    )
    bits = config.modulus_bits or choose_modulus_bits(
        n, quantization_bits=config.quantization_bits, max_weight=config.max_weight
    )
    return RoundParams(config=config, graph=graph, modulus_bits=bits)

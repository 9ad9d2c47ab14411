"""Fixed-point quantization with stochastic rounding, and exact dequantization of sums.

A client's values are clipped to ``[-c, c]`` (``c`` is ``clip_range`` for array
elements and ``metric_range`` for metrics) and mapped to ``s = (x + c) * L / (2c)``
in ``[0, L]``, ``L = 2**bits - 1``; ``s`` is rounded down or up at random with
``P(up) = s - floor(s)``, so the integer ``q`` is unbiased (``E[q] = s``) and off by
less than one level. The round then sums ``weight * q`` (and ``weight``) modulo a
modulus chosen in :mod:`secagg.params` so the sum cannot wrap.

From the sums ``Q = sum(w_i q_i)`` and ``W = sum(w_i)`` the server recovers the
weighted mean exactly in the quantized domain: ``mean = -c + (Q / W) * 2c / L``;
its distance to the true weighted mean of the clipped values is below ``2c / L``.

The rounding randomness is an AES-CTR stream under a key from the injected RNG
(never numpy's global generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import ParameterError, ProtocolViolation
from secagg.messages import Stage
from secagg.params import RoundConfig
from secagg.primitives.prg import expand_words

__all__ = ["Quantizer", "SecureMean", "decode_sum", "encode_integers"]

_TWO_32 = float(2**32)
#: Values quantized per block (float64 work buffer of 512 KiB: stays in cache).
_BLOCK = 65536


@dataclass(frozen=True, slots=True)
class SecureMean:
    """The dequantized result of a round: weighted means and the total weight."""

    values: npt.NDArray[np.float64]
    metrics: npt.NDArray[np.float64]
    total_weight: int


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Quantizes one client's input and dequantizes the round's sum (see module doc)."""

    num_values: int
    num_metrics: int
    clip_range: float
    metric_range: float
    bits: int

    @classmethod
    def for_config(cls, config: RoundConfig) -> Quantizer:
        """The quantizer ``config`` describes."""
        return cls(
            num_values=config.num_values,
            num_metrics=config.num_metrics,
            clip_range=float(config.clip_range),
            metric_range=float(config.metric_range),
            bits=config.quantization_bits,
        )

    @property
    def levels(self) -> int:
        """L, the largest quantized value."""
        return int(2**self.bits - 1)

    @property
    def step(self) -> float:
        """The width of one level for array values: the bound on the mean's error."""
        return 2 * self.clip_range / self.levels

    def _ranges(self) -> list[tuple[int, int, float]]:
        end = self.num_values + self.num_metrics
        return [(0, self.num_values, self.clip_range), (self.num_values, end, self.metric_range)]

    def quantize(self, values: npt.NDArray[Any], rounding_key: bytes) -> npt.NDArray[np.uint32]:
        """Integers in ``[0, L]`` for ``values`` (array elements, then metrics).

        Values outside the range are clipped (the count is returned by
        :meth:`count_clipped`, never sent).

        Raises:
            ParameterError: wrong length, or a NaN/infinite value.
        """
        flat = np.asarray(values).reshape(-1)
        if flat.size != self.num_values + self.num_metrics:
            raise ParameterError(
                f"input has {flat.size} values, the round expects "
                f"{self.num_values} + {self.num_metrics} metrics"
            )
        # min and max are NaN if any value is, and infinite if any value is.
        if flat.size and not (np.isfinite(flat.min()) and np.isfinite(flat.max())):
            raise ParameterError("input holds NaN or infinite values")
        uniform = expand_words(rounding_key, flat.size, np.uint32)
        out = np.empty(flat.size, dtype=np.uint32)
        levels = float(self.levels)
        work = np.empty(min(flat.size, _BLOCK), dtype=np.float64)
        for start, stop, bound in self._ranges():
            scale = levels / (2 * bound)
            # Block by block, so the passes below run in cache, not in memory.
            for lo in range(start, stop, _BLOCK):
                hi = min(lo + _BLOCK, stop)
                scaled, q = work[: hi - lo], out[lo:hi]
                np.clip(flat[lo:hi], -bound, bound, out=scaled)
                scaled += bound
                scaled *= scale
                np.clip(scaled, 0.0, levels, out=scaled)
                np.copyto(q, scaled, casting="unsafe")  # floor: the values are >= 0
                scaled -= q  # now the fractional part
                scaled *= _TWO_32
                q += uniform[lo:hi] < scaled
        return out

    def count_clipped(self, values: npt.NDArray[Any]) -> int:
        """How many of ``values`` lie outside their range (for a local warning)."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        clipped = 0
        for start, stop, bound in self._ranges():
            clipped += int(np.count_nonzero(np.abs(flat[start:stop]) > bound))
        return clipped

    def dequantize(self, total: npt.NDArray[Any]) -> SecureMean:
        """Weighted means from the round's sum (``total[-1]`` is the summed weight).

        Raises:
            ProtocolViolation: the sum is impossible for honest inputs (an element above
                ``W * L``, or no weight): some participant sent a malformed input.
        """
        weight = int(total[-1])
        if weight <= 0:
            raise ProtocolViolation(
                "the unmasked total weight is zero", node_id=None, stage=Stage.UNMASK
            )
        sums = total[:-1]
        if sums.size and int(sums.max()) > weight * self.levels:
            raise ProtocolViolation(
                "the unmasked sum is out of range: a participant sent a malformed input",
                node_id=None,
                stage=Stage.UNMASK,
            )
        means = sums.astype(np.float64)
        means /= weight
        result = []
        for start, stop, bound in self._ranges():
            part = means[start:stop]
            part *= 2 * bound / self.levels
            part -= bound
            result.append(part)
        return SecureMean(values=result[0], metrics=result[1], total_weight=weight)


def encode_integers(values: npt.NDArray[Any], config: RoundConfig) -> npt.NDArray[np.uint64]:
    """A client's centred integer input reduced modulo ``2**64`` (two's complement).

    Masking later reduces it further to the round's modulus, which is a power of two,
    so the residue modulo ``2**integer_modulus_bits`` is exact.

    Raises:
        ParameterError: the round does not take integer inputs, or ``values`` is not
            a flat integer vector of ``num_values`` elements.
    """
    if not config.integer_inputs:
        raise ParameterError("this round takes fixed-point inputs, not integers")
    array = np.asarray(values)
    if array.dtype.kind not in "iu" or array.shape != (config.num_values,):
        raise ParameterError(
            f"integer input must be {config.num_values} integers, got "
            f"{array.dtype.name}{list(array.shape)}"
        )
    return array.astype(np.int64).view(np.uint64)


def _centred_mean(total: npt.NDArray[Any], config: RoundConfig) -> SecureMean:
    bits = config.integer_modulus_bits
    count = int(total[-1])
    if not 1 <= count <= config.invited:
        raise ProtocolViolation(
            f"the unmasked contributor count {count} is impossible for {config.invited} "
            "invited clients",
            node_id=None,
            stage=Stage.UNMASK,
        )
    sums = total[:-1].astype(np.uint64).view(np.int64)
    if bits < 64:  # lift Z_(2^bits) to [-2^(bits-1), 2^(bits-1))
        half = 1 << (bits - 1)
        sums = np.where(sums >= half, sums - (1 << bits), sums)
    means = sums.astype(np.float64)
    means /= config.integer_scale * count
    return SecureMean(values=means, metrics=np.zeros(0), total_weight=count)


def decode_sum(total: npt.NDArray[Any], config: RoundConfig) -> SecureMean:
    """The round's result from its unmasked sum, for either kind of input.

    Fixed-point inputs: :meth:`Quantizer.dequantize`. Integer inputs: the centred
    sum divided by ``integer_scale`` times the number of contributors.

    Raises:
        ProtocolViolation: the sum is impossible for honest inputs.
    """
    if config.integer_inputs:
        return _centred_mean(total, config)
    return Quantizer.for_config(config).dequantize(total)

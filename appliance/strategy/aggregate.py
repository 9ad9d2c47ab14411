"""Incremental aggregation: running weighted sums, so memory is O(model), not O(nodes x model).

:class:`WeightedMean` takes one update at a time, checks it against the reference
arrays (names, shapes, dtypes, finiteness) before touching the running sum, and
finishes with the weighted mean cast back to each array's dtype. The metric helper
computes weighted means of :class:`~appliance.records.MetricRecord` values.

The array work runs in blocks of :data:`BLOCK` elements with scratch buffers that stay
in the CPU's cache: whole-array expressions would write and re-read model-sized float64
temporaries (an 80 MB one per 10M-value update), which made aggregation memory-bound
and about three times slower. The arithmetic, element by element, is the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.errors import ApplianceError
from appliance.records import ArrayRecord, MetricRecord, RecordDict, all_finite

__all__ = [
    "BLOCK",
    "InvalidUpdate",
    "WeightedMean",
    "check_update",
    "weighted_metrics_mean",
    "without_arrays",
]


BLOCK = 1 << 16
"""Elements per block: a 512 KiB float64 scratch buffer, well inside a core's L2 cache."""


def _blocks(size: int) -> Iterator[slice]:
    return (slice(start, min(start + BLOCK, size)) for start in range(0, size, BLOCK))


class InvalidUpdate(ApplianceError):
    """A reply's update cannot be aggregated (wrong names, shapes, dtypes, non-finite values)."""


def check_update(reference: ArrayRecord, update: ArrayRecord) -> None:
    """Raise :class:`InvalidUpdate` unless ``update`` matches ``reference`` and is finite."""
    if list(update) != list(reference):
        raise InvalidUpdate(
            f"array names {list(update)[:8]} do not match the model's {list(reference)[:8]}"
        )
    for name, expected in reference.items():
        found = update[name]
        if found.shape != expected.shape or found.dtype != expected.dtype:
            raise InvalidUpdate(
                f"array {name!r} is {found.dtype.name}{list(found.shape)}, "
                f"expected {expected.dtype.name}{list(expected.shape)}"
            )
    for name, found in update.items():
        if not all_finite(found):
            raise InvalidUpdate(f"array {name!r} holds NaN or infinite values")


class WeightedMean:
    """A running weighted mean of ArrayRecords shaped like ``reference``."""

    def __init__(self, reference: ArrayRecord) -> None:
        self._reference = reference
        self._sums: dict[str, npt.NDArray[np.float64]] | None = None
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: ArrayRecord, weight: float) -> None:
        """Add ``update`` with ``weight`` (> 0). Raises InvalidUpdate, leaving the sum untouched."""
        if not (weight > 0 and np.isfinite(weight)):
            raise InvalidUpdate(f"weight must be a positive finite number, got {weight}")
        check_update(self._reference, update)
        if self._sums is None:
            self._sums = {k: np.zeros(a.size, dtype=np.float64) for k, a in update.items()}
        scratch = np.empty(BLOCK, dtype=np.float64)
        for name, array in update.items():
            sums, values = self._sums[name], array.reshape(-1)  # a view when contiguous
            for block in _blocks(values.size):
                product = scratch[: block.stop - block.start]
                np.multiply(values[block], weight, out=product, dtype=np.float64)
                np.add(sums[block], product, out=sums[block])
        self.total_weight += weight
        self.count += 1

    def result(self) -> ArrayRecord:
        """The weighted mean, each array cast back to its reference dtype."""
        if self._sums is None:
            raise ValueError("no update was added")
        out: dict[str, npt.NDArray[Any]] = {}
        scratch = np.empty(BLOCK, dtype=np.float64)
        for name, expected in self._reference.items():
            sums = self._sums[name]
            mean = np.empty(sums.size, dtype=expected.dtype)
            for block in _blocks(sums.size):
                part = scratch[: block.stop - block.start]
                np.divide(sums[block], self.total_weight, out=part)
                if expected.dtype.kind in "iub":
                    np.rint(part, out=part)
                mean[block] = part
            out[name] = mean.reshape(expected.shape)
        return ArrayRecord(out)


def without_arrays(content: RecordDict) -> RecordDict:
    """``content`` minus its ArrayRecords: what metric hooks need, kept O(1) per reply.

    Holding whole replies for their metrics would make a round O(nodes x model).
    """
    return RecordDict({k: v for k, v in content.items() if not isinstance(v, ArrayRecord)})


def weighted_metrics_mean(records: Sequence[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of every metric across replies, weighted by ``weighted_by_key``.

    The weighting key itself is summed (e.g. the total number of examples). A metric
    that only some replies report is averaged over those; lists are averaged
    element-wise when all reporters agree on the length, else left out.
    """
    sums: dict[str, Any] = {}
    weights: dict[str, float] = {}
    total = 0.0
    for content in records:
        for metrics in content.metric_records.values():
            weight = float(metrics.get(weighted_by_key, 0) or 0)
            if weight <= 0:
                continue
            total += weight
            for key, value in metrics.items():
                if key == weighted_by_key:
                    continue
                contribution = np.asarray(value, dtype=np.float64) * weight
                if key in sums and np.shape(sums[key]) != contribution.shape:
                    sums[key] = None  # lists of different lengths: not averageable
                if key not in sums:
                    sums[key] = contribution
                elif sums[key] is not None:
                    sums[key] = sums[key] + contribution
                weights[key] = weights.get(key, 0.0) + weight
    result = MetricRecord()
    for key, value in sums.items():
        if value is None:
            continue
        mean = value / weights[key]
        result[key] = mean.tolist() if np.ndim(mean) else float(mean)
    if total:
        result[weighted_by_key] = int(total) if float(total).is_integer() else total
    return result

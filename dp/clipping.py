"""L2 clipping of model updates, with the bound holding exactly on what is sent.

An update is the difference between a site's new model and the global model it was
given. :func:`clip_update` scales that difference so its L2 norm over all arrays is
at most the clipping norm ``C`` -- and checks the bound on the arrays as they will be
sent (after casting back to float32, say), shrinking again if rounding pushed the
norm over ``C``. An update already inside the ball is returned untouched.

Only floating-point arrays can be clipped; NaN/infinite values and mismatched
names, shapes or dtypes raise :class:`~dp.errors.InvalidUpdateError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.records import ArrayRecord
from dp.errors import InvalidPrivacyParameter, InvalidUpdateError

__all__ = [
    "ClipResult",
    "ClippedUpdate",
    "check_clipping_norm",
    "clip_arrays",
    "clip_update",
    "l2_norm",
    "model_delta",
]

Array = npt.NDArray[Any]
F64 = npt.NDArray[np.float64]
#: Relative safety margin of the scale factor, far above float64 summation error.
_MARGIN = 1e-9
_MAX_SHRINKS = 8


def check_clipping_norm(value: float, what: str = "clipping_norm") -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise InvalidPrivacyParameter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameter(f"{what} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidPrivacyParameter(f"{what} must be finite and > 0, got {value}")
    return float(value)


def l2_norm(arrays: Iterable[Array]) -> float:
    """The L2 norm of all elements of ``arrays`` together, computed in float64."""
    total = 0.0
    for array in arrays:
        flat = np.asarray(array, dtype=np.float64).reshape(-1)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


@dataclass(frozen=True, slots=True)
class ClipResult:
    """The outcome of clipping.

    Attributes:
        arrays: the clipped arrays (the inputs themselves when nothing was clipped).
        norm: the L2 norm before clipping.
        clipped: whether the input was outside the ball and was scaled down.
    """

    arrays: list[Array]
    norm: float
    clipped: bool


def _check_float(name: str, array: Array) -> None:
    if array.dtype.kind != "f":
        raise InvalidUpdateError(
            f"array {name!r} is {array.dtype.name}: DP clipping needs floating-point arrays"
        )
    if not np.isfinite(array).all():
        raise InvalidUpdateError(f"array {name!r} holds NaN or infinite values")


def _shrink(
    norm: float, clipping_norm: float, materialize: Callable[[float], tuple[list[Array], float]]
) -> list[Array]:
    """Scale by ``C / norm`` (less a margin), then shrink until the measured norm is <= C."""
    factor = clipping_norm / norm * (1.0 - _MARGIN)
    for _ in range(_MAX_SHRINKS):
        arrays, measured = materialize(factor)
        if measured <= clipping_norm:
            return arrays
        factor *= clipping_norm / measured * (1.0 - 1e-6)
    arrays, measured = materialize(0.0)
    assert measured <= clipping_norm
    return arrays


def clip_arrays(arrays: Sequence[Array], clipping_norm: float) -> ClipResult:
    """Clip a list of float arrays (an update) to L2 norm ``clipping_norm``.

    The returned arrays keep their dtypes and their joint L2 norm, computed in
    float64, is ``<= clipping_norm`` exactly. Inputs inside the ball are returned as is.

    Raises:
        InvalidPrivacyParameter: ``clipping_norm`` is not finite and > 0.
        InvalidUpdateError: a non-float array or a NaN/infinite value.
    """
    c = check_clipping_norm(clipping_norm)
    for i, array in enumerate(arrays):
        _check_float(str(i), array)
    norm = l2_norm(arrays)
    if norm <= c:
        return ClipResult(list(arrays), norm, False)

    def materialize(factor: float) -> tuple[list[Array], float]:
        out = [(a.astype(np.float64) * factor).astype(a.dtype) for a in arrays]
        return out, l2_norm(out)

    return ClipResult(_shrink(norm, c, materialize), norm, True)


def model_delta(update: ArrayRecord, reference: ArrayRecord) -> list[F64]:
    """``update - reference`` per array, in float64, after checking they match.

    Raises:
        InvalidUpdateError: names, shapes or dtypes differ, an array is not floating
            point, or a value is NaN/infinite.
    """
    if list(update) != list(reference):
        raise InvalidUpdateError(
            f"array names {list(update)[:8]} do not match the model's {list(reference)[:8]}"
        )
    deltas: list[F64] = []
    for name, expected in reference.items():
        found = update[name]
        if found.shape != expected.shape or found.dtype != expected.dtype:
            raise InvalidUpdateError(
                f"array {name!r} is {found.dtype.name}{list(found.shape)}, "
                f"expected {expected.dtype.name}{list(expected.shape)}"
            )
        _check_float(name, found)
        deltas.append(found.astype(np.float64) - expected)
    return deltas


@dataclass(frozen=True, slots=True)
class ClippedUpdate:
    """A clipped model: ``reference + clipped delta`` in the reference's dtypes."""

    arrays: ArrayRecord
    norm: float
    clipped: bool


def clip_update(update: ArrayRecord, reference: ArrayRecord, clipping_norm: float) -> ClippedUpdate:
    """Clip ``update - reference`` to ``clipping_norm`` and return the clipped model.

    The bound holds on what is sent: the L2 norm of ``result - reference``, computed
    in float64 from the returned (possibly float32) arrays, is ``<= clipping_norm``.
    An update already inside the ball is returned unchanged (the same ArrayRecord).

    Raises:
        InvalidPrivacyParameter: ``clipping_norm`` is not finite and > 0.
        InvalidUpdateError: see :func:`model_delta`.
    """
    c = check_clipping_norm(clipping_norm)
    deltas = model_delta(update, reference)
    norm = l2_norm(deltas)
    if norm <= c:
        return ClippedUpdate(update, norm, False)
    names = list(reference)
    refs = [reference[name] for name in names]

    def materialize(factor: float) -> tuple[list[Array], float]:
        out = [(r + d * factor).astype(r.dtype) for r, d in zip(refs, deltas, strict=True)]
        measured = l2_norm(o.astype(np.float64) - r for o, r in zip(out, refs, strict=True))
        return out, measured

    arrays = _shrink(norm, c, materialize)
    return ClippedUpdate(ArrayRecord(dict(zip(names, arrays, strict=True))), norm, True)

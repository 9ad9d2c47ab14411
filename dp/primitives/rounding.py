"""WARNING: randomized rounding to integers, with no clipping or norm guarantee by itself.

``dp.distributed`` clips first and then retries the rounding until the rounded
vector's L2 norm is within the bound its accounting assumes (conditional randomized
rounding, Kairouz, Liu, Steinke 2021, Sec. 4.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["stochastic_round"]


def stochastic_round(
    values: npt.NDArray[np.floating[Any]], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Round each value down or up at random so that the result is unbiased.

    ``x`` becomes ``floor(x) + 1`` with probability ``x - floor(x)``, else ``floor(x)``.
    """
    low = np.floor(values)
    up = rng.random(values.shape) < (values - low)
    rounded: npt.NDArray[np.int64] = (low + up).astype(np.int64)
    return rounded

"""Property tests: fixed-point quantization bounds and exact dequantization (secagg.quantize)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg.quantize import Quantizer


def _quantizer(size: int, clip: float, bits: int) -> Quantizer:
    return Quantizer(num_values=size, num_metrics=0, clip_range=clip, metric_range=1.0, bits=bits)


values = arrays(
    np.float64,
    st.integers(min_value=1, max_value=64),
    elements=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(
    x=values,
    clip=st.floats(min_value=1e-3, max_value=1e3),
    bits=st.integers(min_value=1, max_value=24),
    key=st.binary(min_size=32, max_size=32),
    weight=st.integers(min_value=1, max_value=4096),
)
def test_quantized_values_stay_in_range_and_dequantize_within_one_step(x, clip, bits, key, weight):
    quantizer = _quantizer(x.size, clip, bits)
    q = quantizer.quantize(x, key)
    assert q.dtype == np.uint32
    assert int(q.max()) <= quantizer.levels
    total = np.append(q.astype(np.uint64) * weight, np.uint64(weight))
    mean = quantizer.dequantize(total)
    assert mean.total_weight == weight
    clipped = np.clip(x, -clip, clip)
    assert np.all(np.abs(mean.values - clipped) <= quantizer.step * (1 + 1e-9) + 1e-12 * clip)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(min_value=1, max_value=12),
    bits=st.integers(min_value=2, max_value=20),
)
def test_the_weighted_mean_of_many_inputs_is_within_one_step(data, n, bits):
    size = data.draw(st.integers(min_value=1, max_value=16))
    clip = 2.0
    quantizer = _quantizer(size, clip, bits)
    inputs = [
        data.draw(arrays(np.float64, size, elements=st.floats(-3, 3, allow_nan=False)))
        for _ in range(n)
    ]
    weights = data.draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    total = np.zeros(size + 1, dtype=np.uint64)
    for i, (x, w) in enumerate(zip(inputs, weights, strict=True)):
        total[:-1] += quantizer.quantize(x, i.to_bytes(32, "big")).astype(np.uint64) * w
        total[-1] += w
    mean = quantizer.dequantize(total)
    expected = np.average(np.clip(np.stack(inputs), -clip, clip), axis=0, weights=weights)
    assert np.all(np.abs(mean.values - expected) <= quantizer.step * (1 + 1e-9))


def test_stochastic_rounding_is_unbiased() -> None:
    quantizer = _quantizer(200_000, 1.0, 4)
    x = np.full(200_000, 0.123)
    q = quantizer.quantize(x, b"r" * 32)
    estimate = -1.0 + q.mean() * quantizer.step
    assert abs(estimate - 0.123) < 3 * quantizer.step / np.sqrt(x.size) * 2

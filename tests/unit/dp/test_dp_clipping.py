"""Clipping: norms after clipping are <= C exactly; updates inside the ball are untouched."""

import numpy as np
import pytest

from appliance.records import ArrayRecord
from dp import InvalidPrivacyParameter, InvalidUpdateError, clip_arrays, clip_update, l2_norm
from dp.clipping import model_delta

NORMS = [1e-6, 0.1, 1.0, 3.7, 1e3]


@pytest.mark.parametrize("clipping_norm", NORMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_arrays_are_within_the_norm_exactly(clipping_norm, dtype):
    rng = np.random.default_rng(1)
    for trial in range(20):
        arrays = [
            rng.normal(size=s).astype(dtype) * 10 ** (trial % 5) for s in [(7, 3), (5,), (1,)]
        ]
        result = clip_arrays(arrays, clipping_norm)
        assert l2_norm(result.arrays) <= clipping_norm
        assert [a.dtype for a in result.arrays] == [a.dtype for a in arrays]
        if result.clipped:
            assert l2_norm(result.arrays) == pytest.approx(clipping_norm, rel=1e-5)


def test_arrays_inside_the_ball_are_returned_untouched():
    arrays = [np.array([0.3, 0.4], dtype=np.float32)]
    result = clip_arrays(arrays, 0.6)
    assert not result.clipped
    assert result.arrays[0] is arrays[0]
    assert result.norm == pytest.approx(0.5)


def test_clipping_preserves_direction():
    arrays = [np.array([3.0, 4.0]), np.array([12.0])]
    result = clip_arrays(arrays, 1.3)
    assert result.clipped and result.norm == pytest.approx(13.0)
    np.testing.assert_allclose(result.arrays[0], [0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(result.arrays[1], [1.2], rtol=1e-6)


@pytest.mark.parametrize("clipping_norm", [1e-4, 0.01, 0.5])
def test_clip_update_bound_holds_on_the_float32_model_that_is_sent(clipping_norm):
    """The server recomputes ``update - reference`` from float32: the bound must hold there."""
    rng = np.random.default_rng(2)
    reference = ArrayRecord({"w": (rng.normal(size=10_000) * 100).astype(np.float32)})
    for _ in range(10):
        update = ArrayRecord({"w": reference["w"] + rng.normal(size=10_000).astype(np.float32)})
        result = clip_update(update, reference, clipping_norm)
        assert result.clipped
        assert result.arrays["w"].dtype == np.float32
        assert l2_norm(model_delta(result.arrays, reference)) <= clipping_norm


def test_clip_update_inside_the_ball_returns_the_same_record():
    reference = ArrayRecord({"w": np.zeros(3, dtype=np.float32)})
    update = ArrayRecord({"w": np.array([0.1, 0.0, 0.0], dtype=np.float32)})
    result = clip_update(update, reference, 1.0)
    assert result.arrays is update and not result.clipped


ERRORS = {
    "nan": ([np.array([np.nan, 1.0])], 1.0, InvalidUpdateError, "NaN"),
    "infinite": ([np.array([np.inf])], 1.0, InvalidUpdateError, "NaN or infinite"),
    "integer array": ([np.array([1, 2])], 1.0, InvalidUpdateError, "floating-point"),
    "zero norm": ([np.array([1.0])], 0.0, InvalidPrivacyParameter, "clipping_norm"),
    "negative norm": ([np.array([1.0])], -1.0, InvalidPrivacyParameter, "clipping_norm"),
    "nan norm": ([np.array([1.0])], float("nan"), InvalidPrivacyParameter, "clipping_norm"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=list(ERRORS))
def test_clip_arrays_refuses_bad_input(case):
    arrays, norm, error, match = case
    with pytest.raises(error, match=match):
        clip_arrays(arrays, norm)


def test_model_delta_refuses_mismatched_updates():
    reference = ArrayRecord({"w": np.zeros(3, dtype=np.float32)})
    with pytest.raises(InvalidUpdateError, match="names"):
        model_delta(ArrayRecord({"v": np.zeros(3, dtype=np.float32)}), reference)
    with pytest.raises(InvalidUpdateError, match=r"float64\[3\], expected float32\[3\]"):
        model_delta(ArrayRecord({"w": np.zeros(3)}), reference)
    with pytest.raises(InvalidUpdateError, match=r"expected float32\[3\]"):
        model_delta(ArrayRecord({"w": np.zeros(4, dtype=np.float32)}), reference)

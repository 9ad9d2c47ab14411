import numpy as np
import pytest

from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict, all_finite


def test_array_record_from_list_names_by_position():
    a, b = np.zeros((2, 3), dtype=np.float32), np.arange(4)
    rec = ArrayRecord([a, b])
    assert list(rec) == ["0", "1"]
    assert rec.to_numpy_ndarrays()[0] is a
    assert rec.nbytes == a.nbytes + b.nbytes


def test_array_record_from_dict_keeps_order():
    rec = ArrayRecord({"w": np.ones(2), "b": np.zeros(1)})
    assert list(rec) == ["w", "b"]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ([1, 2, 3], TypeError, "must be a numpy.ndarray, got list"),
        (np.array(["a"]), TypeError, "has dtype '<U1'"),
        (np.array([object()]), TypeError, "has dtype '|O'"),
        (np.zeros(2, dtype=np.complex64), TypeError, "supported: bool, float16"),
    ],
)
def test_array_record_rejects_bad_values(value, error, match):
    with pytest.raises(error, match=match):
        ArrayRecord({"x": value})


def test_array_record_rejects_single_array_and_bad_keys():
    with pytest.raises(TypeError, match="not one array"):
        ArrayRecord(np.zeros(3))
    with pytest.raises(ValueError, match="must not be empty"):
        ArrayRecord({"": np.zeros(1)})
    with pytest.raises(TypeError, match="keys must be str"):
        ArrayRecord({1: np.zeros(1)})


def test_array_record_converts_big_endian_to_native():
    rec = ArrayRecord({"x": np.arange(3, dtype=">i4")})
    assert rec["x"].dtype.isnative
    assert rec["x"].tolist() == [0, 1, 2]


def test_array_record_equality_is_by_name_dtype_shape_and_bytes():
    a = ArrayRecord({"x": np.array([1.0, np.nan])})
    assert a == ArrayRecord({"x": np.array([1.0, np.nan])})
    assert a != ArrayRecord({"x": np.array([1.0, np.nan], dtype=np.float32)})
    assert a != ArrayRecord({"y": np.array([1.0, np.nan])})


def test_metric_record_accepts_numbers_and_numpy_scalars():
    rec = MetricRecord(
        {"loss": np.float32(0.5), "n": np.int64(3), "curve": [0.1, 0.2], "ids": (1, 2)}
    )
    assert rec["loss"] == 0.5 and type(rec["loss"]) is float
    assert type(rec["n"]) is int
    assert rec["ids"] == [1, 2]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (True, TypeError, "is a bool"),
        ("high", TypeError, "is a str"),
        ([1, 2.0], TypeError, "mixes float, int"),
        ([1, "a"], TypeError, "list holds a str"),
        (2**63, ValueError, "does not fit in 64 bits"),
        ({"a": 1}, TypeError, "is a dict"),
    ],
)
def test_metric_record_rejects_bad_values(value, error, match):
    with pytest.raises(error, match=match):
        MetricRecord({"m": value})


def test_config_record_accepts_every_allowed_type():
    rec = ConfigRecord(
        {"i": 1, "f": 1.5, "s": "x", "b": b"\x00", "t": True, "l": ["a", "b"], "e": []}
    )
    assert rec["t"] is True
    assert rec["l"] == ["a", "b"]


def test_config_record_keeps_bool_and_int_apart():
    with pytest.raises(TypeError, match="mixes bool, int"):
        ConfigRecord({"x": [True, 1]})
    with pytest.raises(TypeError, match="is a NoneType"):
        ConfigRecord({"x": None})


def test_records_validate_on_assignment():
    rec = MetricRecord()
    with pytest.raises(TypeError):
        rec["x"] = "not a number"
    assert "x" not in rec


def test_record_dict_holds_only_records_and_groups_by_kind():
    rd = RecordDict({"a": ArrayRecord(), "m": MetricRecord({"x": 1}), "c": ConfigRecord()})
    assert list(rd.array_records) == ["a"]
    assert list(rd.metric_records) == ["m"]
    assert list(rd.config_records) == ["c"]
    with pytest.raises(TypeError, match="must be an ArrayRecord, MetricRecord or ConfigRecord"):
        rd["x"] = {"plain": "dict"}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, (1 << 16) - 1, 1 << 16, -1])
def test_all_finite_finds_a_bad_value_in_any_block(bad, where):
    values = np.ones((3, 50_000), dtype=np.float32)
    assert all_finite(values)
    values.reshape(-1)[where] = bad
    assert not all_finite(values)


def test_all_finite_checks_complex_and_passes_integers():
    assert all_finite(np.arange(10, dtype=np.int64))
    assert all_finite(np.zeros(0, dtype=np.float32))
    assert all_finite(np.array([1 + 2j]))
    assert not all_finite(np.array([1 + 1j, complex(0, np.inf)]))
    strided = np.ones((4, 4), dtype=np.float64)[:, ::2]
    strided[3, 1] = np.nan
    assert not all_finite(strided)

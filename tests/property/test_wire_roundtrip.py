"""Round-trip properties of the wire codec: decode(encode(x)) == x, bit for bit.

Values are compared through ``canonical()``, which is stricter than ``==``: it tells
``True`` from ``1`` from ``1.0``, compares floats by their bits (so NaN equals the same
NaN and ``-0.0`` differs from ``0.0``) and compares arrays by dtype, shape and bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from appliance.message import Error, Message, Metadata
from appliance.records import (
    ARRAY_DTYPES,
    ArrayRecord,
    ConfigRecord,
    MetricRecord,
    RecordDict,
)
from appliance.wire import (
    WireError,
    decode_message,
    decode_record_dict,
    encode_message,
    encode_record_dict,
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1

# --- comparison --------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A hashable, strictly typed, bitwise form of a record value, record or message."""
    if type(value) is bool:
        return ("bool", value)
    if type(value) is int:
        return ("int", value)
    if type(value) is float:
        return ("float", struct.pack("<d", value))
    if type(value) is str:
        return ("str", value)
    if type(value) is bytes:
        return ("bytes", value)
    if type(value) is list:
        return ("list", tuple(canonical(item) for item in value))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.name, value.shape, value.tobytes())
    if isinstance(value, ArrayRecord | MetricRecord | ConfigRecord | RecordDict):
        return (type(value).__name__, tuple((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, Error):
        return ("Error", value.code, value.reason)
    if isinstance(value, Metadata):
        return (
            "Metadata",
            value.run_id,
            value.message_id,
            value.src_node_id,
            value.dst_node_id,
            value.reply_to_message_id,
            value.group_id,
            value.message_type,
            canonical(float(value.ttl)),
            canonical(float(value.created_at)),
        )
    if isinstance(value, Message):
        body = value.content if value.has_content() else value.error
        return ("Message", canonical(value.metadata), canonical(body))
    raise AssertionError(f"unexpected {type(value).__name__} in a decoded value")


def assert_same(decoded: Any, expected: Any) -> None:
    assert canonical(decoded) == canonical(expected)


# --- strategies --------------------------------------------------------------------------

DTYPES = sorted(ARRAY_DTYPES)
names = st.text(min_size=1, max_size=12)  # any unicode scalar value (no lone surrogates)
int64s = st.integers(INT64_MIN, INT64_MAX)
SPECIAL_FLOATS = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    5e-324,
    1.7976931348623157e308,
]
any_floats = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats())  # st.floats: NaN payloads too
shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3),  # zero-size dims
)
LAYOUTS = ["c", "fortran", "transposed", "strided", "reversed", "big-endian", "big-endian strided"]


def elements(dtype: np.dtype) -> st.SearchStrategy[Any] | None:
    if dtype.kind != "f":
        return None  # hypothesis covers the whole range of ints and bools
    width = dtype.itemsize * 8
    special = [v for v in SPECIAL_FLOATS if not math.isfinite(v) or v == 0]
    return st.one_of(st.sampled_from(special), st.floats(width=width))


@st.composite
def input_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of every allowed dtype, in every memory layout the encoder may be given."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(shapes)
    layout = draw(st.sampled_from(LAYOUTS))
    values = elements(dtype)
    if layout in ("strided", "big-endian strided") and shape:
        wide = draw(hnp.arrays(dtype, (*shape[:-1], 2 * shape[-1] + 1), elements=values))
        array = wide[..., ::2][..., : shape[-1]]
    else:
        array = draw(hnp.arrays(dtype, shape, elements=values))
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "transposed":
        array = array.T
    elif layout == "reversed" and shape:
        array = array[::-1]
    if layout.startswith("big-endian"):
        array = array.astype(dtype.newbyteorder(">"))
    return array


array_records = st.dictionaries(names, input_arrays(), max_size=4).map(ArrayRecord)

metric_values = st.one_of(
    int64s,
    any_floats,
    st.lists(int64s, max_size=5),
    st.lists(any_floats, max_size=5),
)
metric_records = st.dictionaries(names, metric_values, max_size=5).map(MetricRecord)

config_scalars = [
    st.booleans(),
    int64s,
    any_floats,
    st.text(max_size=20),
    st.binary(max_size=20),
]
config_values = st.one_of(
    *config_scalars, *(st.lists(scalar, max_size=4) for scalar in config_scalars)
)
config_records = st.dictionaries(names, config_values, max_size=5).map(ConfigRecord)

record_dicts = st.dictionaries(
    names, st.one_of(array_records, metric_records, config_records), max_size=4
).map(RecordDict)

actions = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
message_types = st.one_of(
    st.sampled_from(["train", "evaluate", "query"]),
    st.builds("{}.{}".format, st.sampled_from(["train", "evaluate", "query"]), actions),
    st.builds("system.{}".format, st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,63}", fullmatch=True)),
)
ids = st.text(max_size=128)
times = st.one_of(
    st.just(-0.0),
    st.just(0.0),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)
metadatas = st.builds(
    Metadata,
    run_id=st.integers(0, UINT64_MAX),
    message_id=ids,
    src_node_id=st.integers(0, UINT64_MAX),
    dst_node_id=st.integers(0, UINT64_MAX),
    reply_to_message_id=ids,
    group_id=ids,
    message_type=message_types,
    ttl=times,
    created_at=times,
)
errors = st.builds(Error, code=int64s, reason=st.text(max_size=200))
messages = st.builds(Message.from_parts, metadatas, st.one_of(record_dicts, errors))


def expected_array(array: np.ndarray) -> np.ndarray:
    """What a decoder must give back: same values, C order, native byte order."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("="))


# --- records -------------------------------------------------------------------------------


@SETTINGS
@given(array=input_arrays(), name=names)
def test_array_round_trip(array: np.ndarray, name: str):
    record = ArrayRecord({name: array})
    decoded = decode_record_dict(encode_record_dict(RecordDict({"r": record})))
    out = decoded["r"][name]
    want = expected_array(array)
    assert out.dtype == want.dtype and out.dtype.isnative
    assert out.dtype.name == array.dtype.name
    assert out.shape == array.shape
    assert out.tobytes() == want.tobytes()  # bitwise: NaN payloads, -0.0 survive
    assert out.flags.writeable
    assert decoded["r"] == record


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_special_floats_round_trip_bitwise(dtype: str):
    bits = np.dtype(dtype.replace("float", "uint"))
    width = bits.itemsize * 8
    exp_mask = ((1 << (width - 1)) - 1) ^ ((1 << {16: 10, 32: 23, 64: 52}[width]) - 1)
    sign = 1 << (width - 1)
    patterns = [
        exp_mask | 1,  # signalling NaN
        exp_mask | (1 << ({16: 10, 32: 23, 64: 52}[width] - 1)),  # quiet NaN
        sign | exp_mask | 5,  # negative NaN with a payload
        exp_mask,  # +inf
        sign | exp_mask,  # -inf
        sign,  # -0.0
        1,  # smallest subnormal
    ]
    array = np.array(patterns, dtype=bits).view(dtype)
    record = RecordDict({"r": ArrayRecord({"x": array, "x2": array.reshape(7, 1)[::2]})})
    decoded = decode_record_dict(encode_record_dict(record))
    assert decoded["r"]["x"].view(bits).tolist() == patterns
    assert decoded["r"]["x2"].view(bits).ravel().tolist() == patterns[::2]


@SETTINGS
@given(record=metric_records)
def test_metric_record_round_trip(record: MetricRecord):
    decoded = decode_record_dict(encode_record_dict(RecordDict({"m": record})))
    assert type(decoded["m"]) is MetricRecord
    assert_same(decoded["m"], record)


@SETTINGS
@given(record=config_records)
def test_config_record_round_trip(record: ConfigRecord):
    decoded = decode_record_dict(encode_record_dict(RecordDict({"c": record})))
    assert type(decoded["c"]) is ConfigRecord
    assert_same(decoded["c"], record)


def test_record_values_keep_their_exact_type():
    """1, 1.0 and True are equal in Python; on the wire they must stay distinct."""
    record = ConfigRecord(
        {"i": 1, "f": 1.0, "b": True, "li": [1], "lf": [1.0], "lb": [True], "e": [], "z": -0.0}
    )
    decoded = decode_record_dict(encode_record_dict(RecordDict({"c": record})))["c"]
    assert [type(decoded[k]) for k in ("i", "f", "b")] == [int, float, bool]
    assert [type(decoded[k][0]) for k in ("li", "lf", "lb")] == [int, float, bool]
    assert decoded["e"] == [] and math.copysign(1.0, decoded["z"]) == -1.0
    limits = MetricRecord({"lo": INT64_MIN, "hi": INT64_MAX, "l": [INT64_MIN, INT64_MAX]})
    assert_same(decode_record_dict(encode_record_dict(RecordDict({"m": limits})))["m"], limits)


@SETTINGS
@given(records=record_dicts)
def test_record_dict_round_trip(records: RecordDict):
    data = encode_record_dict(records)
    decoded = decode_record_dict(data)
    assert list(decoded) == list(records)
    assert_same(decoded, records)
    # The three buffer types a caller may pass decode to the same value.
    assert_same(decode_record_dict(bytearray(data)), records)
    assert_same(decode_record_dict(memoryview(data)), records)


# --- messages --------------------------------------------------------------------------------


@SETTINGS
@given(message=messages)
def test_message_round_trip(message: Message):
    decoded = decode_message(encode_message(message))
    assert decoded.has_error() == message.has_error()
    assert_same(decoded, message)


def test_error_reply_round_trip_at_the_limits():
    request = Message(RecordDict(), dst_node_id=UINT64_MAX, message_type="system.ping")
    for error in (Error(0), Error(INT64_MIN, "x" * 4096), Error(INT64_MAX, "ünïcødé ✓")):
        reply = Message(error, reply_to=request)
        decoded = decode_message(encode_message(reply))
        assert decoded.has_error() and not decoded.has_content()
        assert_same(decoded, reply)


# --- canonical encoding -------------------------------------------------------------------------


@SETTINGS
@given(records=record_dicts)
def test_record_dict_encoding_is_deterministic(records: RecordDict):
    data = encode_record_dict(records)
    assert encode_record_dict(records) == data
    assert encode_record_dict(decode_record_dict(data)) == data


@SETTINGS
@given(message=messages)
def test_message_encoding_is_deterministic(message: Message):
    data = encode_message(message)
    assert encode_message(message) == data
    assert encode_message(decode_message(data)) == data


# --- memory ---------------------------------------------------------------------------------------


def _flip_all_bytes(array: np.ndarray) -> None:
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array)
    raw = flat.view(np.uint8)
    np.bitwise_not(raw, out=raw)


@SETTINGS
@given(records=record_dicts)
def test_arrays_decoded_from_bytes_are_writable_and_private(records: RecordDict):
    data = encode_record_dict(records)
    original = canonical(records)
    first = decode_record_dict(data)
    second = decode_record_dict(data)
    frame_memory = np.frombuffer(data, dtype=np.uint8)
    for record in first.array_records.values():
        for array in record.values():
            assert array.flags.writeable
            assert not np.shares_memory(array, frame_memory)
            if array.size:
                _flip_all_bytes(array)
    assert canonical(second) == original
    assert canonical(decode_record_dict(data)) == original
    touched = any(a.size for r in records.array_records.values() for a in r.values())
    assert (canonical(first) != original) == touched


@SETTINGS
@given(message=messages)
def test_message_arrays_decoded_from_bytes_are_private(message: Message):
    data = encode_message(message)
    first, second = decode_message(data), decode_message(data)
    if first.has_content():
        for record in first.content.array_records.values():
            for array in record.values():
                assert array.flags.writeable
                if array.size:
                    _flip_all_bytes(array)
    assert_same(second, message)


def test_bytearray_input_is_decoded_in_place():
    """Documented: a bytearray is not copied, its arrays share the caller's buffer."""
    array = np.arange(16, dtype=np.float32)
    data = bytearray(encode_record_dict(RecordDict({"r": ArrayRecord({"a": array})})))
    decoded = decode_record_dict(data)["r"]["a"]
    assert decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(data, dtype=np.uint8))
    decoded[0] = 42.0
    assert decode_record_dict(bytes(data))["r"]["a"][0] == 42.0


# --- what the records accept, the wire carries ---------------------------------------------------
# records.py: "anything a record holds can be encoded by appliance.wire without further
# checks". So for any value a constructor accepts, encoding must either round-trip it or
# refuse it with WireError -- never fail with another exception or produce a frame its
# own decoder refuses.


def _accepted_value_round_trips(build: Any, encode: Any, decode: Any) -> None:
    try:
        value = build()
    except (TypeError, ValueError):
        return  # the constructor refused it: fine
    try:
        data = encode(value)
    except WireError:
        return  # the encoder refused it cleanly: fine
    assert_same(decode(data), value)


# Any str Python can hold, lone surrogates included (``st.text`` would filter those out).
surrogate_text = st.lists(
    st.one_of(st.characters(codec="utf-8"), st.characters(categories=["Cs"])),
    min_size=1,
    max_size=8,
).map("".join)


@SETTINGS
@given(text=surrogate_text)
def test_any_text_a_record_accepts_is_carried(text: str):
    _accepted_value_round_trips(
        lambda: RecordDict({"c": ConfigRecord({text: text, "l": [text]})}),
        encode_record_dict,
        decode_record_dict,
    )
    _accepted_value_round_trips(
        lambda: RecordDict({text: ArrayRecord({text: np.zeros(1)})}),
        encode_record_dict,
        decode_record_dict,
    )


@SETTINGS
@given(text=surrogate_text)
def test_any_text_a_message_accepts_is_carried(text: str):
    request = Message(RecordDict(), dst_node_id=1, message_type="train")
    _accepted_value_round_trips(
        lambda: Message(RecordDict(), dst_node_id=1, message_type="train", group_id=text),
        encode_message,
        decode_message,
    )
    _accepted_value_round_trips(
        lambda: Message(Error(1, text), reply_to=request), encode_message, decode_message
    )


@SETTINGS
@given(code=st.integers())
def test_any_error_code_an_error_accepts_is_carried(code: int):
    request = Message(RecordDict(), dst_node_id=1, message_type="train")
    _accepted_value_round_trips(
        lambda: Message(Error(code, "reason"), reply_to=request), encode_message, decode_message
    )


@pytest.mark.parametrize("ndim", [32, 33, 64])
def test_any_array_a_record_accepts_is_carried(ndim: int):
    _accepted_value_round_trips(
        lambda: RecordDict({"r": ArrayRecord({"a": np.zeros((1,) * ndim, dtype=np.float32)})}),
        encode_record_dict,
        decode_record_dict,
    )

"""Malformed-input tests for the wire codec: every bad frame must raise ``WireError``.

Frames are crafted by hand: headers are built with the generated protobuf classes (or
as raw protobuf bytes, for what those classes refuse to produce) and framed with the
version-1 prefix ``struct.pack("<4scI", b"GHW\\x01", kind, len(header))``.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from appliance.message import Error, Message, Metadata
from appliance.proto import message_pb2 as pb
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from appliance.wire import (
    WireError,
    decode_message,
    decode_record_dict,
    encode_message,
    encode_message_parts,
    encode_record_dict,
    encode_record_dict_hashed,
)

MAGIC = b"GHW\x01"
KIND_MESSAGE = b"M"
KIND_RECORD_DICT = b"R"
PREFIX = struct.Struct("<4scI")
MAX_HEADER_BYTES = 64 * 2**20

Decoder = Callable[..., Any]

# --- helpers ---------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def len_field(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return key(field, 2) + varint(len(payload)) + payload


def ser(message: Any) -> bytes:
    return message.SerializeToString(deterministic=True)


def frame(
    header: Any,
    payload: bytes = b"",
    *,
    kind: bytes = KIND_RECORD_DICT,
    magic: bytes = MAGIC,
    header_len: int | None = None,
) -> bytes:
    """A frame around ``header`` (a pb message or raw bytes) and ``payload``."""
    raw = header if isinstance(header, bytes) else ser(header)
    size = len(raw) if header_len is None else header_len
    return PREFIX.pack(magic, kind, size) + raw + payload


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(prefix, header, payload) of a well-formed frame."""
    _, _, size = PREFIX.unpack_from(data)
    end = PREFIX.size + size
    return data[: PREFIX.size], data[PREFIX.size : end], data[end:]


def reframe(data: bytes, header: bytes) -> bytes:
    """``data`` with its header replaced by ``header`` (length fixed up)."""
    prefix, _, payload = split(data)
    magic, kind, _ = PREFIX.unpack(prefix)
    return PREFIX.pack(magic, kind, len(header)) + header + payload


def array_spec(shape: list[int], nbytes: int, dtype: str = "float32", name: str = "a") -> pb.Array:
    return pb.Array(name=name, dtype=dtype, shape=shape, nbytes=nbytes)


def arrays_header(*specs: pb.Array, name: str = "r") -> pb.RecordDict:
    return pb.RecordDict(records=[pb.Record(name=name, arrays=pb.ArrayRecord(arrays=list(specs)))])


def entries_header(*entries: pb.Entry, kind: str = "metrics", name: str = "r") -> pb.RecordDict:
    record = pb.Record(name=name)
    getattr(record, kind).SetInParent()
    getattr(record, kind).entries.extend(entries)
    return pb.RecordDict(records=[record])


METADATA: dict[str, Any] = {
    "run_id": 3,
    "message_id": "m-1",
    "src_node_id": 0,
    "dst_node_id": 7,
    "reply_to_message_id": "",
    "group_id": "round-1",
    "message_type": "train",
    "ttl": 60.0,
    "created_at": 1_700_000_000.0,
}


def metadata_pb(**changes: Any) -> pb.Metadata:
    return pb.Metadata(**{**METADATA, **changes})


def sample_metadata(**changes: Any) -> Metadata:
    return Metadata(**{**METADATA, **changes})


def sample_records() -> RecordDict:
    return RecordDict(
        {
            "params": ArrayRecord(
                {
                    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
                    "mask": np.array([True, False, True]),
                    "step": np.array(7, dtype=np.int64),
                    "empty": np.zeros((0, 4), dtype=np.float16),
                    "b": np.array([-1, 2], dtype=np.int8),
                }
            ),
            "metrics": MetricRecord({"loss": 0.25, "n": 12, "curve": [0.5, 0.25]}),
            "config": ConfigRecord(
                {"lr": 0.1, "name": "résumé", "blob": b"\x00\xff", "on": True, "ids": [1, 2]}
            ),
        }
    )


RECORD_FRAME = encode_record_dict(sample_records())
MESSAGE_FRAME = encode_message(Message.from_parts(sample_metadata(), sample_records()))
ERROR_FRAME = encode_message(
    Message.from_parts(
        sample_metadata(src_node_id=7, dst_node_id=0, reply_to_message_id="m-0"),
        Error(code=1, reason="boom"),
    )
)


def test_helpers_reproduce_the_encoder():
    """The hand-made frames below are only meaningful if the helpers frame like wire.py."""
    records = RecordDict({"r": ArrayRecord({"a": np.array([1.5], dtype=np.float32)})})
    expected = frame(arrays_header(array_spec([1], 4)), np.array([1.5], dtype="<f4").tobytes())
    assert encode_record_dict(records) == expected
    assert decode_record_dict(expected) == records
    prefix, header, _ = split(MESSAGE_FRAME)
    assert prefix[:5] == MAGIC + KIND_MESSAGE
    assert reframe(MESSAGE_FRAME, header) == MESSAGE_FRAME
    assert pb.Message.FromString(header).metadata == metadata_pb()


# --- framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [decode_message, decode_record_dict])
@pytest.mark.parametrize(
    "data", [b"", bytearray(), memoryview(b"")], ids=["bytes", "bytearray", "memoryview"]
)
def test_empty_input(decode: Decoder, data: Any):
    with pytest.raises(WireError, match="frame is 0 bytes, shorter than its 9-byte prefix"):
        decode(data)


TRUNCATION = (
    r"shorter than its 9-byte prefix|header declares \d+ bytes, frame has \d+|needs payload bytes"
)


@pytest.mark.parametrize(
    ("data", "decode"),
    [
        (RECORD_FRAME, decode_record_dict),
        (MESSAGE_FRAME, decode_message),
        (ERROR_FRAME, decode_message),
    ],
    ids=["record-dict", "message", "error-reply"],
)
def test_every_truncation_is_refused(data: bytes, decode: Decoder):
    decode(data)  # the whole frame is fine
    for cut in range(len(data)):
        for prefix in (data[:cut], bytearray(data[:cut])):
            with pytest.raises(WireError, match=TRUNCATION):
                decode(prefix)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 64,
        b"hello, this is not a frame at all",
        b"\xff" * 9,
        bytes(random.Random(1).randrange(256) for _ in range(512)),
        b"PK\x03\x04" + bytes(60),  # a zip file
        b"\x80\x04\x95" + bytes(30),  # a pickle: never unpickled
    ],
    ids=["zeros", "text", "ff", "random", "zip", "pickle"],
)
@pytest.mark.parametrize("decode", [decode_message, decode_record_dict])
def test_garbage_is_not_a_frame(decode: Decoder, data: bytes):
    with pytest.raises(WireError, match="not a Greenhouse v1 frame"):
        decode(data)


@pytest.mark.parametrize(
    "magic", [b"GHX\x01", b"ghw\x01", b"\x00GHW", b"GHW\x00", b"GHW\x02", b"GHW\xff"]
)
def test_wrong_magic_or_version(magic: bytes):
    data = magic + RECORD_FRAME[4:]
    with pytest.raises(WireError, match=r"not a Greenhouse v1 frame \(starts with"):
        decode_record_dict(data)


def test_wrong_kind():
    with pytest.raises(WireError, match=r"expected a frame of kind b'M', found b'R'"):
        decode_message(RECORD_FRAME)
    with pytest.raises(WireError, match=r"expected a frame of kind b'R', found b'M'"):
        decode_record_dict(MESSAGE_FRAME)
    for kind in (b"X", b"m", b"\x00"):
        with pytest.raises(WireError, match=r"expected a frame of kind b'R'"):
            decode_record_dict(RECORD_FRAME[:4] + kind + RECORD_FRAME[5:])


def test_header_length_larger_than_frame():
    _, header, _ = split(RECORD_FRAME)
    # Header alone, declared one byte longer than it is.
    data = frame(header, header_len=len(header) + 1)
    with pytest.raises(
        WireError, match=rf"header declares {len(header) + 1} bytes, frame has {len(header)}"
    ):
        decode_record_dict(data)
    with pytest.raises(WireError, match=r"header declares 4294967295 bytes, more than"):
        decode_record_dict(frame(header, header_len=2**32 - 1))


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 2**31, 2**32 - 1])
def test_header_length_over_the_limit(size: int):
    match = rf"header declares {size} bytes, more than {MAX_HEADER_BYTES}"
    with pytest.raises(WireError, match=match):
        decode_message(frame(b"", kind=KIND_MESSAGE, header_len=size))
    with pytest.raises(WireError, match=match):
        decode_record_dict(frame(b"", header_len=size))


@pytest.mark.parametrize(
    ("data", "decode"),
    [(RECORD_FRAME, decode_record_dict), (MESSAGE_FRAME, decode_message)],
    ids=["record-dict", "message"],
)
def test_max_bytes_is_honoured(data: bytes, decode: Decoder):
    decode(data, max_bytes=len(data))
    with pytest.raises(
        WireError, match=rf"frame is {len(data)} bytes, more than the limit of {len(data) - 1}"
    ):
        decode(data, max_bytes=len(data) - 1)
    with pytest.raises(WireError, match="more than the limit of 0"):
        decode(data, max_bytes=0)
    # The limit is checked before anything else (a cheap refusal of a huge input).
    with pytest.raises(WireError, match="more than the limit of 8"):
        decode(b"garbage!" + b"\x00" * 100, max_bytes=8)


# --- non-canonical headers --------------------------------------------------------------

UNKNOWN_FIELD = key(15, 0) + varint(1)  # field 15, varint 1: in no message of the schema


def _metadata_fields_reversed() -> bytes:
    full = metadata_pb()
    parts = []
    for field in pb.Metadata.DESCRIPTOR.fields:
        single = pb.Metadata()
        setattr(single, field.name, getattr(full, field.name))
        parts.append(ser(single))
    return b"".join(reversed(parts))


def _message_header(*, metadata: bytes | None = None, content: bytes | None = None) -> bytes:
    """A Message header from raw sub-message bytes (metadata field 1, content field 2)."""
    _, header, _ = split(MESSAGE_FRAME)
    parsed = pb.Message.FromString(header)
    meta = ser(parsed.metadata) if metadata is None else metadata
    body = ser(parsed.content) if content is None else content
    return len_field(1, meta) + len_field(2, body)


def _nested_unknown_in_array_spec() -> bytes:
    spec = ser(array_spec([1], 4)) + UNKNOWN_FIELD
    record = len_field(1, b"r") + len_field(2, len_field(1, spec))
    return len_field(1, record)


_MSG_HEADER = split(MESSAGE_FRAME)[1]
_RD_HEADER = split(RECORD_FRAME)[1]


@dataclass(frozen=True)
class Frame:
    data: bytes
    decode: Decoder


NON_CANONICAL = {
    "unknown field prepended (record dict)": Frame(
        reframe(RECORD_FRAME, UNKNOWN_FIELD + _RD_HEADER), decode_record_dict
    ),
    "unknown field prepended (message)": Frame(
        reframe(MESSAGE_FRAME, UNKNOWN_FIELD + _MSG_HEADER), decode_message
    ),
    "unknown field appended (record dict)": Frame(
        reframe(RECORD_FRAME, _RD_HEADER + UNKNOWN_FIELD), decode_record_dict
    ),
    "unknown field appended (message)": Frame(
        reframe(MESSAGE_FRAME, _MSG_HEADER + UNKNOWN_FIELD), decode_message
    ),
    "unknown 1 KiB blob appended (message)": Frame(
        reframe(MESSAGE_FRAME, _MSG_HEADER + len_field(99, b"smuggled" * 128)), decode_message
    ),
    "unknown field at the end of nested metadata": Frame(
        reframe(
            MESSAGE_FRAME,
            _message_header(metadata=ser(metadata_pb()) + UNKNOWN_FIELD),
        ),
        decode_message,
    ),
    "unknown field at the end of a nested array spec": Frame(
        frame(_nested_unknown_in_array_spec(), b"\x00" * 4), decode_record_dict
    ),
    "known field with the wrong wire type": Frame(
        frame(key(1, 0) + varint(1)),
        decode_record_dict,  # records (LEN) sent as a varint
    ),
    "unknown (empty) group appended (record dict)": Frame(
        reframe(RECORD_FRAME, _RD_HEADER + key(15, 3) + key(15, 4)), decode_record_dict
    ),
    "top-level fields reordered (content before metadata)": Frame(
        reframe(
            MESSAGE_FRAME,
            len_field(2, ser(pb.Message.FromString(_MSG_HEADER).content))
            + len_field(1, ser(metadata_pb())),
        ),
        decode_message,
    ),
    "metadata fields reordered": Frame(
        reframe(MESSAGE_FRAME, _message_header(metadata=_metadata_fields_reversed())),
        decode_message,
    ),
    "default value written explicitly (run_id = 0)": Frame(
        reframe(
            MESSAGE_FRAME,
            _message_header(metadata=key(1, 0) + varint(0) + ser(metadata_pb(run_id=0))),
        ),
        decode_message,
    ),
    "singular field repeated (last one wins)": Frame(
        reframe(
            MESSAGE_FRAME,
            _message_header(metadata=ser(metadata_pb()) + len_field(7, b"evaluate")),
        ),
        decode_message,
    ),
    "sub-message split in two (merged on parse)": Frame(
        reframe(
            MESSAGE_FRAME,
            len_field(1, ser(metadata_pb(message_type=""))) + _MSG_HEADER,
        ),
        decode_message,
    ),
    "repeated field not packed": Frame(
        frame(
            len_field(
                1,
                len_field(1, b"r")
                + len_field(
                    2,
                    len_field(
                        1,
                        len_field(1, b"a")
                        + len_field(2, b"float32")
                        + key(3, 0)
                        + varint(1)  # shape [1] as a lone varint
                        + key(4, 0)
                        + varint(4),
                    ),
                ),
            ),
            b"\x00" * 4,
        ),
        decode_record_dict,
    ),
    "overlong varint": Frame(
        frame(
            len_field(
                1,
                len_field(1, b"r")
                + len_field(
                    2,
                    len_field(
                        1,
                        len_field(1, b"a")
                        + len_field(2, b"float32")
                        + len_field(3, b"\x01")
                        + key(4, 0)
                        + b"\x84\x00",  # 4, in two bytes
                    ),
                ),
            ),
            b"\x00" * 4,
        ),
        decode_record_dict,
    ),
}


@pytest.mark.parametrize("case", NON_CANONICAL.values(), ids=list(NON_CANONICAL))
def test_non_canonical_header_is_refused(case: Frame):
    with pytest.raises(WireError, match="header is not in canonical form"):
        case.decode(case.data)


MALFORMED_PROTOBUF = {
    "truncated varint": key(1, 0) + b"\x80",
    "length past the end": key(1, 2) + varint(50) + b"xx",
    "wire type 7": bytes([1 << 3 | 7]),
    "group start": key(1, 3),
    "field number 0": key(0, 0) + b"\x01",
    "nested length past its parent": len_field(1, len_field(1, b"r")[:-1]) + b"r",
}


@pytest.mark.parametrize("header", MALFORMED_PROTOBUF.values(), ids=list(MALFORMED_PROTOBUF))
def test_malformed_protobuf_header(header: bytes):
    with pytest.raises(WireError, match="malformed header"):
        decode_record_dict(frame(header))
    with pytest.raises(WireError, match="malformed header"):
        decode_message(frame(header, kind=KIND_MESSAGE))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("depth", [101, 200, 100_000])
def test_deeply_nested_header_is_refused_without_recursion_error(depth: int):
    # The schema has no recursive message, but unknown groups nest without limit.
    header = key(15, 3) * depth + key(15, 4) * depth
    with pytest.raises(WireError, match="malformed header"):
        decode_record_dict(frame(header))


# --- array specs -------------------------------------------------------------------------

ARRAY_CASES = {
    "shape [10] float32 with nbytes 4": (
        arrays_header(array_spec([10], 4)),
        b"\x00" * 4,
        r"shape \[10\] of float32 needs 40 bytes, header declares 4",
    ),
    "nbytes larger than shape": (
        arrays_header(array_spec([1], 8)),
        b"\x00" * 8,
        r"shape \[1\] of float32 needs 4 bytes, header declares 8",
    ),
    "dtype object": (
        arrays_header(array_spec([1], 8, "object")),
        b"\x00" * 8,
        "unsupported dtype 'object'",
    ),
    "dtype complex64": (
        arrays_header(array_spec([1], 8, "complex64")),
        b"\x00" * 8,
        "unsupported dtype 'complex64'",
    ),
    "dtype <f4": (arrays_header(array_spec([1], 4, "<f4")), b"\x00" * 4, "unsupported dtype '<f4'"),
    "dtype >f4": (arrays_header(array_spec([1], 4, ">f4")), b"\x00" * 4, "unsupported dtype '>f4'"),
    "dtype float128": (
        arrays_header(array_spec([1], 16, "float128")),
        b"\x00" * 16,
        "unsupported dtype",
    ),
    "dtype O": (arrays_header(array_spec([1], 8, "O")), b"\x00" * 8, "unsupported dtype 'O'"),
    "dtype empty": (arrays_header(array_spec([1], 4, "")), b"\x00" * 4, "unsupported dtype ''"),
    "dtype Float32": (
        arrays_header(array_spec([1], 4, "Float32")),
        b"\x00" * 4,
        "unsupported dtype",
    ),
    "dtype float32 with a space": (
        arrays_header(array_spec([1], 4, "float32 ")),
        b"\x00" * 4,
        "unsupported dtype",
    ),
    "dtype very long": (
        arrays_header(array_spec([1], 4, "x" * 10_000)),
        b"\x00" * 4,
        r"unsupported dtype 'x{32}'",
    ),
    "shape [2**40, 2**40], nbytes huge": (
        arrays_header(array_spec([2**40, 2**40], 2**64 - 1)),
        b"",
        r"needs 4835703278458516698824704 bytes, header declares 18446744073709551615",
    ),
    "shape [2**64-1] * 4": (
        arrays_header(array_spec([2**64 - 1] * 4, 2**64 - 1)),
        b"",
        "needs .* bytes, header declares",
    ),
    "consistent 8 EiB array, tiny payload": (
        arrays_header(array_spec([2**30, 2**31], 2**63)),
        b"\x00" * 64,
        r"needs payload bytes 0\.\.9223372036854775808, payload has 64",
    ),
    "zero-size array with an impossible dimension": (
        arrays_header(array_spec([0, 2**64 - 1], 0)),
        b"",
        "invalid (record dict|message): Maximum allowed dimension exceeded",
    ),
    "zero-size array too big for numpy": (
        arrays_header(array_spec([0, 2**40, 2**40], 0)),
        b"",
        "invalid (record dict|message): array is too big",
    ),
    "33 dimensions": (
        arrays_header(array_spec([1] * 33, 4)),
        b"\x00" * 4,
        "33 dimensions, at most 32 allowed",
    ),
    "10_000 dimensions": (
        arrays_header(array_spec([1] * 10_000, 4)),
        b"\x00" * 4,
        "10000 dimensions, at most 32 allowed",
    ),
    "second array not padded to 64 bytes": (
        arrays_header(array_spec([1], 4, name="a"), array_spec([1], 4, name="b")),
        b"\x00" * 8,
        r"\['b'\]: needs payload bytes 64\.\.68, payload has 8",
    ),
    "non-zero padding": (
        arrays_header(array_spec([1], 4, name="a"), array_spec([1], 4, name="b")),
        b"\x00" * 4 + b"\x00" * 59 + b"\x01" + b"\x00" * 4,
        r"\['b'\]: non-zero padding before the array",
    ),
    "trailing byte": (
        arrays_header(array_spec([1], 4)),
        b"\x00" * 5,
        r"payload has 1 (trailing )?bytes",
    ),
    "trailing padding after the last array": (
        arrays_header(array_spec([1], 4)),
        b"\x00" * 64,
        r"payload has 60 (trailing )?bytes",
    ),
    "payload but no arrays": (pb.RecordDict(), b"\x00", r"payload has 1 (trailing )?bytes"),
    "zero-size array takes no padding": (
        arrays_header(array_spec([1], 4, name="a"), array_spec([0], 0, name="z")),
        b"\x00" * 64,
        r"payload has 60 (trailing )?bytes",
    ),
    "bool byte 2": (
        arrays_header(array_spec([3], 3, "bool")),
        b"\x00\x01\x02",
        "bool array holds bytes other than 0 and 1",
    ),
    "bool byte 0xff": (
        arrays_header(array_spec([2, 2], 4, "bool")),
        b"\x01\x01\x01\xff",
        "bool array holds bytes other than 0 and 1",
    ),
    "duplicate array names": (
        arrays_header(array_spec([1], 4, name="w"), array_spec([1], 4, name="w")),
        b"\x00" * 68,
        r"record 'r': duplicate name 'w'",
    ),
    "empty array name": (
        arrays_header(array_spec([1], 4, name="")),
        b"\x00" * 4,
        "ArrayRecord keys must not be empty",
    ),
    "array name too long": (
        arrays_header(array_spec([1], 4, name="n" * 257)),
        b"\x00" * 4,
        "longer than 256 characters",
    ),
}


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("header", "payload", "match"), ARRAY_CASES.values(), ids=list(ARRAY_CASES)
)
def test_bad_array_is_refused(header: pb.RecordDict, payload: bytes, match: str):
    # The timeout marker guards against a loop; tracemalloc proves that a declared
    # size (up to 2**80 bytes here) is refused before anything of that size is allocated.
    record_frame = frame(header, payload)
    message_frame = frame(
        pb.Message(metadata=metadata_pb(), content=header), payload, kind=KIND_MESSAGE
    )
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match=match):
            decode_record_dict(record_frame)
        with pytest.raises(WireError, match=match):
            decode_message(message_frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000 + 2 * len(record_frame), f"refusing a bad spec allocated {peak} bytes"


def test_array_limits_at_the_boundary_are_accepted():
    """The refusals above are not over-eager: the largest valid forms decode."""
    decoded = decode_record_dict(frame(arrays_header(array_spec([1] * 32, 4)), b"\x00" * 4))
    assert decoded["r"]["a"].shape == (1,) * 32
    decoded = decode_record_dict(
        frame(arrays_header(array_spec([4], 4, "bool")), b"\x00\x01\x01\x00")
    )
    assert decoded["r"]["a"].tolist() == [False, True, True, False]
    decoded = decode_record_dict(frame(arrays_header(array_spec([0, 2**20], 0))))
    assert decoded["r"]["a"].shape == (0, 2**20)


# --- records and values -------------------------------------------------------------------

RECORD_CASES = {
    "duplicate record names": (
        pb.RecordDict(
            records=[
                pb.Record(name="r", metrics=pb.MetricRecord()),
                pb.Record(name="r", configs=pb.ConfigRecord()),
            ]
        ),
        r"RecordDict: duplicate name 'r'",
    ),
    "empty record name": (
        pb.RecordDict(records=[pb.Record(name="", metrics=pb.MetricRecord())]),
        "RecordDict keys must not be empty",
    ),
    "record with no kind": (
        pb.RecordDict(records=[pb.Record(name="r")]),
        "record 'r': record has no kind",
    ),
    "duplicate metric keys": (
        entries_header(
            pb.Entry(key="loss", value=pb.Value(double=1.0)),
            pb.Entry(key="loss", value=pb.Value(double=2.0)),
        ),
        r"record 'r': duplicate name 'loss'",
    ),
    "duplicate config keys": (
        entries_header(
            pb.Entry(key="lr", value=pb.Value(double=1.0)),
            pb.Entry(key="lr", value=pb.Value(string="x")),
            kind="configs",
        ),
        r"record 'r': duplicate name 'lr'",
    ),
    "empty metric key": (
        entries_header(pb.Entry(key="", value=pb.Value(sint=1))),
        "MetricRecord keys must not be empty",
    ),
    "config key too long": (
        entries_header(pb.Entry(key="k" * 257, value=pb.Value(sint=1)), kind="configs"),
        "longer than 256 characters",
    ),
    "value with no oneof set": (
        entries_header(pb.Entry(key="k", value=pb.Value())),
        r"record 'r'\['k'\]: value is missing",
    ),
    "entry without a value": (
        entries_header(pb.Entry(key="k"), kind="configs"),
        r"record 'r'\['k'\]: value is missing",
    ),
    "metric holding a string": (
        entries_header(pb.Entry(key="k", value=pb.Value(string="x"))),
        r"MetricRecord\['k'\] is a str",
    ),
    "metric holding bytes": (
        entries_header(pb.Entry(key="k", value=pb.Value(bytes=b"x"))),
        r"MetricRecord\['k'\] is a bytes",
    ),
    "metric holding a bool": (
        entries_header(pb.Entry(key="k", value=pb.Value(bool=True))),
        r"MetricRecord\['k'\] is a bool",
    ),
    "metric holding a bool list": (
        entries_header(pb.Entry(key="k", value=pb.Value(bool_list=pb.BoolList(values=[True])))),
        r"MetricRecord\['k'\] list holds a bool",
    ),
    "metric holding a string list": (
        entries_header(pb.Entry(key="k", value=pb.Value(string_list=pb.StringList(values=["a"])))),
        r"MetricRecord\['k'\] list holds a str",
    ),
}


@pytest.mark.parametrize(("header", "match"), RECORD_CASES.values(), ids=list(RECORD_CASES))
def test_bad_record_is_refused(header: pb.RecordDict, match: str):
    with pytest.raises(WireError, match=match):
        decode_record_dict(frame(header))
    with pytest.raises(WireError, match=match):
        decode_message(frame(pb.Message(metadata=metadata_pb(), content=header), kind=KIND_MESSAGE))


# --- invalid UTF-8 -------------------------------------------------------------------------

PLACEHOLDER = "\x1aZZZ"


def _with_bad_utf8(header: Any, bad: bytes) -> bytes:
    raw = ser(header)
    assert raw.count(PLACEHOLDER.encode()) == 1
    assert len(bad) == len(PLACEHOLDER)
    return raw.replace(PLACEHOLDER.encode(), bad)


_P = PLACEHOLDER
UTF8_SITES = {
    "record name": (
        pb.RecordDict(records=[pb.Record(name=_P, metrics=pb.MetricRecord())]),
        KIND_RECORD_DICT,
    ),
    "array name": (arrays_header(array_spec([0], 0, name=_P)), KIND_RECORD_DICT),
    "array dtype": (arrays_header(array_spec([0], 0, dtype=_P)), KIND_RECORD_DICT),
    "metric key": (entries_header(pb.Entry(key=_P, value=pb.Value(sint=1))), KIND_RECORD_DICT),
    "config string": (
        entries_header(pb.Entry(key="k", value=pb.Value(string=_P)), kind="configs"),
        KIND_RECORD_DICT,
    ),
    "config string list item": (
        entries_header(
            pb.Entry(key="k", value=pb.Value(string_list=pb.StringList(values=["ok", _P]))),
            kind="configs",
        ),
        KIND_RECORD_DICT,
    ),
    "message_id": (
        pb.Message(metadata=metadata_pb(message_id=_P), content=pb.RecordDict()),
        KIND_MESSAGE,
    ),
    "message_type": (
        pb.Message(metadata=metadata_pb(message_type=_P), content=pb.RecordDict()),
        KIND_MESSAGE,
    ),
    "group_id": (
        pb.Message(metadata=metadata_pb(group_id=_P), content=pb.RecordDict()),
        KIND_MESSAGE,
    ),
    "error reason": (
        pb.Message(metadata=metadata_pb(), error=pb.Error(code=1, reason=_P)),
        KIND_MESSAGE,
    ),
}
BAD_UTF8 = {
    "0xff": b"\xff\xff\xff\xff",
    "lone continuation": b"a\x80bc",
    "overlong slash": b"ab\xc0\xaf",
    "encoded surrogate": b"a\xed\xa0\x80",
    "truncated sequence": b"abc\xe2",
    "beyond U+10FFFF": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize("bad", BAD_UTF8.values(), ids=list(BAD_UTF8))
@pytest.mark.parametrize(("header", "kind"), UTF8_SITES.values(), ids=list(UTF8_SITES))
def test_invalid_utf8_is_refused(header: Any, kind: bytes, bad: bytes):
    data = frame(_with_bad_utf8(header, bad), kind=kind)
    decode = decode_message if kind == KIND_MESSAGE else decode_record_dict
    with pytest.raises(WireError, match=r"malformed header: .*UTF-8"):
        decode(data)


def test_invalid_utf8_crafted_by_hand():
    # RecordDict.records[0] = Record{name: b"\xff"} : tag, length, then the raw byte.
    header = key(1, 2) + varint(3) + key(1, 2) + varint(1) + b"\xff"
    with pytest.raises(WireError, match=r"malformed header: .*UTF-8"):
        decode_record_dict(frame(header))


# --- messages ----------------------------------------------------------------------------

MESSAGE_CASES = {
    "metadata missing": (pb.Message(content=pb.RecordDict()), "message has no metadata"),
    "metadata missing (error reply)": (
        pb.Message(error=pb.Error(code=1)),
        "message has no metadata",
    ),
    "body missing": (pb.Message(metadata=metadata_pb()), "message has neither content nor error"),
    "message_type bogus": (
        pb.Message(metadata=metadata_pb(message_type="bogus"), content=pb.RecordDict()),
        "invalid message_type 'bogus'",
    ),
    "message_type empty": (
        pb.Message(metadata=metadata_pb(message_type=""), content=pb.RecordDict()),
        "invalid message_type ''",
    ),
    "message_type upper case": (
        pb.Message(metadata=metadata_pb(message_type="TRAIN"), content=pb.RecordDict()),
        "invalid message_type 'TRAIN'",
    ),
    "message_type system without action": (
        pb.Message(metadata=metadata_pb(message_type="system"), content=pb.RecordDict()),
        "invalid message_type 'system'",
    ),
    "message_type with a trailing newline": (
        pb.Message(metadata=metadata_pb(message_type="train\n"), content=pb.RecordDict()),
        r"invalid message_type 'train\\n'",
    ),
    "message_type with an action and a trailing newline": (
        pb.Message(metadata=metadata_pb(message_type="system.ping\n"), content=pb.RecordDict()),
        r"invalid message_type 'system.ping\\n'",
    ),
    "ttl negative": (
        pb.Message(metadata=metadata_pb(ttl=-1.0), content=pb.RecordDict()),
        "ttl must be finite and >= 0, got -1.0",
    ),
    "ttl NaN": (
        pb.Message(metadata=metadata_pb(ttl=math.nan), content=pb.RecordDict()),
        "ttl must be finite and >= 0, got nan",
    ),
    "ttl inf": (
        pb.Message(metadata=metadata_pb(ttl=math.inf), content=pb.RecordDict()),
        "ttl must be finite and >= 0, got inf",
    ),
    "ttl -inf": (
        pb.Message(metadata=metadata_pb(ttl=-math.inf), content=pb.RecordDict()),
        "ttl must be finite and >= 0, got -inf",
    ),
    "created_at NaN": (
        pb.Message(metadata=metadata_pb(created_at=math.nan), content=pb.RecordDict()),
        "created_at must be finite and >= 0, got nan",
    ),
    "created_at negative": (
        pb.Message(metadata=metadata_pb(created_at=-5.0), content=pb.RecordDict()),
        "created_at must be finite and >= 0",
    ),
    "message_id too long": (
        pb.Message(metadata=metadata_pb(message_id="x" * 129), content=pb.RecordDict()),
        "message_id is longer than 128 characters",
    ),
    "group_id too long": (
        pb.Message(metadata=metadata_pb(group_id="é" * 129), content=pb.RecordDict()),
        "group_id is longer than 128 characters",
    ),
}


@pytest.mark.parametrize(("header", "match"), MESSAGE_CASES.values(), ids=list(MESSAGE_CASES))
def test_bad_message_is_refused(header: pb.Message, match: str):
    with pytest.raises(WireError, match=match):
        decode_message(frame(header, kind=KIND_MESSAGE))


def test_error_reply_with_a_payload_is_refused():
    with pytest.raises(WireError, match=r"payload has 1 (trailing )?bytes"):
        decode_message(ERROR_FRAME + b"\x00")


def test_message_accepts_its_own_encodings():
    """The sample frames decode (so the refusals above are about the mutation)."""
    message = decode_message(MESSAGE_FRAME)
    assert message.content == sample_records()
    reply = decode_message(ERROR_FRAME)
    assert reply.error == Error(code=1, reason="boom")
    assert (
        decode_message(
            frame(pb.Message(metadata=metadata_pb(), content=pb.RecordDict()), kind=KIND_MESSAGE)
        ).content
        == RecordDict()
    )


# --- accepted frames are canonical ----------------------------------------------------------

ODD_BUT_PARSEABLE = {
    "error reason longer than 4096 characters": Frame(
        frame(
            pb.Message(metadata=metadata_pb(), error=pb.Error(code=1, reason="r" * 5000)),
            kind=KIND_MESSAGE,
        ),
        decode_message,
    ),
    "empty list sent as bool_list": Frame(
        frame(
            entries_header(
                pb.Entry(key="k", value=pb.Value(bool_list=pb.BoolList())), kind="configs"
            )
        ),
        decode_record_dict,
    ),
    "empty list sent as string_list": Frame(
        frame(
            entries_header(
                pb.Entry(key="k", value=pb.Value(string_list=pb.StringList())), kind="configs"
            )
        ),
        decode_record_dict,
    ),
    "empty metric list sent as double_list": Frame(
        frame(entries_header(pb.Entry(key="k", value=pb.Value(double_list=pb.DoubleList())))),
        decode_record_dict,
    ),
    "empty metric list sent as bytes_list": Frame(
        frame(entries_header(pb.Entry(key="k", value=pb.Value(bytes_list=pb.BytesList())))),
        decode_record_dict,
    ),
}


@pytest.mark.parametrize("case", ODD_BUT_PARSEABLE.values(), ids=list(ODD_BUT_PARSEABLE))
def test_a_frame_that_decodes_is_the_canonical_encoding_of_its_value(case: Frame):
    """wire.py: "one value has exactly one encoding, and a decoder refuses any other"."""
    try:
        decoded = case.decode(case.data)
    except WireError:
        return
    encode = encode_message if isinstance(decoded, Message) else encode_record_dict
    assert encode(decoded) == case.data, (
        f"accepted a non-canonical frame, decoded as {decoded!r:.200}"
    )


# --- random fuzzing ---------------------------------------------------------------------------

SEEDS = [
    (MESSAGE_FRAME, decode_message),
    (ERROR_FRAME, decode_message),
    (RECORD_FRAME, decode_record_dict),
    (
        encode_message(Message.from_parts(sample_metadata(), RecordDict())),
        decode_message,
    ),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One random mutation, biased towards the header (where the parser works)."""
    buf = bytearray(data)
    _, header, _ = split(data)
    header_end = PREFIX.size + len(header)
    op = rng.randrange(7)
    if op == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)
    if op == 1:  # flip a bit of the header
        i = rng.randrange(PREFIX.size, header_end)
        buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if op == 2:  # overwrite header bytes with "interesting" values
        i = rng.randrange(PREFIX.size, header_end)
        buf[i] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, 0x22])
        return bytes(buf)
    if op == 3:  # insert random bytes into the header, fixing its length
        i = rng.randrange(len(header) + 1)
        new = header[:i] + rng.randbytes(rng.randint(1, 6)) + header[i:]
        return reframe(data, new)
    if op == 4:  # delete a span of the header, fixing its length
        i = rng.randrange(len(header))
        new = header[:i] + header[i + rng.randint(1, 4) :]
        return reframe(data, new)
    if op == 5:  # change the header length field only
        size = max(0, len(header) + rng.randint(-8, 8))
        return data[:5] + struct.pack("<I", size) + data[PREFIX.size :]
    # splice: the header of one seed with the payload of another
    other = rng.choice(SEEDS)[0]
    return reframe(other, header) if other[4:5] == data[4:5] else data + rng.randbytes(3)


def _fuzz_cases(iterations: int, seed: int) -> list[tuple[bytes, Decoder]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(iterations):
        data, decode = rng.choice(SEEDS)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = _mutate(rng, data)
        cases.append((data, decode))
    return cases


FUZZ_CASES = _fuzz_cases(3000, seed=20_24)


@pytest.mark.timeout(60)
def test_fuzzed_frames_raise_only_wire_error():
    outcomes = {"decoded": 0, "refused": 0}
    for data, decode in FUZZ_CASES:
        for buffer in (data, bytearray(data)):
            try:
                result = decode(buffer)
            except WireError:
                outcomes["refused"] += 1
            else:
                expected = Message if decode is decode_message else RecordDict
                assert isinstance(result, expected)
                outcomes["decoded"] += 1
    assert outcomes["refused"] > 0.5 * 2 * len(FUZZ_CASES)


@pytest.mark.timeout(60)
def test_fuzzed_frames_that_decode_are_canonical():
    """Any mutation the decoder accepts must be the one encoding of what it decoded to."""
    accepted = []
    for data, decode in FUZZ_CASES:
        try:
            result = decode(data)
        except WireError:
            continue
        encode = encode_message if isinstance(result, Message) else encode_record_dict
        if encode(result) != data:
            accepted.append(split(data)[1].hex())
    assert not accepted, f"{len(accepted)} non-canonical frames accepted, e.g. header {accepted[0]}"


@pytest.mark.parametrize(
    "records",
    [
        RecordDict(),
        RecordDict({"m": MetricRecord({"loss": 0.5})}),
        RecordDict(
            {
                "big": ArrayRecord(
                    {
                        "a": np.arange(700_000, dtype=np.float32),  # several hash steps
                        "b": np.ones((3, 5), dtype=np.int64),
                        "empty": np.zeros(0, dtype=np.float64),
                        "odd": np.arange(7, dtype=np.uint8),  # padding after it
                        "big_endian": np.arange(4, dtype=">i4"),
                    }
                ),
                "c": ConfigRecord({"lr": 0.1, "name": "x"}),
            }
        ),
    ],
)
def test_encode_record_dict_hashed_is_the_frame_and_its_sha256(records):
    frame, digest = encode_record_dict_hashed(records)
    assert bytes(frame) == encode_record_dict(records)
    assert digest == hashlib.sha256(encode_record_dict(records)).digest()
    assert decode_record_dict(bytearray(frame)).keys() == records.keys()


def test_encode_message_parts_join_to_the_message_frame():
    weights = np.arange(1000, dtype=np.float32)
    message = Message(
        RecordDict({"m": ArrayRecord({"w": weights})}), dst_node_id=1, message_type="train"
    )
    parts = encode_message_parts(message)
    assert any(isinstance(part, np.ndarray) for part in parts)  # the array's own memory
    assert b"".join(parts) == encode_message(message)

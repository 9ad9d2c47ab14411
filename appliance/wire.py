"""The wire codec: Messages and RecordDicts to bytes and back.

This is the only module that imports the generated protobuf code for messages, and
the one place where untrusted bytes become records. Decoding validates everything
(framing, sizes, shapes against byte lengths, dtypes, UTF-8, duplicate names, the
record rules) and raises :class:`WireError` on any malformed input, never another
exception. Nothing is ever unpickled or evaluated.

Frame layout (version 1; see ``docs/wire.md``)::

    b"GHW\\x01" | kind (b"M" message, b"R" record dict) | header length (uint32 LE)
    | header (protobuf, canonical) | payload (array bytes, 64-byte aligned, zero padded)

Array bytes sit outside protobuf so that encoding copies each array once and
decoding copies the payload once (decoded arrays are writable and own their memory).
The encoding is canonical: one value has exactly one encoding, and a decoder refuses
any other (unknown fields, reordered or non-canonical protobuf, non-zero padding).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from appliance.errors import ApplianceError
from appliance.message import MAX_REASON_CHARS, Error, Message, Metadata
from appliance.proto import message_pb2 as pb
from appliance.records import (
    ARRAY_DTYPES,
    MAX_NDIM,
    ArrayRecord,
    ConfigRecord,
    MetricRecord,
    Record,
    RecordDict,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "WireError",
    "decode_message",
    "decode_metadata",
    "decode_record_dict",
    "encode_message",
    "encode_message_parts",
    "encode_metadata",
    "encode_record_dict",
    "encode_record_dict_hashed",
]

MAGIC = b"GHW\x01"
KIND_MESSAGE = b"M"
KIND_RECORD_DICT = b"R"
_PREFIX = struct.Struct("<4scI")
ALIGNMENT = 64
MAX_HEADER_BYTES = 64 * 2**20
#: Default upper bound on a whole frame; callers may pass a smaller ``max_bytes``.
DEFAULT_MAX_FRAME_BYTES = 16 * 2**30

_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in ARRAY_DTYPES}
_ZERO_PAD = bytes(ALIGNMENT)
#: What a frame can be decoded from (writable ones are decoded in place).
FrameBytes = bytes | bytearray | memoryview | mmap.mmap
_HASH_STEP = 2**20


class WireError(ApplianceError):
    """Bytes that are not a valid Greenhouse frame, with the reason."""


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


# --- encoding ------------------------------------------------------------------------


class _Payload:
    """Collects array buffers for the payload, padding each to the alignment."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def add(self, array: npt.NDArray[Any]) -> int:
        if array.size == 0:
            return 0
        pad = _aligned(self.size) - self.size
        if pad:
            self.parts.append(_ZERO_PAD[:pad])
            self.size += pad
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        flat = np.ascontiguousarray(little).reshape(-1).view(np.uint8)
        self.parts.append(flat)
        self.size += flat.nbytes
        return flat.nbytes


def _value_to_proto(value: Any, out: pb.Value) -> None:
    if isinstance(value, list):
        first = value[0] if value else 0
        if isinstance(first, bool):
            out.bool_list.values.extend(value)
        elif isinstance(first, int):
            out.sint_list.values.extend(value)
        elif isinstance(first, float):
            out.double_list.values.extend(value)
        elif isinstance(first, str):
            out.string_list.values.extend(value)
        else:
            out.bytes_list.values.extend(value)
    elif isinstance(value, bool):
        out.bool = value
    elif isinstance(value, int):
        out.sint = value
    elif isinstance(value, float):
        out.double = value
    elif isinstance(value, str):
        out.string = value
    else:
        out.bytes = value


def _record_dict_to_proto(records: RecordDict, out: pb.RecordDict, payload: _Payload) -> None:
    for name, record in records.items():
        entry = out.records.add(name=name)
        if isinstance(record, ArrayRecord):
            arrays = entry.arrays
            arrays.SetInParent()
            for array_name, array in record.items():
                nbytes = payload.add(array)
                arrays.arrays.add(
                    name=array_name, dtype=array.dtype.name, shape=array.shape, nbytes=nbytes
                )
        else:
            target = entry.metrics if isinstance(record, MetricRecord) else entry.configs
            target.SetInParent()
            for key, value in record.items():
                _value_to_proto(value, target.entries.add(key=key).value)


def _frame_parts(kind: bytes, header: ProtoMessage, payload: _Payload) -> list[Any]:
    header_bytes = header.SerializeToString(deterministic=True)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise WireError(
            f"frame header is {len(header_bytes)} bytes, more than {MAX_HEADER_BYTES}: "
            "move large values into an ArrayRecord"
        )
    prefix = _PREFIX.pack(MAGIC, kind, len(header_bytes))
    return [prefix, header_bytes, *payload.parts]


def _frame(kind: bytes, header: ProtoMessage, payload: _Payload) -> bytes:
    return b"".join(_frame_parts(kind, header, payload))


def encode_record_dict(records: RecordDict) -> bytes:
    """Encode a ``RecordDict`` as one frame."""
    header = pb.RecordDict()
    payload = _Payload()
    _record_dict_to_proto(records, header, payload)
    return _frame(KIND_RECORD_DICT, header, payload)


def encode_record_dict_hashed(records: RecordDict) -> tuple[memoryview, bytes]:
    """:func:`encode_record_dict` and the frame's SHA-256, in one pass.

    Each MiB is hashed right after it is copied into the frame, while it is still in
    the CPU's cache: hashing a finished 40 MB frame reads all of it back from memory,
    which costs a third more than the hash itself.
    """
    header = pb.RecordDict()
    payload = _Payload()
    _record_dict_to_proto(records, header, payload)
    parts = _frame_parts(KIND_RECORD_DICT, header, payload)
    frame = np.empty(sum(memoryview(part).nbytes for part in parts), dtype=np.uint8)
    digest = hashlib.sha256()
    filled = 0
    for part in parts:
        source = np.frombuffer(part, dtype=np.uint8)
        for start in range(0, source.size, _HASH_STEP):
            piece = source[start : start + _HASH_STEP]
            target = frame[filled : filled + piece.size]
            target[:] = piece
            digest.update(target.data)
            filled += piece.size
    return frame.data, digest.digest()


def _metadata_to_proto(m: Metadata) -> pb.Metadata:
    return pb.Metadata(
        run_id=m.run_id,
        message_id=m.message_id,
        src_node_id=m.src_node_id,
        dst_node_id=m.dst_node_id,
        reply_to_message_id=m.reply_to_message_id,
        group_id=m.group_id,
        message_type=m.message_type,
        ttl=float(m.ttl),
        created_at=float(m.created_at),
    )


def encode_metadata(metadata: Metadata) -> bytes:
    """Encode message metadata alone (the RPC layers send it beside a content frame)."""
    return bytes(_metadata_to_proto(metadata).SerializeToString(deterministic=True))


def encode_message(message: Message) -> bytes:
    """Encode a ``Message`` (metadata plus content or error) as one frame."""
    return b"".join(encode_message_parts(message))


def encode_message_parts(message: Message) -> list[Any]:
    """The frame of :func:`encode_message` as the buffers it joins, the arrays' own
    memory among them (valid while the message's arrays are unchanged): for writing
    a frame out without building it first."""
    header = pb.Message(metadata=_metadata_to_proto(message.metadata))
    payload = _Payload()
    if message.has_error():
        header.error.code = message.error.code
        header.error.reason = message.error.reason
    else:
        header.content.SetInParent()
        _record_dict_to_proto(message.content, header.content, payload)
    return _frame_parts(KIND_MESSAGE, header, payload)


# --- decoding ------------------------------------------------------------------------


class _PayloadReader:
    """Hands out arrays from a writable payload buffer, checking the layout.

    A read-only payload (``bytes``) is copied once; a writable one (``bytearray``) is
    used in place, so the decoded arrays share its memory.
    """

    def __init__(self, payload: memoryview) -> None:
        self._buffer: bytearray | memoryview = bytearray(payload) if payload.readonly else payload
        self._offset = 0

    def take(self, where: str, spec: pb.Array) -> npt.NDArray[Any]:
        dtype = _DTYPES.get(spec.dtype)
        if dtype is None:
            raise WireError(f"{where}: unsupported dtype {spec.dtype[:32]!r}")
        if len(spec.shape) > MAX_NDIM:
            raise WireError(f"{where}: {len(spec.shape)} dimensions, at most {MAX_NDIM} allowed")
        shape = tuple(spec.shape)
        expected = math.prod(shape) * dtype.itemsize
        if expected != spec.nbytes:
            raise WireError(
                f"{where}: shape {list(shape)} of {spec.dtype} needs {expected} bytes, "
                f"header declares {spec.nbytes}"
            )
        start = _aligned(self._offset) if expected else self._offset
        end = start + expected
        if end > len(self._buffer):
            raise WireError(
                f"{where}: needs payload bytes {start}..{end}, payload has {len(self._buffer)}"
            )
        if any(bytes(self._buffer[self._offset : start])):
            raise WireError(f"{where}: non-zero padding before the array")
        self._offset = end
        native = dtype.newbyteorder("=")
        count = math.prod(shape)
        if count == 0:
            return np.empty(shape, dtype=native)
        if dtype.kind == "b" and bytes(self._buffer[start:end]).translate(None, b"\x00\x01"):
            raise WireError(f"{where}: bool array holds bytes other than 0 and 1")
        array = np.frombuffer(self._buffer, dtype=dtype, count=count, offset=start)
        return array.reshape(shape).astype(native, copy=False)

    def finish(self) -> None:
        if self._offset != len(self._buffer):
            raise WireError(
                f"payload has {len(self._buffer) - self._offset} bytes after the last array"
            )


def _value_from_proto(where: str, value: pb.Value) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        raise WireError(f"{where}: value is missing")
    field = getattr(value, kind)
    if kind.endswith("_list"):
        if not field.values and kind != "sint_list":
            raise WireError(f"{where}: an empty list must be encoded as sint_list")
        return list(field.values)
    return field


def _unique(where: str, names: Iterator[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise WireError(f"{where}: duplicate name {name[:64]!r}")
        seen.add(name)


def _record_from_proto(where: str, entry: pb.Record, payload: _PayloadReader) -> Record:
    kind = entry.WhichOneof("record")
    if kind == "arrays":
        specs = entry.arrays.arrays
        _unique(where, (s.name for s in specs))
        arrays = {s.name: payload.take(f"{where}[{s.name[:64]!r}]", s) for s in specs}
        return ArrayRecord(arrays)
    if kind in ("metrics", "configs"):
        record_type = MetricRecord if kind == "metrics" else ConfigRecord
        entries = getattr(entry, kind).entries
        _unique(where, (e.key for e in entries))
        return record_type(
            (e.key, _value_from_proto(f"{where}[{e.key[:64]!r}]", e.value)) for e in entries
        )
    raise WireError(f"{where}: record has no kind")


def _record_dict_from_proto(header: pb.RecordDict, payload: _PayloadReader) -> RecordDict:
    _unique("RecordDict", (r.name for r in header.records))
    records = RecordDict()
    for entry in header.records:
        records[entry.name] = _record_from_proto(f"record {entry.name[:64]!r}", entry, payload)
    return records


def _split_frame(data: FrameBytes, kind: bytes, max_bytes: int) -> tuple[memoryview, memoryview]:
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise WireError(f"frame is {len(view)} bytes, more than the limit of {max_bytes}")
    if len(view) < _PREFIX.size:
        raise WireError(f"frame is {len(view)} bytes, shorter than its {_PREFIX.size}-byte prefix")
    magic, found_kind, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"not a Greenhouse v1 frame (starts with {bytes(magic)!r})")
    if found_kind != kind:
        raise WireError(f"expected a frame of kind {kind!r}, found {found_kind!r}")
    if header_len > MAX_HEADER_BYTES:
        raise WireError(f"header declares {header_len} bytes, more than {MAX_HEADER_BYTES}")
    end = _PREFIX.size + header_len
    if end > len(view):
        raise WireError(f"header declares {header_len} bytes, frame has {len(view) - _PREFIX.size}")
    return view[_PREFIX.size : end], view[end:]


def _parse_header(header_bytes: memoryview, header: ProtoMessage) -> None:
    raw = bytes(header_bytes)
    try:
        header.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"malformed header: {exc}") from None
    header.DiscardUnknownFields()  # so that re-serializing drops them and the check fails
    if header.SerializeToString(deterministic=True) != raw:
        raise WireError("header is not in canonical form (unknown or reordered fields)")


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Turn record-validation errors raised while decoding into ``WireError``."""
    try:
        yield
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise WireError(f"invalid {what}: {exc}") from None


def _metadata_from_proto(m: pb.Metadata) -> Metadata:
    return Metadata(
        run_id=m.run_id,
        message_id=m.message_id,
        src_node_id=m.src_node_id,
        dst_node_id=m.dst_node_id,
        reply_to_message_id=m.reply_to_message_id,
        group_id=m.group_id,
        message_type=m.message_type,
        ttl=m.ttl,
        created_at=m.created_at,
    )


def decode_metadata(data: bytes, *, max_bytes: int = 64 * 1024) -> Metadata:
    """Decode metadata made by :func:`encode_metadata`.

    Raises:
        WireError: the bytes are not canonical, valid metadata.
    """
    with _decoding("metadata"):
        if len(data) > max_bytes:
            raise WireError(f"metadata is {len(data)} bytes, more than {max_bytes}")
        header = pb.Metadata()
        _parse_header(memoryview(data), header)
        return _metadata_from_proto(header)


def decode_record_dict(data: FrameBytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> RecordDict:
    """Decode a frame made by :func:`encode_record_dict`.

    ``bytes`` input is copied once so the arrays are writable; a ``bytearray`` is
    decoded in place (no copy) and the arrays then share its memory.

    Raises:
        WireError: the bytes are not a valid, canonical record-dict frame.
    """
    with _decoding("record dict"):
        header_bytes, payload_bytes = _split_frame(data, KIND_RECORD_DICT, max_bytes)
        header = pb.RecordDict()
        _parse_header(header_bytes, header)
        payload = _PayloadReader(payload_bytes)
        records = _record_dict_from_proto(header, payload)
        payload.finish()
        return records


def decode_message(data: FrameBytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Decode a frame made by :func:`encode_message` (see :func:`decode_record_dict`).

    Raises:
        WireError: the bytes are not a valid, canonical message frame.
    """
    with _decoding("message"):
        header_bytes, payload_bytes = _split_frame(data, KIND_MESSAGE, max_bytes)
        header = pb.Message()
        _parse_header(header_bytes, header)
        if not header.HasField("metadata"):
            raise WireError("message has no metadata")
        metadata = _metadata_from_proto(header.metadata)
        payload = _PayloadReader(payload_bytes)
        body_kind = header.WhichOneof("body")
        body: RecordDict | Error
        if body_kind == "content":
            body = _record_dict_from_proto(header.content, payload)
        elif body_kind == "error":
            if len(header.error.reason) > MAX_REASON_CHARS:
                raise WireError(f"error reason is longer than {MAX_REASON_CHARS} characters")
            body = Error(code=header.error.code, reason=header.error.reason)
        else:
            raise WireError("message has neither content nor error")
        payload.finish()
        return Message.from_parts(metadata, body)

"""Moving frames over streaming RPCs: chunking, bounded reassembly, reply digests.

Message bodies travel as a head (metadata, sizes) followed by data chunks, so a
body is never limited by gRPC's maximum message size. :class:`Assembler` collects
chunks into one buffer and refuses, with :class:`TransportError`, anything longer
than declared or than the configured maximum: a peer cannot make the receiver
allocate more than it agreed to.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from appliance.errors import ApplianceError

__all__ = [
    "CHUNK_BYTES",
    "REPLY_SIGNATURE_METHOD",
    "Assembler",
    "ChunkPart",
    "MalformedChunk",
    "TransportError",
    "data_only",
    "head_of",
    "iter_chunks",
    "parse_chunk",
    "reply_digest",
    "serialize_part",
    "serialized_data_chunks",
    "witness_key_name",
]

#: The label a node's reply signature is bound to (certs envelope of kind REPLY).
REPLY_SIGNATURE_METHOD = "/greenhouse.fleet.v1.Fleet/PushReply"
#: Bytes per data chunk on the wire (well under gRPC's default 4 MiB message limit).
CHUNK_BYTES = 1024 * 1024
_REPLY_DIGEST = struct.Struct(">4s32s?q32s32s")
#: The first byte of a serialized chunk message whose ``data`` arm is set: field 2,
#: length-delimited. Every chunk message of the Fleet API keeps its bytes there.
_DATA_KEY = 0x12
_MAX_VARINT_BYTES = 10


@dataclass(frozen=True)
class MalformedChunk:
    """A chunk that did not parse, handed over in its place: gRPC would turn a
    deserializer's exception into ``INTERNAL``; the handler refuses this one with
    ``INVALID_ARGUMENT`` and the reason instead."""

    reason: str


#: One part of a chunked stream as its codec hands it over: the head message, a data
#: piece as a view of the received bytes, or a chunk that did not parse.
ChunkPart: TypeAlias = ProtoMessage | memoryview | MalformedChunk
H = TypeVar("H", bound=ProtoMessage)


def witness_key_name(node_name: str) -> str:
    """The key name a site's audit witness cosigns under: its node name, made a valid
    signed-note key name (no spaces, ``+`` or controls). The SuperLink accepts a
    node's cosignatures only under this name, so one site cannot cosign as another.
    """
    return "".join("-" if c.isspace() or c == "+" or ord(c) < 32 else c for c in node_name)


class TransportError(ApplianceError):
    """A streamed body broke its framing (too long, too short, out of order)."""


def iter_chunks(data: bytes | bytearray | memoryview, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (none for empty data)."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialized_data_chunks(
    data: bytes | bytearray | memoryview, size: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """``data`` as serialized chunk messages with only their ``data`` arm set.

    Byte for byte what ``Chunk(data=piece).SerializeToString()`` gives, made with one
    copy of each piece where building and serializing the message copies it three
    times. Send them through :func:`serialize_part`.
    """
    view = memoryview(data).cast("B")
    for start in range(0, len(view), size):
        piece = view[start : start + size]
        yield b"".join((bytes((_DATA_KEY,)) + _varint(len(piece)), piece))


def serialize_part(part: ProtoMessage | bytes) -> bytes:
    """A chunk stream's serializer: a message, or bytes already serialized."""
    return part if isinstance(part, bytes) else part.SerializeToString()


def _data_view(wire: bytes) -> memoryview | None:
    """The data of a chunk that is exactly ``data`` (key, length, bytes), else None."""
    if len(wire) < 2 or wire[0] != _DATA_KEY:
        return None
    length = shift = 0
    for index in range(1, min(len(wire), 1 + _MAX_VARINT_BYTES)):
        byte = wire[index]
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            start = index + 1
            return memoryview(wire)[start:] if length == len(wire) - start else None
        shift += 7
    return None


def parse_chunk(chunk_type: type[ProtoMessage]) -> Callable[[bytes], ChunkPart]:
    """A deserializer for a stream of ``chunk_type`` (a ``head``/``data`` oneof).

    It hands over the head message, or the data as a view of the received bytes: a
    data chunk is not copied into a message and out again. Anything but the plain
    data encoding goes through the protobuf parser, so both read the same chunks
    the same way; what it refuses comes as a :class:`MalformedChunk`.
    """

    def parse(wire: bytes) -> ChunkPart:
        view = _data_view(wire)
        if view is not None:
            return view
        try:
            chunk: Any = chunk_type.FromString(wire)
        except DecodeError as exc:
            return MalformedChunk(f"a {chunk_type.__name__} could not be decoded: {exc}")
        if chunk.WhichOneof("part") == "head":
            return chunk.head
        return memoryview(chunk.data)  # the data arm, or an empty chunk

    return parse


def data_only(parts: Iterable[ChunkPart]) -> Iterator[memoryview]:
    """The data pieces of a stream's parts after its head.

    Raises:
        TransportError: another head, or a malformed chunk, arrives.
    """
    for part in parts:
        if isinstance(part, MalformedChunk):
            raise TransportError(part.reason)
        if not isinstance(part, memoryview):
            raise TransportError("a chunk stream carries one head, before its data")
        yield part


def head_of(parts: Iterator[ChunkPart], head_type: type[H]) -> H:
    """The first of a stream's parts, which must be its head.

    Raises:
        TransportError: the stream is empty or starts otherwise.
    """
    first = next(parts, None)
    if isinstance(first, MalformedChunk):
        raise TransportError(first.reason)
    if not isinstance(first, head_type):
        raise TransportError("a chunk stream must start with its head")
    return first


class Assembler:
    """Collects a body of exactly ``expected`` bytes (at most ``max_bytes``) from chunks.

    Raises:
        TransportError: ``expected`` exceeds ``max_bytes``, more bytes arrive than
            declared, or :meth:`finish` finds fewer.
    """

    def __init__(self, expected: int, max_bytes: int, *, hashed: bool = False) -> None:
        if expected > max_bytes:
            raise TransportError(f"body of {expected} bytes exceeds the limit of {max_bytes}")
        # Not zeroed (``bytearray(n)`` would write every byte once more): ``finish``
        # hands the buffer out only once every byte of it has been written.
        self._buffer = np.empty(expected, dtype=np.uint8)
        self._view = memoryview(self._buffer)
        self._filled = 0
        # Hashing each chunk as it lands reads it from the cache, not from memory.
        self._digest = hashlib.sha256() if hashed else None

    def add(self, chunk: bytes | memoryview) -> None:
        """Append one chunk."""
        end = self._filled + len(chunk)
        if end > len(self._buffer):
            raise TransportError(f"body is longer than the {len(self._buffer)} bytes declared")
        self._view[self._filled : end] = chunk
        if self._digest is not None:
            self._digest.update(chunk)
        self._filled = end

    def sha256(self) -> bytes:
        """The SHA-256 of the bytes added so far (made with ``hashed=True``)."""
        if self._digest is None:
            raise TransportError("this assembler was not asked to hash")
        return self._digest.digest()

    def finish(self) -> memoryview:
        """The whole body (a writable buffer the wire codec decodes in place)."""
        if self._filled != len(self._buffer):
            raise TransportError(
                f"body ended after {self._filled} of the {len(self._buffer)} bytes declared"
            )
        return self._view


def reply_digest(
    metadata: bytes, *, is_error: bool, error_code: int, error_reason: str, content_sha256: bytes
) -> bytes:
    """The bytes a node signs for a reply: everything that makes it that reply.

    Layout: ``b"GHR1"`` | SHA-256(metadata) | is_error | error code (int64) |
    SHA-256(error reason, UTF-8) | SHA-256(content frame; of b"" for an error).
    """
    return _REPLY_DIGEST.pack(
        b"GHR1",
        hashlib.sha256(metadata).digest(),
        is_error,
        error_code,
        hashlib.sha256(error_reason.encode("utf-8")).digest(),
        content_sha256,
    )

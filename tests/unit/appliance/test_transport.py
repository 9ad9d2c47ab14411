"""The chunk codec of the Fleet API's bulk streams, against protobuf's own encoding."""

from __future__ import annotations

import hashlib
import os

import pytest
from google.protobuf.message import DecodeError

from appliance.proto import fleet_pb2 as pb
from appliance.transport import (
    Assembler,
    MalformedChunk,
    TransportError,
    data_only,
    head_of,
    parse_chunk,
    serialize_part,
    serialized_data_chunks,
)

# Around every boundary of the length's varint (1, 2, 3 and 4 bytes) and one chunk.
SIZES = [1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 1024 * 1024]


@pytest.mark.parametrize("size", SIZES)
def test_serialized_data_chunks_are_protobufs_own_bytes(size: int):
    data = os.urandom(size)
    (wire,) = serialized_data_chunks(data, size=size)
    assert wire == pb.ReplyChunk(data=data).SerializeToString()
    assert wire == pb.MessageChunk(data=data).SerializeToString()


def test_serialized_data_chunks_split_like_iter_chunks():
    data = bytearray(os.urandom(2500))
    wires = list(serialized_data_chunks(data, size=1000))
    assert [pb.ReplyChunk.FromString(w).data for w in wires] == [
        bytes(data[0:1000]),
        bytes(data[1000:2000]),
        bytes(data[2000:]),
    ]
    assert list(serialized_data_chunks(b"")) == []


def test_parse_chunk_hands_data_over_as_a_view_of_the_received_bytes():
    data = os.urandom(300_000)
    wire = pb.ReplyChunk(data=data).SerializeToString()
    part = parse_chunk(pb.ReplyChunk)(wire)
    assert isinstance(part, memoryview)
    assert part.obj is wire  # not copied
    assert part == data


def test_parse_chunk_hands_the_head_over_as_a_message():
    head = pb.ReplyHead(metadata=b"meta", content_size=7, signature=b"sig")
    part = parse_chunk(pb.ReplyChunk)(pb.ReplyChunk(head=head).SerializeToString())
    assert part == head


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        # The data field twice: protobuf keeps the last, and so does the codec.
        (b"\x12\x02ab\x12\x03cde", b"cde"),
        # A head, then data: the oneof ends up holding the data.
        (pb.ReplyChunk(head=pb.ReplyHead()).SerializeToString() + b"\x12\x01z", b"z"),
        # Data with a length in an over-long (but valid) varint.
        (b"\x12\x83\x00abc", b"abc"),
        # An empty chunk (neither arm) and an empty data arm.
        (b"", b""),
        (b"\x12\x00", b""),
    ],
)
def test_parse_chunk_reads_other_encodings_as_protobuf_does(wire: bytes, expected: bytes):
    assert pb.ReplyChunk.FromString(wire).data == expected
    part = parse_chunk(pb.ReplyChunk)(wire)
    assert isinstance(part, memoryview)
    assert part == expected


@pytest.mark.parametrize(
    "wire",
    [
        b"\x12",  # a key without its length
        b"\x12\x05abc",  # fewer bytes than the length says
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint
        b"\xff\xff\xff",
    ],
)
def test_parse_chunk_hands_malformed_chunks_over_for_the_handler_to_refuse(wire: bytes):
    with pytest.raises(DecodeError):
        pb.ReplyChunk.FromString(wire)
    part = parse_chunk(pb.ReplyChunk)(wire)
    assert isinstance(part, MalformedChunk)
    assert "ReplyChunk could not be decoded" in part.reason
    with pytest.raises(TransportError, match="could not be decoded"):
        list(data_only([part]))
    with pytest.raises(TransportError, match="could not be decoded"):
        head_of(iter([part]), pb.ReplyHead)


def test_serialize_part_passes_serialized_chunks_through():
    wire = b"\x12\x01a"
    assert serialize_part(wire) is wire
    head = pb.ReplyChunk(head=pb.ReplyHead(content_size=3))
    assert serialize_part(head) == head.SerializeToString()


def test_data_only_refuses_a_second_head():
    parts = [memoryview(b"ab"), pb.ReplyHead(), memoryview(b"cd")]
    stream = data_only(parts)
    assert next(stream) == b"ab"
    with pytest.raises(TransportError, match="one head"):
        next(stream)


def test_head_of_wants_the_head_first():
    head = pb.ReplyHead(content_size=1)
    parts = iter([head, memoryview(b"a")])
    assert head_of(parts, pb.ReplyHead) is head
    assert list(data_only(parts)) == [b"a"]
    with pytest.raises(TransportError, match="must start with its head"):
        head_of(iter([memoryview(b"a")]), pb.ReplyHead)
    with pytest.raises(TransportError, match="must start with its head"):
        head_of(iter([]), pb.ReplyHead)
    with pytest.raises(TransportError, match="must start with its head"):
        head_of(iter([pb.MessageHead()]), pb.ReplyHead)


def test_assembler_takes_views_and_refuses_more_or_fewer_bytes_than_declared():
    assembler = Assembler(4, max_bytes=10)
    assembler.add(memoryview(b"ab"))
    assembler.add(b"cd")
    body = assembler.finish()
    assert body == b"abcd"
    assert not body.readonly  # the wire codec decodes it in place

    over = Assembler(3, max_bytes=10)
    with pytest.raises(TransportError, match="longer"):
        over.add(memoryview(b"abcd"))
    short = Assembler(3, max_bytes=10)
    short.add(b"ab")
    with pytest.raises(TransportError, match="ended after 2"):
        short.finish()
    with pytest.raises(TransportError, match="exceeds the limit"):
        Assembler(11, max_bytes=10)


def test_a_hashing_assembler_hashes_what_it_assembled():
    data = os.urandom(3 * 2**20 + 5)
    assembler = Assembler(len(data), max_bytes=len(data), hashed=True)
    for start in range(0, len(data), 2**20):
        assembler.add(memoryview(data)[start : start + 2**20])
    assert assembler.finish() == data
    assert assembler.sha256() == hashlib.sha256(data).digest()
    with pytest.raises(TransportError, match="not asked to hash"):
        Assembler(1, max_bytes=1).sha256()

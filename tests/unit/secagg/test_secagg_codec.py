"""Protocol messages survive the records and the wire codec; malformed content is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_harness import drive_round, make_config, node_ids

from appliance import ArrayRecord, ConfigRecord, Message, RecordDict
from appliance.wire import decode_message, encode_message
from secagg import MESSAGE_TYPES, MalformedMessage, MaskedInput, SetupRequest, Stage, TrainSpec
from secagg.codec import (
    PROTOCOL_RECORD,
    decode_reply,
    decode_request,
    decode_setup,
    encode_reply,
    encode_request,
    encode_setup,
)
from secagg.messages import STAGE_OF


def _wire(message: Message) -> Message:
    return decode_message(encode_message(message))


def _reply(node: int, stage: Stage, content: RecordDict) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MESSAGE_TYPES[stage])
    return _wire(Message(content, reply_to=request))


@pytest.fixture(scope="module")
def recorded():
    requests: list = []

    def record(stage, batch):
        requests.extend(batch)
        return batch

    ids = node_ids(6, seed=41)
    config = make_config(6, 5, seed=41)
    outcome = drive_round(
        config, ids, drops={Stage.MASKED_INPUT: {ids[2]}}, seed=41, tamper_requests=record
    )
    return config, requests, outcome.transcript


def _same(a, b) -> bool:
    if isinstance(a, MaskedInput):
        return (
            a.sender == b.sender and a.round_id == b.round_id and np.array_equal(a.vector, b.vector)
        )
    return a == b


def test_requests_round_trip(recorded) -> None:
    _, requests, _ = recorded
    spec = TrainSpec(arrays_key="arrays", weighted_by_key="num-examples")
    model = RecordDict({"arrays": ArrayRecord([np.zeros(5, dtype=np.float32)])})
    for request in requests:
        stage = STAGE_OF[type(request)]
        if isinstance(request, SetupRequest):
            content = encode_setup(request, spec, model)
        else:
            content = encode_request(request)
        message = _wire(
            Message(content, dst_node_id=request.receiver, message_type=MESSAGE_TYPES[stage])
        )
        if isinstance(request, SetupRequest):
            decoded, decoded_spec, train = decode_setup(message)
            assert decoded_spec == spec and list(train) == ["arrays"]
        else:
            decoded = decode_request(message)
        assert decoded == request


def test_replies_round_trip_with_the_routing_sender(recorded) -> None:
    _, _, transcript = recorded
    for reply in transcript:
        stage = STAGE_OF[type(reply)]
        sender = reply.node_id if stage is Stage.SETUP else reply.sender
        decoded = decode_reply(stage, _reply(sender, stage, encode_reply(reply)))
        assert _same(decoded, reply)
        if isinstance(decoded, MaskedInput):
            assert decoded.vector.dtype == np.uint32 and not decoded.vector.flags.writeable


def test_the_sender_comes_from_routing_not_content(recorded) -> None:
    _, _, transcript = recorded
    signature = next(r for r in transcript if STAGE_OF[type(r)] is Stage.CONSISTENCY)
    decoded = decode_reply(
        Stage.CONSISTENCY, _reply(777, Stage.CONSISTENCY, encode_reply(signature))
    )
    assert decoded.sender == 777


def _broken(content: RecordDict, **changes) -> RecordDict:
    record = ConfigRecord(dict(content[PROTOCOL_RECORD]))
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    out = RecordDict(content)
    out[PROTOCOL_RECORD] = record
    return out


@pytest.mark.parametrize(
    ("stage", "changes", "match"),
    [
        (Stage.SETUP, {"cipher-key": b"short"}, "cipher_public_key must be 32 bytes"),
        (Stage.SETUP, {"signature": None}, "field 'signature' missing"),
        (Stage.SETUP, {"stage": "unmask"}, "stage field does not match"),
        (Stage.SHARE_KEYS, {"share-receivers": b"\x00" * 7}, "not packed node ids"),
        (Stage.UNMASK, {"seed-shares": [b"\xff" * 32]}, "below the field prime|different lengths"),
        (Stage.CONSISTENCY, {"round-id": 5}, "'round-id' missing or not bytes"),
    ],
)
def test_malformed_replies_are_refused(recorded, stage, changes, match) -> None:
    _, _, transcript = recorded
    reply = next(r for r in transcript if STAGE_OF[type(r)] is stage)
    sender = reply.node_id if stage is Stage.SETUP else reply.sender
    content = _broken(encode_reply(reply), **changes)
    with pytest.raises(MalformedMessage, match=match) as info:
        decode_reply(stage, _reply(sender, stage, content))
    assert info.value.stage == stage


def test_a_float_masked_vector_or_wrong_type_is_refused(recorded) -> None:
    _, _, transcript = recorded
    masked = next(r for r in transcript if isinstance(r, MaskedInput))
    content = encode_reply(masked)
    content["secagg-masked"] = ArrayRecord({"vector": masked.vector.astype(np.float32)})
    with pytest.raises(MalformedMessage, match="uint32 or uint64"):
        decode_reply(Stage.MASKED_INPUT, _reply(masked.sender, Stage.MASKED_INPUT, content))
    with pytest.raises(MalformedMessage, match="reply has type"):
        decode_reply(Stage.UNMASK, _reply(masked.sender, Stage.MASKED_INPUT, encode_reply(masked)))


def test_setup_refuses_an_unsafe_config(recorded) -> None:
    config, requests, _ = recorded
    setup = next(r for r in requests if isinstance(r, SetupRequest))
    content = encode_setup(setup, TrainSpec(), RecordDict())
    content = _broken(content, **{"max-weight": 2**32, "quantization-bits": 32, "invited": 9999})
    message = _wire(
        Message(content, dst_node_id=setup.receiver, message_type=MESSAGE_TYPES[Stage.SETUP])
    )
    with pytest.raises(MalformedMessage, match="64 bits"):
        decode_setup(message)
    assert dataclasses.asdict(config)  # the original config is untouched

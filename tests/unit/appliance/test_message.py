import time

import pytest

from appliance.message import DEFAULT_TTL_S, Error, Message, check_message_type
from appliance.records import ConfigRecord, RecordDict


def test_new_message_has_routing_and_defaults():
    msg = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="1")
    meta = msg.metadata
    assert (meta.dst_node_id, meta.message_type, meta.group_id) == (7, "train", "1")
    assert meta.ttl == DEFAULT_TTL_S
    assert len(meta.message_id) == 32
    assert msg.has_content() and not msg.has_error()


def test_reply_inherits_routing():
    msg = Message(RecordDict(), dst_node_id=7, message_type="evaluate", group_id="3", ttl=60)
    msg = msg.with_metadata(run_id=5)
    reply = Message(RecordDict({"c": ConfigRecord({"ok": True})}), reply_to=msg)
    meta = reply.metadata
    assert meta.run_id == 5
    assert (meta.src_node_id, meta.dst_node_id) == (7, 0)
    assert meta.reply_to_message_id == msg.metadata.message_id
    assert meta.message_type == "evaluate" and meta.group_id == "3"
    assert 0 < meta.ttl <= 60
    assert meta.message_id != msg.metadata.message_id


def test_error_reply_and_accessors():
    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    reply = Message(Error(1, "boom"), reply_to=msg)
    assert reply.has_error()
    assert reply.error.reason == "boom"
    with pytest.raises(ValueError, match="is an error reply"):
        _ = reply.content
    with pytest.raises(ValueError, match="has content"):
        _ = msg.error


def test_invalid_construction():
    with pytest.raises(ValueError, match="only valid in a reply"):
        Message(Error(1, "x"), dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match="needs dst_node_id and message_type"):
        Message(RecordDict())
    with pytest.raises(TypeError, match="RecordDict or an Error"):
        Message({"a": 1}, dst_node_id=1, message_type="train")
    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match="takes its routing from reply_to"):
        Message(RecordDict(), dst_node_id=2, reply_to=msg)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        Message(RecordDict(), dst_node_id=-1, message_type="train")
    with pytest.raises(ValueError, match="finite and >= 0"):
        Message(RecordDict(), dst_node_id=1, message_type="train", ttl=-1)


@pytest.mark.parametrize("good", ["train", "evaluate", "query", "train.secagg", "system.ping"])
def test_valid_message_types(good):
    assert check_message_type(good) == good


@pytest.mark.parametrize("bad", ["", "system", "fit", "train.", "TRAIN", "train.a b", "query.x.y"])
def test_invalid_message_types(bad):
    with pytest.raises(ValueError, match="invalid message_type"):
        check_message_type(bad)


def test_expiry():
    msg = Message(RecordDict(), dst_node_id=1, message_type="train", ttl=10)
    assert not msg.is_expired()
    assert msg.is_expired(now=time.time() + 11)


def test_long_error_reason_is_truncated():
    assert len(Error(1, "x" * 10_000).reason) == 4096

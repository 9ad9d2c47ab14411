"""Contract: requests and replies (run against every backend).

queue -> deliver exactly once -> reply exactly once, only by the right node, in the
right run, before the TTL runs out; expiry; SuperLink-made error replies.
"""

from dataclasses import dataclass

import pytest

from appliance.message import ErrorCode
from appliance.state import (
    AlreadyDelivered,
    AlreadyReplied,
    BlobNotFound,
    BlobRef,
    Conflict,
    DuplicateMessage,
    InvalidArgument,
    MessageExpired,
    MessageNotFound,
    MessageStatus,
    NodeNotFound,
    NotAddressedToNode,
    NotDeliveredToNode,
    RunNotFound,
    RunNotRunning,
    RunStatus,
    StoredMessage,
    WrongRun,
)


@dataclass
class World:
    run_id: int
    node_id: int
    other_node_id: int


@pytest.fixture
def world(make_run, make_node) -> World:
    run = make_run(RunStatus.RUNNING)
    return World(run.run_id, make_node("hospital-a").node_id, make_node("bank-b").node_id)


@pytest.fixture
def delivered(state, world, body, request_meta):
    """A request queued for and delivered to ``world.node_id``."""
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    state.mark_delivered(meta.message_id, world.node_id)
    return meta


def test_full_lifecycle(state, clock, world, body, request_meta, reply_meta):
    meta = request_meta(world.run_id, world.node_id, created_at=clock.now)
    queued = state.queue_message(meta, body)
    assert isinstance(queued, StoredMessage)
    assert queued.status is MessageStatus.QUEUED
    assert queued.metadata() == meta
    assert queued.content == body
    assert not queued.is_reply
    assert state.queued_for_node(world.node_id, limit=10) == [queued]
    assert state.queued_for_node(world.other_node_id, limit=10) == []

    clock.advance(1)
    delivered = state.mark_delivered(meta.message_id, world.node_id)
    assert delivered.status is MessageStatus.DELIVERED
    assert delivered.delivered_at == clock.now
    assert state.queued_for_node(world.node_id, limit=10) == []
    assert state.requests_in_flight_for_node(world.node_id) == [delivered]

    answer = state.blobs.put_bytes(b"updated weights")
    rmeta = reply_meta(meta)
    reply = state.store_reply(rmeta, answer, None, b"\x01" * 64)
    assert reply.is_reply
    assert reply.status is MessageStatus.QUEUED
    assert reply.metadata() == rmeta
    assert reply.signature == b"\x01" * 64
    assert reply.synthetic is False
    assert state.get_message(meta.message_id).status is MessageStatus.REPLIED
    assert state.requests_in_flight_for_node(world.node_id) == []

    assert state.replies_for(world.run_id, [meta.message_id, "unknown"]) == [reply]
    assert state.mark_replies_delivered([reply.message_id]) == 1
    assert state.mark_replies_delivered([reply.message_id]) == 0
    assert state.replies_for(world.run_id, [meta.message_id]) == []
    assert state.get_message(reply.message_id).status is MessageStatus.DELIVERED
    assert not state.blobs.exists(reply.content.sha256)  # handed out: its body is dropped
    assert state.get_message(reply.message_id).content == reply.content  # the record stays


def test_error_reply(state, world, delivered, reply_meta):
    reply = state.store_reply(reply_meta(delivered), None, (1, "ClientApp raised"), None)
    assert (reply.content, reply.error_code, reply.error_reason) == (None, 1, "ClientApp raised")
    assert reply.signature is None


def test_text_is_stored_alike_on_every_backend(state, world, delivered, reply_meta):
    reply = state.store_reply(reply_meta(delivered), None, (1, "bad\x00byte \udc80"), None)
    assert reply.error_reason == "bad\ufffdbyte ?"
    assert state.get_message(reply.message_id).error_reason == "bad\ufffdbyte ?"


def test_ids_with_nul_are_refused(state, world, body, request_meta):
    meta = request_meta(world.run_id, world.node_id, message_id="a\x00b")
    with pytest.raises(InvalidArgument, match="message_id 'a\\\\x00b' holds a NUL"):
        state.queue_message(meta, body)


def test_request_without_body(state, world, request_meta):
    meta = request_meta(world.run_id, world.node_id)
    assert state.queue_message(meta, None).content is None


# -- delivered at most once, only to its node ---------------------------------------------


def test_delivered_exactly_once(state, world, delivered):
    with pytest.raises(AlreadyDelivered, match=f"message {delivered.message_id} was already"):
        state.mark_delivered(delivered.message_id, world.node_id)


def test_delivery_to_the_wrong_node_is_refused(state, world, body, request_meta):
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    with pytest.raises(NotAddressedToNode, match=f"not addressed to node {world.other_node_id}"):
        state.mark_delivered(meta.message_id, world.other_node_id)
    assert state.get_message(meta.message_id).status is MessageStatus.QUEUED


def test_delivery_of_unknown_message(state, world):
    with pytest.raises(MessageNotFound, match="message nope not found"):
        state.mark_delivered("nope", world.node_id)
    with pytest.raises(MessageNotFound, match="message nope not found"):
        state.get_message("nope")


def test_delivery_when_run_stopped(state, world, body, request_meta):
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    state.transition_run(world.run_id, RunStatus.STOPPED, "user asked")
    assert state.queued_for_node(world.node_id, limit=10) == []
    with pytest.raises(RunNotRunning, match=f"run {world.run_id} is stopped, not running"):
        state.mark_delivered(meta.message_id, world.node_id)


# -- queueing -------------------------------------------------------------------------------


def test_duplicate_message_id(state, world, body, request_meta):
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    with pytest.raises(DuplicateMessage, match=f"message {meta.message_id} already exists"):
        state.queue_message(meta, body)


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.STARTING, RunStatus.FINISHED])
def test_queue_needs_a_running_run(state, make_run, make_node, body, request_meta, status):
    run = make_run(status)
    node = make_node()
    with pytest.raises(RunNotRunning, match=f"is {status.value}, not running"):
        state.queue_message(request_meta(run.run_id, node.node_id), body)


def test_queue_unknown_run_or_node(state, world, body, request_meta):
    with pytest.raises(RunNotFound, match="run 777 not found"):
        state.queue_message(request_meta(777, world.node_id), body)
    with pytest.raises(NodeNotFound, match="node 778 not found"):
        state.queue_message(request_meta(world.run_id, 778), body)


def test_queue_refuses_malformed_requests(state, world, body, request_meta):
    with pytest.raises(InvalidArgument, match="is a reply; use store_reply"):
        state.queue_message(
            request_meta(world.run_id, world.node_id, reply_to_message_id="x"), body
        )
    with pytest.raises(InvalidArgument, match="a request goes from node 0 to a node"):
        state.queue_message(request_meta(world.run_id, world.node_id, src_node_id=5), body)
    with pytest.raises(InvalidArgument, match="a request goes from node 0 to a node"):
        state.queue_message(request_meta(world.run_id, 0), body)
    with pytest.raises(InvalidArgument, match="message_id must not be empty"):
        state.queue_message(request_meta(world.run_id, world.node_id, message_id=""), body)
    with pytest.raises(InvalidArgument, match="meta must be Metadata"):
        state.queue_message({"run_id": world.run_id}, body)


def test_queue_checks_the_content_blob(state, world, body, request_meta):
    missing = BlobRef(sha256="ab" * 32, size=3)
    with pytest.raises(BlobNotFound, match=f"content blob {missing.sha256} is not in"):
        state.queue_message(request_meta(world.run_id, world.node_id), missing)
    wrong_size = BlobRef(sha256=body.sha256, size=body.size + 1)
    with pytest.raises(InvalidArgument, match="size does not match"):
        state.queue_message(request_meta(world.run_id, world.node_id), wrong_size)


def test_queued_for_node_order_and_limit(state, clock, world, body, request_meta):
    metas = [request_meta(world.run_id, world.node_id, created_at=clock.now + i) for i in range(5)]
    for meta in reversed(metas):
        state.queue_message(meta, body)
    got = state.queued_for_node(world.node_id, limit=3)
    assert [m.message_id for m in got] == [m.message_id for m in metas[:3]]
    with pytest.raises(InvalidArgument, match=r"limit must be an int in 1\.\.10000, got 0"):
        state.queued_for_node(world.node_id, limit=0)


# -- answered at most once, only by the node it was delivered to -----------------------------


def test_replied_exactly_once(state, world, delivered, body, reply_meta):
    state.store_reply(reply_meta(delivered), body, None, None)
    with pytest.raises(AlreadyReplied, match=f"request {delivered.message_id} was already"):
        state.store_reply(reply_meta(delivered), body, None, None)


def test_reply_from_the_wrong_node_is_refused(state, world, delivered, body, reply_meta):
    meta = reply_meta(delivered, src_node_id=world.other_node_id)
    with pytest.raises(NotDeliveredToNode, match=f"not sent to node {world.other_node_id}"):
        state.store_reply(meta, body, None, None)
    assert state.get_message(delivered.message_id).status is MessageStatus.DELIVERED


def test_reply_to_unknown_request(state, world, body, request_meta, reply_meta):
    ghost = request_meta(world.run_id, world.node_id)
    with pytest.raises(MessageNotFound, match=f"message {ghost.message_id} not found"):
        state.store_reply(reply_meta(ghost), body, None, None)


def test_reply_to_undelivered_request(state, world, body, request_meta, reply_meta):
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    with pytest.raises(NotDeliveredToNode, match="was not delivered yet"):
        state.store_reply(reply_meta(meta), body, None, None)


def test_reply_to_a_reply(state, world, delivered, body, reply_meta):
    first = state.store_reply(reply_meta(delivered), body, None, None)
    with pytest.raises(NotDeliveredToNode, match="is a reply, not a request"):
        state.store_reply(reply_meta(first.metadata(), src_node_id=world.node_id), body, None, None)


def test_reply_in_the_wrong_run(state, world, delivered, body, make_run, reply_meta):
    other = make_run(RunStatus.RUNNING)
    with pytest.raises(WrongRun, match=f"belongs to run {world.run_id}, reply claims run"):
        state.store_reply(reply_meta(delivered, run_id=other.run_id), body, None, None)


def test_reply_reusing_an_existing_id(state, world, delivered, body, reply_meta):
    with pytest.raises(DuplicateMessage, match=f"message {delivered.message_id} already exists"):
        state.store_reply(reply_meta(delivered, message_id=delivered.message_id), body, None, None)
    assert state.get_message(delivered.message_id).status is MessageStatus.DELIVERED


def test_reply_when_run_stopped(state, world, delivered, body, reply_meta):
    state.transition_run(world.run_id, RunStatus.STOPPED)
    with pytest.raises(RunNotRunning, match="is stopped, not running"):
        state.store_reply(reply_meta(delivered), body, None, None)


BAD_REPLIES = {
    "no body": ({"content": None, "error": None}, "exactly one of content and error"),
    "both bodies": ({"error": (1, "x")}, "exactly one of content and error"),
    "bad error": ({"content": None, "error": ("1", "x")}, r"error must be a \(code"),
    "long signature": ({"signature": b"s" * 5000}, "signature must be bytes of at most 4096"),
    "str signature": ({"signature": "sig"}, "signature must be bytes"),
    "to a node": ({"meta": {"dst_node_id": 9}}, "a reply goes from a node to node 0"),
    "from node 0": ({"meta": {"src_node_id": 0}}, "a reply goes from a node to node 0"),
    "no reply_to": ({"meta": {"reply_to_message_id": ""}}, "needs a message_id and a reply_to"),
}


@pytest.mark.parametrize("case", BAD_REPLIES.values(), ids=list(BAD_REPLIES))
def test_malformed_reply_is_refused(state, world, delivered, body, reply_meta, case):
    overrides, message = case
    args = {"content": body, "error": None, "signature": None}
    args.update({k: v for k, v in overrides.items() if k != "meta"})
    meta = reply_meta(delivered, **overrides.get("meta", {}))
    with pytest.raises(InvalidArgument, match=message):
        state.store_reply(meta, args["content"], args["error"], args["signature"])
    assert state.get_message(delivered.message_id).status is MessageStatus.DELIVERED


def test_replies_for_unknown_run(state):
    with pytest.raises(RunNotFound, match="run 31 not found"):
        state.replies_for(31, ["a"])


def test_replies_for_only_returns_this_runs_pending_replies(
    state, world, body, request_meta, reply_meta
):
    metas = [request_meta(world.run_id, world.node_id) for _ in range(3)]
    for meta in metas:
        state.queue_message(meta, body)
        state.mark_delivered(meta.message_id, world.node_id)
    replies = [state.store_reply(reply_meta(m), body, None, None) for m in metas[:2]]
    ids = [m.message_id for m in metas]
    assert {r.message_id for r in state.replies_for(world.run_id, ids)} == {
        r.message_id for r in replies
    }
    assert state.mark_replies_delivered([replies[0].message_id, metas[2].message_id]) == 1
    assert [r.message_id for r in state.replies_for(world.run_id, ids)] == [replies[1].message_id]


# -- TTL ----------------------------------------------------------------------------------------


def test_expiry(state, clock, world, body, request_meta, reply_meta):
    queued = request_meta(world.run_id, world.node_id, ttl=10, created_at=clock.now)
    delivered = request_meta(world.run_id, world.node_id, ttl=10, created_at=clock.now)
    answered = request_meta(world.run_id, world.node_id, ttl=10, created_at=clock.now)
    lasting = request_meta(world.run_id, world.node_id, ttl=1000, created_at=clock.now)
    for meta in (queued, delivered, answered, lasting):
        state.queue_message(meta, body)
    for meta in (delivered, answered):
        state.mark_delivered(meta.message_id, world.node_id)
    state.store_reply(reply_meta(answered), body, None, None)

    assert state.expire_messages(clock.now + 10) == []  # exactly at the deadline: still valid
    clock.advance(11)
    assert state.queued_for_node(world.node_id, limit=10) == [state.get_message(lasting.message_id)]
    expired = state.expire_messages()
    assert sorted(m.message_id for m in expired) == sorted(
        [queued.message_id, delivered.message_id]
    )
    assert all(m.status is MessageStatus.EXPIRED for m in expired)
    assert state.expire_messages() == []
    assert state.get_message(answered.message_id).status is MessageStatus.REPLIED

    with pytest.raises(MessageExpired, match=f"message {queued.message_id} expired"):
        state.mark_delivered(queued.message_id, world.node_id)
    with pytest.raises(MessageExpired, match=f"request {delivered.message_id} expired"):
        state.store_reply(reply_meta(delivered), body, None, None)


def test_ttl_is_enforced_before_the_sweep(state, clock, world, body, request_meta, reply_meta):
    first = request_meta(world.run_id, world.node_id, ttl=5, created_at=clock.now)
    second = request_meta(world.run_id, world.node_id, ttl=5, created_at=clock.now)
    state.queue_message(first, body)
    state.queue_message(second, body)
    state.mark_delivered(second.message_id, world.node_id)
    clock.advance(6)
    with pytest.raises(MessageExpired, match="expired"):
        state.mark_delivered(first.message_id, world.node_id)
    with pytest.raises(MessageExpired, match="expired before its reply"):
        state.store_reply(reply_meta(second), body, None, None)


def test_already_expired_request_is_not_queued(state, clock, world, body, request_meta):
    meta = request_meta(world.run_id, world.node_id, ttl=1, created_at=clock.now - 5)
    with pytest.raises(MessageExpired, match="expired before it was queued"):
        state.queue_message(meta, body)


# -- SuperLink-made error replies ----------------------------------------------------------------


def test_synthetic_reply_for_expired_request(state, clock, world, body, request_meta, reply_meta):
    meta = request_meta(world.run_id, world.node_id, ttl=5, created_at=clock.now)
    state.queue_message(meta, body)
    clock.advance(6)
    [expired] = state.expire_messages()
    reply = state.store_synthetic_error_reply(
        expired.message_id, ErrorCode.MESSAGE_EXPIRED, "message expired"
    )
    assert reply.synthetic and reply.signature is None
    assert (reply.src_node_id, reply.dst_node_id) == (world.node_id, 0)
    assert reply.error_code == ErrorCode.MESSAGE_EXPIRED
    assert reply.reply_to_message_id == meta.message_id
    assert state.get_message(meta.message_id).status is MessageStatus.EXPIRED
    assert state.replies_for(world.run_id, [meta.message_id]) == [reply]
    with pytest.raises(AlreadyReplied, match="was already answered"):
        state.store_synthetic_error_reply(meta.message_id, ErrorCode.MESSAGE_EXPIRED, "again")


def test_synthetic_reply_when_node_disconnects(state, world, delivered, body, reply_meta):
    [in_flight] = state.requests_in_flight_for_node(world.node_id)
    reply = state.store_synthetic_error_reply(
        in_flight.message_id, ErrorCode.NODE_UNAVAILABLE, "node went offline", message_id="syn-1"
    )
    assert reply.message_id == "syn-1"
    assert state.get_message(delivered.message_id).status is MessageStatus.REPLIED
    with pytest.raises(AlreadyReplied, match="was already answered"):
        state.store_reply(reply_meta(delivered), body, None, None)


def test_synthetic_reply_errors(state, world, delivered, body, reply_meta):
    with pytest.raises(MessageNotFound, match="message nope not found"):
        state.store_synthetic_error_reply("nope", 5, "x")
    reply = state.store_reply(reply_meta(delivered), body, None, None)
    with pytest.raises(InvalidArgument, match="is a reply, not a request"):
        state.store_synthetic_error_reply(reply.message_id, 5, "x")


# -- housekeeping ---------------------------------------------------------------------------------


def test_referenced_blobs(state, world, delivered, body, reply_meta):
    answer = state.blobs.put_bytes(b"answer")
    state.store_reply(reply_meta(delivered), answer, None, None)
    bundles = {run.bundle_sha256 for run in state.list_runs()}
    assert state.referenced_blobs() == {body.sha256, answer.sha256} | bundles


def test_purge_run_messages(state, world, delivered, body, reply_meta):
    state.store_reply(reply_meta(delivered), body, None, None)
    with pytest.raises(Conflict, match="is running; purge only ended runs"):
        state.purge_run_messages(world.run_id)
    state.transition_run(world.run_id, RunStatus.FINISHED)
    assert state.purge_run_messages(world.run_id) == 2
    with pytest.raises(MessageNotFound, match="not found"):
        state.get_message(delivered.message_id)
    with pytest.raises(RunNotFound, match="run 5 not found"):
        state.purge_run_messages(5)


def test_queue_messages_is_all_or_nothing(state, world, body, request_meta):
    good = [request_meta(world.run_id, n) for n in (world.node_id, world.other_node_id)]
    stored = state.queue_messages([(m, body) for m in good])
    assert [s.message_id for s in stored] == [m.message_id for m in good]
    bad = [request_meta(world.run_id, world.node_id), request_meta(world.run_id, 12345)]
    with pytest.raises(NodeNotFound):
        state.queue_messages([(m, body) for m in bad])
    with pytest.raises(MessageNotFound):
        state.get_message(bad[0].message_id)  # the first one was rolled back too


def test_queue_messages_refuses_an_id_taken_in_the_batch_or_before(
    state, world, body, request_meta
):
    assert state.queue_messages([]) == []
    first = [request_meta(world.run_id, world.node_id) for _ in range(501)]  # > one IN list
    with pytest.raises(DuplicateMessage, match=f"message {first[0].message_id} already exists"):
        state.queue_messages([(m, body) for m in [*first, first[0]]])
    assert state.queued_for_node(world.node_id, limit=10_000) == []
    state.queue_messages([(m, body) for m in first])
    second = [request_meta(world.run_id, world.node_id) for _ in range(501)]
    with pytest.raises(DuplicateMessage, match=f"message {first[-1].message_id} already exists"):
        state.queue_messages([(m, body) for m in [*second, first[-1]]])
    assert len(state.queued_for_node(world.node_id, limit=10_000)) == len(first)


def test_release_run_bodies_keeps_shared_and_live_bodies(state, make_run, world, request_meta):
    ended = make_run(RunStatus.RUNNING)
    live = make_run(RunStatus.RUNNING)
    own = state.blobs.put_bytes(b"only the ended run's model")
    shared = state.blobs.put_bytes(b"a model both runs sent")
    kept_row = request_meta(ended.run_id, world.node_id)
    state.queue_message(kept_row, own)
    state.queue_message(request_meta(ended.run_id, world.node_id), shared)
    state.queue_message(request_meta(live.run_id, world.node_id), shared)
    with pytest.raises(Conflict, match="ended runs only"):
        state.release_run_bodies(ended.run_id)
    state.transition_run(ended.run_id, RunStatus.FINISHED)
    assert state.release_run_bodies(ended.run_id) == [own.sha256]
    assert not state.blobs.exists(own.sha256)
    assert state.blobs.exists(shared.sha256)  # the live run still needs it
    row = state.get_message(kept_row.message_id)  # rows (and hashes) stay; only bodies go
    assert row.content == own

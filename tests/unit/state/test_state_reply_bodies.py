"""Contract: a reply's body is deleted once the ServerApp has it, unless still needed.

Runs against every backend. What keeps the bytes: another reply not yet handed out,
a request, a bundle or an artifact with the same bytes, or a writer holding them
(``put_stream(..., hold=True)``) until its own row is recorded.
"""

import os

import pytest

from appliance.state import RunStatus


@pytest.fixture
def run_id(make_run) -> int:
    return make_run(RunStatus.RUNNING).run_id


@pytest.fixture
def answer(state, run_id, make_node, request_meta, reply_meta):
    """Queue a request to a new node, deliver it and store its reply with ``data``."""
    names = iter(f"site-{i}" for i in range(100))

    def make(data: bytes):
        node_id = make_node(next(names)).node_id
        meta = request_meta(run_id, node_id)
        state.queue_message(meta, None)
        state.mark_delivered(meta.message_id, node_id)
        body = state.blobs.put_bytes(data)
        return state.store_reply(reply_meta(meta), body, None, None)

    return make


def test_a_delivered_reply_loses_its_body_but_an_open_descriptor_still_reads_it(state, answer):
    reply = answer(b"weights of site 0")
    fd = state.blobs.open_fd(reply.content.sha256)  # as handed to the ServerApp
    try:
        assert state.mark_replies_delivered([reply.message_id]) == 1
        assert not state.blobs.exists(reply.content.sha256)
        assert os.pread(fd, 64, 0) == b"weights of site 0"
    finally:
        os.close(fd)


def test_identical_replies_keep_their_body_until_the_last_is_delivered(state, answer):
    first, second = answer(b"same bytes"), answer(b"same bytes")
    assert first.content == second.content
    state.mark_replies_delivered([first.message_id])
    assert state.blobs.read_bytes(second.content.sha256) == b"same bytes"
    state.mark_replies_delivered([second.message_id])
    assert not state.blobs.exists(second.content.sha256)


def test_a_batch_of_identical_replies_is_released_together(state, answer):
    replies = [answer(b"echo") for _ in range(3)]
    assert state.mark_replies_delivered([r.message_id for r in replies]) == 3
    assert not state.blobs.exists(replies[0].content.sha256)


def test_a_reply_equal_to_a_queued_request_keeps_the_request_body(
    state, run_id, make_node, request_meta, answer
):
    shared = state.blobs.put_bytes(b"the model, echoed back")
    waiting = make_node("late-site").node_id
    state.queue_message(request_meta(run_id, waiting), shared)
    reply = answer(b"the model, echoed back")
    state.mark_replies_delivered([reply.message_id])
    assert state.blobs.read_bytes(shared.sha256) == b"the model, echoed back"


def test_bundles_and_artifacts_with_the_same_bytes_are_kept(state, run_id, answer):
    bundle = state.put_bundle([b"bundle bytes"], max_bytes=100)
    artifact = state.blobs.put_bytes(b"artifact bytes")
    state.put_artifact(run_id, "model.npz", artifact)
    replies = [answer(b"bundle bytes"), answer(b"artifact bytes")]
    state.mark_replies_delivered([r.message_id for r in replies])
    assert state.blobs.exists(bundle.sha256)
    assert state.blobs.exists(artifact.sha256)


def test_a_held_body_survives_until_released_and_a_later_delivery(state, answer):
    reply = answer(b"racing bytes")
    # Another writer stored the same bytes and has not recorded its row yet.
    again = state.blobs.put_stream([b"racing bytes"], max_bytes=100, durable=False, hold=True)
    state.mark_replies_delivered([reply.message_id])
    assert state.blobs.exists(again.sha256)
    state.blobs.release(again.sha256)
    second = answer(b"racing bytes")
    state.mark_replies_delivered([second.message_id])
    assert not state.blobs.exists(again.sha256)


def test_error_replies_and_unknown_ids_release_nothing(
    state, run_id, answer, make_node, request_meta, reply_meta
):
    node_id = make_node("failing-site").node_id
    meta = request_meta(run_id, node_id)
    state.queue_message(meta, None)
    state.mark_delivered(meta.message_id, node_id)
    error = state.store_reply(reply_meta(meta), None, (1, "ClientApp raised"), None)
    kept = answer(b"still queued")
    assert state.mark_replies_delivered([error.message_id, "no-such-message"]) == 1
    assert state.blobs.read_bytes(kept.content.sha256) == b"still queued"

"""Concurrency smoke tests: many threads on one State (run against every backend).

A gRPC thread pool calls the state from many threads. These tests race writers on
purpose and check the at-most-once rules still hold and that SQLite never reports
"database is locked" (writers take the lock up front and wait for it). Bounded: every
thread is joined with a timeout.
"""

import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import Callable

from state_threads import start_together

from appliance.state import (
    AlreadyDelivered,
    AlreadyReplied,
    DuplicateMessage,
    InvalidTransition,
    NodeAlreadyEnrolled,
    RunStatus,
)

THREADS = 6


def test_concurrent_queue_deliver_reply(state, make_run, make_node, request_meta, reply_meta):
    run = make_run(RunStatus.RUNNING)
    nodes = [make_node(f"site-{i}").node_id for i in range(3)]
    body = state.blobs.put_bytes(b"weights")
    per_producer = 10
    metas = [request_meta(run.run_id, nodes[i % len(nodes)]) for i in range(THREADS * per_producer)]
    by_id = {m.message_id: m for m in metas}

    def producer(k: int) -> Callable[[], None]:
        return lambda: [state.queue_message(m, body) for m in metas[k::THREADS]]

    start_together([producer(k) for k in range(THREADS)])
    assert sum(len(state.queued_for_node(n, limit=1000)) for n in nodes) == len(metas)

    delivered: list[str] = []
    replied: list[str] = []
    lock = threading.Lock()

    def consumer(node_id: int) -> Callable[[], None]:
        def consume() -> None:
            while batch := state.queued_for_node(node_id, limit=5):
                for msg in batch:
                    try:
                        state.mark_delivered(msg.message_id, node_id)
                    except AlreadyDelivered:
                        continue  # the other consumer of this node won the race
                    with lock:
                        delivered.append(msg.message_id)
                    try:
                        state.store_reply(reply_meta(by_id[msg.message_id]), body, None, None)
                    except AlreadyReplied:
                        continue
                    with lock:
                        replied.append(msg.message_id)

        return consume

    start_together([consumer(n) for n in nodes for _ in range(2)])
    assert Counter(delivered) == Counter(list(by_id))  # every request delivered exactly once
    assert Counter(replied) == Counter(list(by_id))
    assert len(state.replies_for(run.run_id, list(by_id))) == len(metas)


def test_racing_replies_to_one_request(state, make_run, make_node, request_meta, reply_meta):
    run = make_run(RunStatus.RUNNING)
    node = make_node()
    body = state.blobs.put_bytes(b"w")
    meta = request_meta(run.run_id, node.node_id)
    state.queue_message(meta, body)
    state.mark_delivered(meta.message_id, node.node_id)
    wins: list[str] = []

    def reply() -> None:
        with contextlib.suppress(AlreadyReplied):
            wins.append(state.store_reply(reply_meta(meta), body, None, None).message_id)

    start_together([reply] * THREADS)
    assert len(wins) == 1
    assert [r.message_id for r in state.replies_for(run.run_id, [meta.message_id])] == wins


def test_racing_batches_with_the_same_ids(state, make_run, make_node, request_meta):
    run = make_run(RunStatus.RUNNING)
    node = make_node()
    body = state.blobs.put_bytes(b"w")
    batch = [(request_meta(run.run_id, node.node_id), body) for _ in range(3)]
    outcomes: list[str] = []

    def push() -> None:
        try:
            state.queue_messages(batch)
            outcomes.append("queued")
        except DuplicateMessage as exc:
            outcomes.append(str(exc))

    start_together([push] * THREADS)
    refused = f"message {batch[0][0].message_id} already exists"
    assert sorted(outcomes) == sorted(["queued"] + [refused] * (THREADS - 1))
    assert len(state.queued_for_node(node.node_id, limit=10)) == len(batch)


def test_racing_transitions(state, make_run):
    run = make_run(RunStatus.RUNNING)
    targets = itertools.cycle([RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED])
    wins: list[RunStatus] = []

    def transition(target: RunStatus) -> Callable[[], None]:
        def go() -> None:
            with contextlib.suppress(InvalidTransition):
                wins.append(state.transition_run(run.run_id, target).status)

        return go

    start_together([transition(next(targets)) for _ in range(THREADS)])
    assert len(wins) == 1
    assert state.get_run(run.run_id).status is wins[0]


def test_racing_enrolments_and_log_appends(state, make_run, fp):
    run = make_run()
    enrolled: list[int] = []

    def enrol(i: int) -> Callable[[], None]:
        def go() -> None:
            with contextlib.suppress(NodeAlreadyEnrolled):
                enrolled.append(state.enrol_node("same", fp(f"c{i}"), fp(f"k{i}"), "admin").node_id)
            for j in range(5):
                state.append_log(run.run_id, "stdout", f"{i}:{j}")

        return go

    start_together([enrol(i) for i in range(THREADS)])
    assert len(enrolled) == 1
    lines = state.read_log(run.run_id)
    assert [line.seq for line in lines] == list(range(1, THREADS * 5 + 1))
    assert len({line.text for line in lines}) == THREADS * 5


def test_concurrent_blob_puts_of_the_same_bytes(state):
    refs = []
    start_together([lambda: refs.append(state.blobs.put_bytes(b"same" * 1000))] * THREADS)
    assert len(set(refs)) == 1
    assert state.blobs.list_blobs() == [refs[0].sha256]

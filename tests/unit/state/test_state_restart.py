"""Contract: a SuperLink restarted on the same database (run against every backend).

Nodes, bundles, finished runs and messages survive; nodes come back offline; runs
that were in flight are failed with reason "superlink restarted", never lost.
"""

import pytest

from appliance.state import (
    RESTART_REASON,
    InvalidTransition,
    MessageStatus,
    Recovery,
    RunStatus,
)


def test_restart_keeps_state_and_fails_in_flight_runs(
    backend, make_node, make_run, request_meta, state
):
    node = make_node("hospital-a")
    state.set_node_online(node.node_id, True)
    runs = {status: make_run(status) for status in RunStatus}
    body = state.blobs.put_bytes(b"weights")
    meta = request_meta(runs[RunStatus.RUNNING].run_id, node.node_id, ttl=1e6)
    state.queue_message(meta, body)
    state.append_log(runs[RunStatus.FINISHED].run_id, "stdout", "round 1 done")
    state.record_event("superlink.insecure", {"value": True})
    state.close()

    backend.clock.advance(120)
    reopened = backend.open()
    try:
        recovery = reopened.recover_after_restart()
        in_flight = [RunStatus.PENDING, RunStatus.STARTING, RunStatus.RUNNING]
        assert recovery == Recovery(
            failed_run_ids=tuple(sorted(runs[s].run_id for s in in_flight)),
            nodes_marked_offline=1,
        )
        assert reopened.get_node(node.node_id).online is False
        assert [n.name for n in reopened.list_nodes()] == ["hospital-a"]
        for status, run in runs.items():
            after = reopened.get_run(run.run_id)
            if status in in_flight:
                assert after.status is RunStatus.FAILED
                assert after.reason == RESTART_REASON == "superlink restarted"
                assert after.finished_at == backend.clock.now
            else:
                assert after == run
        assert reopened.get_message(meta.message_id).status is MessageStatus.QUEUED
        assert reopened.queued_for_node(node.node_id, limit=10) == []  # its run failed
        assert b"".join(reopened.blobs.open_chunks(body.sha256)) == b"weights"
        assert reopened.has_bundle(runs[RunStatus.FINISHED].bundle_sha256)
        [line] = reopened.read_log(runs[RunStatus.FINISHED].run_id)
        assert line.text == "round 1 done"
        [event] = reopened.list_events("superlink.insecure")
        assert event.details == {"value": True}
        with pytest.raises(InvalidTransition, match="cannot go from failed to running"):
            reopened.transition_run(runs[RunStatus.STARTING].run_id, RunStatus.RUNNING)
        assert reopened.recover_after_restart() == Recovery(
            failed_run_ids=(), nodes_marked_offline=0
        )
    finally:
        reopened.close()


def test_reopening_twice_is_harmless(backend, state, make_node):
    node = make_node()
    state.close()
    for _ in range(2):
        again = backend.open()
        assert again.get_node(node.node_id) == node
        again.close()

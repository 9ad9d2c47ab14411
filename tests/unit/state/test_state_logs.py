"""Contract: run logs and events (run against every backend)."""

import pytest

from appliance.state import InvalidArgument, LogLine, LogStream, RunNotFound, RunStatus


def test_append_and_tail(state, clock, make_run):
    run = make_run(RunStatus.RUNNING)
    first = state.append_log(run.run_id, LogStream.STDOUT, "hello")
    clock.advance(1)
    second = state.append_log(run.run_id, "stderr", "oops")
    state.append_log(run.run_id, "system", "run started")
    assert first == LogLine(
        run_id=run.run_id, seq=1, created_at=clock.now - 1, stream=LogStream.STDOUT, text="hello"
    )
    assert second.seq == 2
    assert [line.text for line in state.read_log(run.run_id)] == ["hello", "oops", "run started"]
    assert [line.seq for line in state.read_log(run.run_id, after_seq=1)] == [2, 3]
    assert [line.seq for line in state.read_log(run.run_id, after_seq=1, limit=1)] == [2]
    assert state.read_log(run.run_id, after_seq=3) == []


def test_nul_and_surrogates_are_replaced(state, make_run):
    run = make_run()
    line = state.append_log(run.run_id, "stdout", "a\x00b\udc80c")
    assert line.text == "a\ufffdb?c"
    assert [x.text for x in state.read_log(run.run_id)] == ["a\ufffdb?c"]
    failed = state.transition_run(run.run_id, RunStatus.FAILED, "boom\x00")
    assert failed.reason == "boom\ufffd"


def test_logs_are_per_run(state, make_run):
    a, b = make_run(), make_run()
    state.append_log(a.run_id, "stdout", "a1")
    state.append_log(b.run_id, "stdout", "b1")
    assert state.append_log(a.run_id, "stdout", "a2").seq == 2
    assert [line.text for line in state.read_log(b.run_id)] == ["b1"]


def test_logs_allowed_after_the_run_ended(state, make_run):
    run = make_run(RunStatus.FAILED)
    assert state.append_log(run.run_id, "system", "post mortem").seq == 1


def test_log_errors(state, make_run):
    run = make_run()
    with pytest.raises(RunNotFound, match="run 99 not found"):
        state.append_log(99, "stdout", "x")
    with pytest.raises(RunNotFound, match="run 99 not found"):
        state.read_log(99)
    with pytest.raises(InvalidArgument, match="unknown log stream 'journal'"):
        state.append_log(run.run_id, "journal", "x")
    with pytest.raises(InvalidArgument, match="log text must be a str of at most 65536"):
        state.append_log(run.run_id, "stdout", "x" * 70_000)
    with pytest.raises(InvalidArgument, match="after_seq must be an int >= 0"):
        state.read_log(run.run_id, after_seq=-1)
    with pytest.raises(InvalidArgument, match=r"limit must be an int in 1\.\.10000"):
        state.read_log(run.run_id, limit=0)


def test_events(state, clock):
    first = state.record_event("superlink.insecure", {"value": True, "by": "flag"})
    clock.advance(3)
    state.record_event("superlink.started", {})
    assert first.created_at == clock.now - 3
    assert first.details == {"by": "flag", "value": True}
    assert [e.kind for e in state.list_events()] == ["superlink.insecure", "superlink.started"]
    assert state.list_events("superlink.insecure") == [first]
    with pytest.raises(InvalidArgument, match="event details must be a dict"):
        state.record_event("x", ["not", "a", "dict"])
    with pytest.raises(InvalidArgument, match="event kind must be a string"):
        state.record_event("", {})

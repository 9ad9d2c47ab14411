"""Contract: bundles, runs and the run state machine (run against every backend)."""

import itertools

import pytest

from appliance.state import (
    BlobTooLarge,
    BundleNotFound,
    InvalidArgument,
    InvalidTransition,
    Run,
    RunNotFound,
    RunStatus,
)

S = RunStatus
LEGAL = {
    (S.PENDING, S.STARTING),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.STOPPED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.STOPPED),
    (S.RUNNING, S.FINISHED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.STOPPED),
}
ALL_PAIRS = list(itertools.product(RunStatus, RunStatus))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


# -- bundles ------------------------------------------------------------------------------


def test_put_bundle_streams_and_dedups(state, clock):
    first = state.put_bundle([b"abc", b"def"], max_bytes=6)
    assert first.size == 6
    assert first.created_at == clock.now
    clock.advance(10)
    again = state.put_bundle([b"abcdef"], max_bytes=100)
    assert again == first  # same bytes, same record
    assert state.has_bundle(first.sha256)
    assert state.get_bundle(first.sha256) == first
    assert b"".join(state.open_bundle(first.sha256)) == b"abcdef"


def test_oversized_bundle_is_refused(state):
    with pytest.raises(BlobTooLarge, match="exceeds the limit of 4 bytes"):
        state.put_bundle([b"abc", b"de"], max_bytes=4)
    assert state.blobs.list_blobs() == []


def test_unknown_bundle(state):
    missing = "0" * 64
    assert not state.has_bundle(missing)
    with pytest.raises(BundleNotFound, match=f"bundle {missing} not found"):
        state.open_bundle(missing)
    with pytest.raises(InvalidArgument, match="sha256 must be 64 lowercase hex"):
        state.get_bundle("../../etc/passwd")


# -- runs ---------------------------------------------------------------------------------


def test_create_run_is_pending(state, clock):
    bundle = state.put_bundle([b"app"], max_bytes=10)
    run = state.create_run("alice", bundle.sha256, {"lr": 0.1, "epochs": 2}, {"rounds": 3})
    assert isinstance(run, Run)
    assert 0 < run.run_id < 2**63
    assert run.status is RunStatus.PENDING
    assert run.owner == "alice"
    assert run.bundle_sha256 == bundle.sha256
    assert run.reason is None
    assert (run.created_at, run.started_at, run.finished_at) == (clock.now, None, None)
    assert run.run_config == {"epochs": 2, "lr": 0.1}
    assert run.options == {"rounds": 3}
    run.run_config["lr"] = 99  # a fresh copy each time: the record does not change
    assert state.get_run(run.run_id).run_config == {"epochs": 2, "lr": 0.1}


def test_create_run_needs_a_stored_bundle(state):
    with pytest.raises(BundleNotFound, match="store the bundle before the run"):
        state.create_run("alice", "f" * 64, {}, {})


BAD_RUNS = {
    "config not a dict": ({"owner": "alice", "run_config": [1]}, "run_config must be a dict"),
    "config not JSON": ({"owner": "alice", "run_config": {"x": object()}}, "not JSON"),
    "config NaN": ({"owner": "alice", "run_config": {"x": float("nan")}}, "not JSON"),
    "options not a dict": ({"owner": "alice", "options": "x"}, "options must be a dict"),
    "empty owner": ({"owner": ""}, "owner must be a string"),
}


@pytest.mark.parametrize("case", BAD_RUNS.values(), ids=list(BAD_RUNS))
def test_malformed_run_is_refused(state, case):
    kwargs, message = case
    bundle = state.put_bundle([b"app"], max_bytes=10)
    args = {"owner": "alice", "run_config": {}, "options": {}, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        state.create_run(args["owner"], bundle.sha256, args["run_config"], args["options"])
    assert state.list_runs() == []


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL), ids=lambda s: s.value)
def test_legal_transition(state, clock, make_run, current, target):
    run = make_run(current)
    clock.advance(7)
    after = state.transition_run(run.run_id, target, "because")
    assert after.status is target
    assert after.reason == "because"
    if target is RunStatus.RUNNING:
        assert after.started_at == clock.now
    if target.is_terminal:
        assert after.finished_at == clock.now
    assert state.get_run(run.run_id) == after


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=lambda s: s.value)
def test_illegal_transition_is_refused(state, make_run, current, target):
    run = make_run(current)
    message = f"run {run.run_id} cannot go from {current.value} to {target.value}"
    with pytest.raises(InvalidTransition, match=message) as info:
        state.transition_run(run.run_id, target)
    assert (info.value.current, info.value.requested) == (current.value, target.value)
    assert state.get_run(run.run_id) == run


def test_every_pair_is_classified():
    assert len(LEGAL) + len(ILLEGAL) == 36
    assert {s for s in S if s.is_terminal} == {S.FINISHED, S.FAILED, S.STOPPED}


def test_transition_accepts_status_strings(state, make_run):
    run = make_run(RunStatus.PENDING)
    assert state.transition_run(run.run_id, "starting").status is RunStatus.STARTING
    with pytest.raises(InvalidArgument, match="unknown run status 'paused'"):
        state.transition_run(run.run_id, "paused")


def test_transition_unknown_run(state):
    with pytest.raises(RunNotFound, match="run 12345 not found"):
        state.transition_run(12345, RunStatus.STARTING)
    with pytest.raises(RunNotFound, match="run 12345 not found"):
        state.get_run(12345)


def test_long_reasons_are_cut(state, make_run):
    run = make_run(RunStatus.RUNNING)
    after = state.transition_run(run.run_id, RunStatus.FAILED, "x" * 10_000)
    assert after.reason is not None
    assert len(after.reason) == 4096
    assert after.reason.endswith("...")


def test_list_runs_by_owner(state, clock, make_run):
    a1 = make_run(RunStatus.PENDING, owner="alice")
    clock.advance(1)
    b1 = make_run(RunStatus.RUNNING, owner="bob")
    clock.advance(1)
    a2 = make_run(RunStatus.FINISHED, owner="alice")
    assert [r.run_id for r in state.list_runs()] == [a1.run_id, b1.run_id, a2.run_id]
    assert [r.run_id for r in state.list_runs("alice")] == [a1.run_id, a2.run_id]
    assert state.list_runs("carol") == []


def test_fail_in_flight_runs(state, clock, make_run):
    runs = {status: make_run(status) for status in RunStatus}
    clock.advance(60)
    failed = state.fail_in_flight_runs()
    in_flight = [RunStatus.PENDING, RunStatus.STARTING, RunStatus.RUNNING]
    assert failed == sorted(runs[s].run_id for s in in_flight)
    for status, run in runs.items():
        now = state.get_run(run.run_id)
        if status in in_flight:
            assert now.status is RunStatus.FAILED
            assert now.reason == "superlink restarted"
            assert now.finished_at == clock.now
        else:
            assert now == run
    assert state.fail_in_flight_runs() == []

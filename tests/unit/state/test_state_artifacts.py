import pytest

from appliance.state import ArtifactNotFound, InvalidArgument, RunNotFound, RunStatus


def test_artifacts_are_saved_replaced_listed_and_kept_by_gc(state, make_run):
    run = make_run(RunStatus.RUNNING)
    first = state.blobs.put_bytes(b"round 1 metrics")
    state.put_artifact(run.run_id, "metrics.json", first)
    model = state.blobs.put_bytes(b"final model bytes")
    state.put_artifact(run.run_id, "model-final.npz", model)
    second = state.blobs.put_bytes(b"round 2 metrics")
    replaced = state.put_artifact(run.run_id, "metrics.json", second)
    assert replaced.sha256 == second.sha256
    assert [a.name for a in state.list_artifacts(run.run_id)] == ["metrics.json", "model-final.npz"]
    assert state.get_artifact(run.run_id, "model-final.npz").size == model.size
    kept = state.referenced_blobs()
    assert {model.sha256, second.sha256} <= kept
    assert first.sha256 not in kept
    assert not state.blobs.exists(first.sha256)  # the replaced version is deleted at once


def test_artifact_errors(state, make_run):
    run = make_run(RunStatus.RUNNING)
    blob = state.blobs.put_bytes(b"x")
    with pytest.raises(RunNotFound):
        state.put_artifact(123456789, "metrics.json", blob)
    with pytest.raises(ArtifactNotFound, match="artifact 'nope' of run"):
        state.get_artifact(run.run_id, "nope")
    missing = type(blob)(sha256="0" * 64, size=1)
    with pytest.raises(InvalidArgument, match="not stored"):
        state.put_artifact(run.run_id, "metrics.json", missing)

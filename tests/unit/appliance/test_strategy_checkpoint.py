"""ServerApp-side checkpoints: .npz every N rounds and at the end, metrics as JSON."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Message, MetricRecord, RecordDict, ServerApp
from appliance.errors import StrategyError
from appliance.local import LocalGrid, RunFailed, make_nodes, run_local
from appliance.strategy import (
    CheckpointError,
    CheckpointSink,
    DirectorySink,
    FedAvg,
    Krum,
    Result,
    decode_npz,
    encode_npz,
)
from appliance.strategy.checkpoint import check_artifact_name


def _client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        site = int(ctx.node_config["partition-id"])
        arrays = {
            k: a + np.asarray(site + 1, dtype=a.dtype) for k, a in msg.content["arrays"].items()
        }
        metrics = MetricRecord({"num-examples": 1, "loss": 1.0 / (site + 1)})
        return Message(
            RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg, ctx):
        metrics = MetricRecord({"num-examples": 2, "accuracy": 0.5})
        return Message(RecordDict({"m": metrics}), reply_to=msg)

    return app


def _init() -> ArrayRecord:
    return ArrayRecord(
        {"layer.weight": np.zeros((2, 3), dtype=np.float32), "steps": np.zeros(1, dtype=np.int64)}
    )


def _run(strategy, rounds: int, models: dict[int, ArrayRecord] | None = None, **start) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        def evaluate_fn(server_round, arrays):
            if models is not None:
                models[server_round] = arrays
            return MetricRecord({"central": float(server_round)})

        results.append(
            strategy.start(
                grid=grid,
                initial_arrays=_init(),
                num_rounds=rounds,
                evaluate_fn=evaluate_fn,
                **start,
            )
        )

    run_local(server, _client(), num_nodes=3)
    return results[0]


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_models_every_n_rounds_final_model_and_metrics_json(tmp_path):
    models: dict[int, ArrayRecord] = {}
    strategy = FedAvg(min_available_nodes=3, seed=1)
    result = _run(strategy, 5, models, checkpoint_every=2, checkpoint_sink=DirectorySink(tmp_path))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "checkpoints/round-00002.npz",
        "checkpoints/round-00004.npz",
        "metrics.json",
        "model-final.npz",
    ]
    for server_round in (2, 4):
        saved = _load(tmp_path / f"checkpoints/round-{server_round:05d}.npz")
        assert ArrayRecord(saved) == models[server_round]
        assert list(saved) == ["layer.weight", "steps"]
        assert saved["steps"].dtype == np.int64
    assert ArrayRecord(_load(tmp_path / "model-final.npz")) == result.arrays

    document = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert document["format"] == "greenhouse-metrics/1"
    assert document["strategy"] == "FedAvg" and document["complete"] is True
    rounds = {entry["round"]: entry for entry in document["rounds"]}
    assert sorted(rounds) == [0, 1, 2, 3, 4, 5]
    assert rounds[0]["evaluate_serverapp"] == {"central": 0.0} and rounds[0]["train"] is None
    for server_round in range(1, 6):
        entry = rounds[server_round]
        assert entry["train"] == dict(result.train_metrics_clientapp[server_round])
        assert entry["evaluate"] == {"num-examples": 6, "accuracy": 0.5}
        assert entry["sampling"]["available"] == 3 and entry["sampling"]["seed"] == 1
        assert entry["sampling"]["rate"] == 1.0
        assert entry["train_failures"] == []


def test_without_checkpoint_every_only_the_final_model_and_metrics(tmp_path):
    _run(FedAvg(min_available_nodes=3), 2, checkpoint_sink=DirectorySink(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model-final.npz"]


def test_a_grid_can_provide_the_sink(tmp_path):
    class ArtifactGrid(LocalGrid):
        checkpoint_sink = DirectorySink(tmp_path)

    grid = ArtifactGrid(_client(), make_nodes(3))
    FedAvg(min_available_nodes=3).start(grid=grid, initial_arrays=_init(), num_rounds=1)
    assert (tmp_path / "model-final.npz").exists()


def test_failures_and_non_finite_metrics_are_recorded_as_valid_json():
    class Memory:
        def __init__(self) -> None:
            self.files: dict[str, bytes] = {}

        def put(self, name: str, data: bytes) -> None:
            self.files[check_artifact_name(name)] = data

    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        if int(ctx.node_config["partition-id"]) == 0:
            raise RuntimeError("disk full")
        metrics = MetricRecord({"num-examples": 1, "loss": float("nan")})
        return Message(
            RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg
        )

    sink = Memory()
    assert isinstance(sink, CheckpointSink)
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        strategy = FedAvg(min_available_nodes=3, fraction_evaluate=0.0)
        strategy.start(grid=grid, initial_arrays=_init(), num_rounds=1, checkpoint_sink=sink)

    run_local(server, app, num_nodes=3)
    document = json.loads(sink.files["metrics.json"])
    (entry,) = document["rounds"]
    assert entry["train"]["loss"] == "nan"
    (failure,) = entry["train_failures"]
    assert "disk full" in failure["reason"] and isinstance(failure["node_id"], int)


def test_checkpoint_every_without_a_sink_is_refused_before_the_first_round():
    with pytest.raises(RunFailed, match="checkpoint_every=2 needs somewhere to write") as info:
        _run(FedAvg(min_available_nodes=3), 3, checkpoint_every=2)
    assert isinstance(info.value.__cause__, StrategyError)


@pytest.mark.parametrize("every", [0, -1, True])
def test_checkpoint_every_must_be_positive(tmp_path, every):
    with pytest.raises(RunFailed, match="checkpoint_every must be >= 1"):
        _run(
            FedAvg(min_available_nodes=3),
            1,
            checkpoint_every=every,
            checkpoint_sink=DirectorySink(tmp_path),
        )


def test_a_failing_sink_stops_the_run_with_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(RunFailed, match=r"could not store checkpoints/round-00001\.npz") as info:
        _run(Krum(), 2, checkpoint_every=1, checkpoint_sink=DirectorySink(tmp_path))
    assert isinstance(info.value.__cause__, CheckpointError)


NAMES = {
    "absolute": "/etc/passwd",
    "parent": "../model.npz",
    "hidden parent": "checkpoints/../../x",
    "dot file": ".hidden",
    "backslash": "a\\b",
    "empty": "",
    "trailing slash": "checkpoints/",
}


@pytest.mark.parametrize("name", NAMES.values(), ids=list(NAMES))
def test_directory_sink_refuses_unsafe_names(tmp_path, name):
    with pytest.raises(CheckpointError, match="not a safe relative path"):
        DirectorySink(tmp_path / "out").put(name, b"x")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint16", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_npz_round_trips_every_record_dtype_without_pickle(dtype):
    rng = np.random.default_rng(0)
    arrays = ArrayRecord(
        {"a": (rng.normal(size=(3, 4)) * 10).astype(dtype), "scalar": np.array(3, dtype=dtype)}
    )
    data = encode_npz(arrays)
    assert decode_npz(data) == arrays
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["a.npy", "scalar.npy"]


def test_npz_refuses_unsafe_array_names_and_garbage():
    with pytest.raises(CheckpointError, match=r"cannot be an \.npz entry"):
        encode_npz(ArrayRecord({"../evil": np.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"not a readable \.npz"):
        decode_npz(b"not a zip")
    buffer = io.BytesIO()
    np.savez(buffer, objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"not a readable \.npz"):
        decode_npz(buffer.getvalue())

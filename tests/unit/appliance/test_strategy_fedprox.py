"""FedProx: mu travels in the train config, and the hospital example honours it."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from appliance import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
    ServerApp,
)
from appliance.appconfig import load_app_spec, load_component, merge_run_config
from appliance.local import run_local
from appliance.strategy import FedProx, Result

APP = Path(__file__).resolve().parents[3] / "examples" / "hospital"


def _echo_client(configs: list[dict]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        configs.append(dict(msg.content["config"]))
        metrics = MetricRecord({"num-examples": 1})
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


def test_proximal_mu_is_in_every_train_config_and_the_mean_is_fedavgs():
    configs: list[dict] = []
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        strategy = FedProx(proximal_mu=0.01, fraction_evaluate=0.0, min_available_nodes=3)
        init = ArrayRecord([np.arange(3, dtype=np.float32)])
        config = ConfigRecord({"learning-rate": 0.1})
        results.append(
            strategy.start(grid=grid, initial_arrays=init, num_rounds=2, train_config=config)
        )

    run_local(server, _echo_client(configs), num_nodes=3)
    assert len(configs) == 6
    assert all(c["proximal-mu"] == 0.01 and c["learning-rate"] == 0.1 for c in configs)
    assert results[0].arrays["0"].tolist() == [0.0, 1.0, 2.0]
    assert FedProx.is_linear


@pytest.mark.parametrize("mu", [-0.1, float("inf"), float("nan"), True])
def test_invalid_mu_is_refused(mu):
    with pytest.raises(ValueError, match="proximal_mu must be a finite number >= 0"):
        FedProx(proximal_mu=mu)


def _hospital():
    pytest.importorskip("sklearn", reason="needs the examples extra (scikit-learn)")
    spec = load_app_spec(APP)
    client = load_component(spec, spec.clientapp, ClientApp)
    task = importlib.import_module("hospital.task")
    return client, task, merge_run_config(spec.config, {})


def test_hospital_task_adds_the_proximal_gradient():
    _, task, _ = _hospital()
    rng = np.random.default_rng(0)
    data = task.Split(rng.uniform(size=(40, 30)), (rng.uniform(size=40) > 0.5).astype(float))
    start = [np.full(30, 0.3, dtype=np.float32), np.zeros(1, dtype=np.float32)]
    kwargs = dict(epochs=5, learning_rate=0.5, batch_size=8, seed=1)
    free, _ = task.train(start, data, **kwargs)
    held, _ = task.train(start, data, proximal_mu=1.0, **kwargs)
    drift = [np.linalg.norm(a - s) for a, s in zip(free, start, strict=True)]
    held_drift = [np.linalg.norm(a - s) for a, s in zip(held, start, strict=True)]
    assert held_drift[0] < drift[0]  # the proximal term pulls towards the global model
    same, _ = task.train(start, data, proximal_mu=0.0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(same, free, strict=True))


def test_fedprox_on_the_hospital_example_still_reaches_90_percent():
    client, task, cfg = _hospital()
    test_set = task.load_test_set(int(cfg["data-seed"]), float(cfg["test-fraction"]))
    accuracy: dict[int, float] = {}
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            accuracy[server_round] = task.evaluate(arrays.to_numpy_ndarrays(), test_set)[1]
            return MetricRecord({"accuracy": accuracy[server_round]})

        FedProx(proximal_mu=0.1, min_available_nodes=3).start(
            grid=grid,
            initial_arrays=ArrayRecord(task.initial_parameters()),
            num_rounds=int(cfg["num-server-rounds"]),
            train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}),
            evaluate_fn=evaluate,
        )

    run_local(server, client, num_nodes=3, run_config=cfg)
    assert accuracy[max(accuracy)] >= 0.90

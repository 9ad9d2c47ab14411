"""Every strategy takes metric-aggregation hooks (weighted mean by default) and evaluate_fn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Message, MetricRecord, RecordDict, ServerApp
from appliance.local import run_local
from appliance.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
    MultiKrum,
    Result,
    TrimmedMean,
)

NODES = 5
STRATEGIES = {
    "FedAvg": FedAvg,
    "FedProx": lambda **kw: FedProx(proximal_mu=0.1, **kw),
    "FedAdagrad": FedAdagrad,
    "FedAdam": FedAdam,
    "FedYogi": FedYogi,
    "FedMedian": FedMedian,
    "TrimmedMean": lambda **kw: TrimmedMean(beta=0.2, **kw),
    "Krum": lambda **kw: Krum(num_malicious_nodes=1, **kw),
    "MultiKrum": lambda **kw: MultiKrum(num_malicious_nodes=1, **kw),
    "Bulyan": lambda **kw: Bulyan(num_malicious_nodes=0, **kw),
}


def _client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        site = int(ctx.node_config["partition-id"])
        arrays = {k: a + np.float32(0.1 * site) for k, a in msg.content["arrays"].items()}
        metrics = MetricRecord({"num-examples": site + 1, "loss": float(site)})
        return Message(
            RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg, ctx):
        site = int(ctx.node_config["partition-id"])
        metrics = MetricRecord({"num-examples": 10, "accuracy": site / 10})
        return Message(RecordDict({"m": metrics}), reply_to=msg)

    return app


def _largest(key: str):
    def aggregate(records: Sequence[RecordDict], weight_key: str) -> MetricRecord:
        values = [m[key] for r in records for m in r.metric_records.values() if key in m]
        return MetricRecord({f"max-{key}": max(values), "replies": len(values)})

    return aggregate


def _run(strategy) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            return MetricRecord({"mean-weight": float(np.mean(arrays["0"]))})

        init = ArrayRecord([np.zeros(4, dtype=np.float32)])
        results.append(
            strategy.start(grid=grid, initial_arrays=init, num_rounds=2, evaluate_fn=evaluate_fn)
        )

    run_local(server, _client(), num_nodes=NODES)
    return results[0]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_custom_metric_hooks_and_central_evaluation(name):
    strategy = STRATEGIES[name](
        min_available_nodes=NODES,
        train_metrics_aggr_fn=_largest("loss"),
        evaluate_metrics_aggr_fn=_largest("accuracy"),
    )
    result = _run(strategy)
    for server_round in (1, 2):
        assert dict(result.train_metrics_clientapp[server_round]) == {
            "max-loss": 4.0,
            "replies": NODES,
        }
        assert dict(result.evaluate_metrics_clientapp[server_round]) == {
            "max-accuracy": 0.4,
            "replies": NODES,
        }
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert result.evaluate_metrics_serverapp[0]["mean-weight"] == 0.0
    assert result.evaluate_metrics_serverapp[2]["mean-weight"] > 0.0


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_default_metric_aggregation_is_the_weighted_mean(name):
    result = _run(STRATEGIES[name](min_available_nodes=NODES))
    weights = np.arange(1, NODES + 1)
    train = result.train_metrics_clientapp[1]
    assert train["num-examples"] == weights.sum()
    assert train["loss"] == pytest.approx(np.average(np.arange(NODES), weights=weights))
    evaluate = result.evaluate_metrics_clientapp[1]
    assert evaluate["accuracy"] == pytest.approx(np.mean(np.arange(NODES) / 10))

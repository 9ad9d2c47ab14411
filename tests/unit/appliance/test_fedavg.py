"""FedAvg through the local runner (real wire encoding) and directly."""

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, ServerApp
from appliance.errors import StrategyError
from appliance.local import RunFailed, run_local
from appliance.strategy import FedAvg, InvalidUpdate, Result, WeightedMean, weighted_metrics_mean
from appliance.strategy.aggregate import BLOCK

SHAPES = {"w": (4, 3), "b": (3,)}


def _updates(seed: int, n: int):
    rng = np.random.default_rng(seed)
    arrays = [
        {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
        for _ in range(n)
    ]
    weights = rng.integers(1, 1000, size=n).tolist()
    return arrays, weights


def _client(updates, weights, behaviour=None) -> ClientApp:
    """Node i replies with updates[i] and weight weights[i] (or misbehaves per ``behaviour``)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        i = int(ctx.node_config["partition-id"])
        if behaviour and i in behaviour:
            return behaviour[i](msg)
        content = RecordDict(
            {
                "arrays": ArrayRecord(updates[i]),
                "metrics": MetricRecord({"num-examples": weights[i], "loss": float(i)}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _run(client: ClientApp, num_nodes: int, **fedavg) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        init = ArrayRecord({k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()})
        strategy = FedAvg(fraction_evaluate=0.0, wait_for_nodes_s=0.5, **fedavg)
        results.append(strategy.start(grid=grid, initial_arrays=init, num_rounds=1))

    run_local(server, client, num_nodes=num_nodes)
    return results[0]


@pytest.mark.parametrize("seed", range(5))
def test_weighted_mean_matches_numpy(seed):
    n = 2 + seed
    updates, weights = _updates(seed, n)
    result = _run(_client(updates, weights), n, min_available_nodes=n)
    for name in SHAPES:
        expected = np.average(np.stack([u[name] for u in updates]), axis=0, weights=weights)
        np.testing.assert_allclose(result.arrays[name], expected, rtol=1e-6, atol=1e-6)
        assert result.arrays[name].dtype == np.float32
    metrics = result.train_metrics_clientapp[1]
    assert metrics["num-examples"] == sum(weights)
    assert metrics["loss"] == pytest.approx(np.average(range(n), weights=weights))
    assert result.train_failures[1] == []


def _raise(msg):
    raise RuntimeError("disk full")


def _bad_shape(msg):
    arrays = {"w": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 5})}
    )
    return Message(content, reply_to=msg)


def _bad_dtype(msg):
    arrays = {"w": np.zeros((4, 3)), "b": np.zeros(3)}
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 5})}
    )
    return Message(content, reply_to=msg)


def _nan(msg):
    arrays = {"w": np.full((4, 3), np.nan, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 5})}
    )
    return Message(content, reply_to=msg)


def _no_weight(msg):
    arrays = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)


def test_failures_and_bad_replies_are_excluded_and_reported():
    n = 7
    updates, weights = _updates(42, n)
    behaviour = {2: _raise, 3: _bad_shape, 4: _bad_dtype, 5: _nan, 6: _no_weight}
    result = _run(_client(updates, weights, behaviour), n, min_available_nodes=n)
    good = [0, 1]
    for name in SHAPES:
        expected = np.average(
            np.stack([updates[i][name] for i in good]), axis=0, weights=[weights[i] for i in good]
        )
        np.testing.assert_allclose(result.arrays[name], expected, rtol=1e-6, atol=1e-6)
    reasons = sorted(f.reason for f in result.train_failures[1])
    assert len(reasons) == 5
    assert any("RuntimeError: disk full" in r for r in reasons)
    assert any("is float32[3, 4], expected float32[4, 3]" in r for r in reasons)
    assert any("is float64[4, 3], expected float32[4, 3]" in r for r in reasons)
    assert any("NaN or infinite" in r for r in reasons)
    assert any("'num-examples'" in r for r in reasons)
    assert result.train_metrics_clientapp[1]["num-examples"] == weights[0] + weights[1]


def test_too_few_usable_replies_keep_the_previous_model():
    updates, weights = _updates(1, 3)
    behaviour = {1: _raise, 2: _nan}
    result = _run(_client(updates, weights, behaviour), 3, min_train_nodes=2, min_available_nodes=3)
    assert all(not a.any() for a in result.arrays.to_numpy_ndarrays())
    assert 1 not in result.train_metrics_clientapp
    assert len(result.train_failures[1]) == 2


def test_min_available_nodes_is_honoured():
    updates, weights = _updates(1, 2)
    with pytest.raises(
        RunFailed, match="2 node\\(s\\) available, the strategy needs at least 3"
    ) as info:
        _run(_client(updates, weights), 2, min_available_nodes=3)
    assert isinstance(info.value.__cause__, StrategyError)


def test_fraction_and_min_train_nodes_decide_the_sample():
    sampled: list[int] = []
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        sampled.append(ctx.node_id)
        content = RecordDict(
            {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}
        )
        return Message(content, reply_to=msg)

    _run(app, 10, fraction_train=0.2, min_train_nodes=3, min_available_nodes=10)
    assert len(sampled) == 3 and len(set(sampled)) == 3
    sampled.clear()
    _run(app, 10, fraction_train=0.5, min_train_nodes=2, min_available_nodes=10)
    assert len(sampled) == 5


def test_invalid_parameters():
    with pytest.raises(ValueError, match="fraction_train must be in"):
        FedAvg(fraction_train=1.5)
    with pytest.raises(ValueError, match="min_train_nodes must be >= 1"):
        FedAvg(min_train_nodes=0)


def test_weighted_mean_refuses_bad_weight_and_empty_result():
    ref = ArrayRecord({"x": np.zeros(2)})
    acc = WeightedMean(ref)
    with pytest.raises(ValueError, match="no update"):
        acc.result()
    with pytest.raises(Exception, match="positive finite"):
        acc.add(ArrayRecord({"x": np.ones(2)}), 0)


def test_weighted_mean_rounds_integer_arrays():
    acc = WeightedMean(ArrayRecord({"count": np.zeros(2, dtype=np.int64)}))
    acc.add(ArrayRecord({"count": np.array([1, 2])}), 1)
    acc.add(ArrayRecord({"count": np.array([2, 4])}), 1)
    out = acc.result()["count"]
    assert out.dtype == np.int64 and out.tolist() == [2, 3]


def test_weighted_mean_in_blocks_equals_the_whole_array_formula():
    # Sizes that end mid-block, a multi-dimensional array and a float16 one.
    rng = np.random.default_rng(7)
    shapes = {"w": (3, BLOCK + 11), "b": (BLOCK * 2 - 1,), "h": (5, 7)}
    dtypes = {"w": np.float32, "b": np.float64, "h": np.float16}
    updates = [
        {k: rng.standard_normal(shape).astype(dtypes[k]) for k, shape in shapes.items()}
        for _ in range(4)
    ]
    weights = [3.0, 0.25, 7.5, 1e-3]
    acc = WeightedMean(ArrayRecord({k: np.zeros(s, dtypes[k]) for k, s in shapes.items()}))
    for update, weight in zip(updates, weights, strict=True):
        acc.add(ArrayRecord(update), weight)
    out = acc.result()
    for name in shapes:
        total = sum(u[name].astype(np.float64) * w for u, w in zip(updates, weights, strict=True))
        expected = (total / sum(weights)).astype(dtypes[name])
        assert out[name].dtype == expected.dtype and out[name].shape == expected.shape
        assert np.array_equal(out[name], expected)


def test_weighted_mean_refuses_a_nan_in_the_last_block_and_keeps_its_sum():
    ref = ArrayRecord({"x": np.zeros(BLOCK * 3 + 5, np.float32)})
    acc = WeightedMean(ref)
    acc.add(ArrayRecord({"x": np.ones(BLOCK * 3 + 5, np.float32)}), 2.0)
    bad = np.full(BLOCK * 3 + 5, 100.0, np.float32)
    bad[-1] = np.nan
    with pytest.raises(InvalidUpdate, match="NaN or infinite"):
        acc.add(ArrayRecord({"x": bad}), 1.0)
    assert acc.count == 1
    assert np.array_equal(acc.result()["x"], np.ones(BLOCK * 3 + 5, np.float32))


def test_metric_mean_handles_partial_keys_and_lists():
    rds = [
        RecordDict({"m": MetricRecord({"num-examples": 1, "acc": 1.0, "curve": [1.0, 2.0]})}),
        RecordDict({"m": MetricRecord({"num-examples": 3, "acc": 0.0, "only-here": 5})}),
        RecordDict({"m": MetricRecord({"num-examples": 4, "curve": [3.0]})}),
    ]
    out = weighted_metrics_mean(rds, "num-examples")
    assert out["num-examples"] == 8
    assert out["acc"] == pytest.approx(0.25)
    assert out["only-here"] == 5.0
    assert "curve" not in out  # lengths disagree

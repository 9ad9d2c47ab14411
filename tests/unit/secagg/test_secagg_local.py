"""FedAvg with SecAgg+ through the local runner (every message through the real wire codec)."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_harness import SeededRng

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, ServerApp
from appliance.errors import StrategyError
from appliance.local import RunFailed, run_local
from appliance.strategy import FedAvg, Result
from secagg import MESSAGE_TYPES, SecAggPlus, Stage, UnsafeLocalKeyring, make_secagg_mod

FEATURES = 6
CLIP = 0.5
BITS = 16
STEP = 2 * CLIP / (2**BITS - 1)


def _site_data(partition: int) -> tuple[np.ndarray, np.ndarray]:
    """A small hospital-like binary task; sites differ in size and case mix."""
    rng = np.random.default_rng(100 + partition)
    n = 40 + 25 * partition
    true_w = np.linspace(-1.5, 1.5, FEATURES)
    x = rng.normal(size=(n, FEATURES)) + 0.3 * partition
    y = (x @ true_w + rng.normal(scale=0.5, size=n) > 0.3 * partition).astype(np.float64)
    return x, y


def _train(params: list[np.ndarray], partition: int) -> tuple[list[np.ndarray], int, float]:
    x, y = _site_data(partition)
    w, b = params[0].astype(np.float64), float(params[1][0])
    for _ in range(5):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= 0.1 * x.T @ (p - y) / len(y)
        b -= 0.1 * float(np.mean(p - y))
    loss = float(np.mean((p - y) ** 2))
    return [w.astype(np.float32), np.array([b], dtype=np.float32)], len(y), loss


def _client_app(*, fail_train_on: set[int] = frozenset(), mods=()) -> ClientApp:
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        partition = int(ctx.node_config["partition-id"])
        if partition in fail_train_on:
            raise RuntimeError("out of GPU memory")
        new, examples, loss = _train(msg.content["arrays"].to_numpy_ndarrays(), partition)
        metrics = MetricRecord({"num-examples": examples, "train-loss": loss})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    return app


def _run(client: ClientApp, num_nodes: int, *, rounds: int = 2, **start) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        init = ArrayRecord([np.zeros(FEATURES, dtype=np.float32), np.zeros(1, dtype=np.float32)])
        strategy = FedAvg(
            fraction_evaluate=0.0,
            min_available_nodes=num_nodes,
            min_train_nodes=3,
            wait_for_nodes_s=1.0,
        )
        results.append(
            strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds, timeout=30, **start)
        )

    run_local(server, client, num_nodes=num_nodes)
    return results[0]


def _secagg(**overrides) -> SecAggPlus:
    settings = {"clip_range": CLIP, "quantization_bits": BITS, "rng": SeededRng(7)}
    settings.update(overrides)
    return SecAggPlus(**settings)


@pytest.fixture
def keyring() -> UnsafeLocalKeyring:
    return UnsafeLocalKeyring(SeededRng(8))


def test_fedavg_with_secagg_equals_plain_fedavg(keyring) -> None:
    mod = make_secagg_mod(keyring.source(), rng=SeededRng(9))
    plain = _run(_client_app(), 5)
    secure = _run(
        _client_app(mods=[mod]),
        5,
        secure_aggregation=_secagg(
            metric_keys=("train-loss",), key_directory=keyring.key_directory
        ),
    )
    for name in plain.arrays:
        # Per round the mean is within one quantization step; two rounds compound a little.
        np.testing.assert_allclose(secure.arrays[name], plain.arrays[name], atol=3 * STEP)
    assert secure.arrays["0"].dtype == np.float32
    for rnd in (1, 2):
        assert secure.train_failures[rnd] == []
        got, want = secure.train_metrics_clientapp[rnd], plain.train_metrics_clientapp[rnd]
        assert got["num-examples"] == want["num-examples"]
        assert got["train-loss"] == pytest.approx(want["train-loss"], abs=200 / 65535)


def test_a_site_failing_in_training_just_leaves_the_cohort(keyring) -> None:
    mod = make_secagg_mod(keyring.source())
    result = _run(
        _client_app(fail_train_on={2}, mods=[mod]), 5, rounds=1, secure_aggregation=_secagg()
    )
    (failure,) = result.train_failures[1]
    assert "setup" in failure.reason and "out of GPU memory" in failure.reason
    survivors = [
        _train([np.zeros(FEATURES, np.float32), np.zeros(1, np.float32)], p) for p in (0, 1, 3, 4)
    ]
    weights = np.array([s[1] for s in survivors], dtype=np.float64)
    expected = np.average(np.stack([s[0][0] for s in survivors]), axis=0, weights=weights)
    np.testing.assert_allclose(result.arrays["0"], expected, atol=STEP)


def _crash_at(stage: Stage, partition: int):
    """An outer mod: the node's process dies when the given stage's request arrives."""

    def mod(msg: Message, ctx: Context, call_next):
        if (
            msg.metadata.message_type == MESSAGE_TYPES[stage]
            and ctx.node_config["partition-id"] == partition
        ):
            raise RuntimeError(f"node crashed at {stage}")
        return call_next(msg, ctx)

    return mod


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_a_dropout_mid_protocol_is_tolerated(keyring, stage: Stage) -> None:
    client = _client_app(mods=[_crash_at(stage, 1), make_secagg_mod(keyring.source())])
    result = _run(client, 6, rounds=1, secure_aggregation=_secagg())
    (failure,) = result.train_failures[1]
    assert failure.reason.startswith(stage.value) and "crashed" in failure.reason
    contributors = (0, 2, 3, 4, 5) if stage is not Stage.UNMASK else range(6)
    runs = [
        _train([np.zeros(FEATURES, np.float32), np.zeros(1, np.float32)], p) for p in contributors
    ]
    weights = np.array([r[1] for r in runs], dtype=np.float64)
    expected = np.average(np.stack([r[0][0] for r in runs]), axis=0, weights=weights)
    np.testing.assert_allclose(result.arrays["0"], expected, atol=STEP)
    assert result.train_metrics_clientapp[1]["num-examples"] == int(weights.sum())


def test_too_many_dropouts_keep_the_model_and_report_why(keyring) -> None:
    client = _client_app(
        mods=[
            _crash_at(Stage.MASKED_INPUT, 1),
            _crash_at(Stage.MASKED_INPUT, 2),
            make_secagg_mod(keyring.source()),
        ]
    )
    result = _run(client, 6, rounds=1, secure_aggregation=_secagg())
    assert np.all(result.arrays["0"] == 0)  # unchanged
    assert 1 not in result.train_metrics_clientapp
    failures = result.train_failures[1]
    assert len(failures) == 3
    assert failures[-1].node_id == 0
    assert "secure aggregation failed: TooManyDropouts: 4 of 6" in failures[-1].reason


def test_an_app_without_the_mod_never_trains_for_secagg() -> None:
    calls: list[int] = []
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        calls.append(1)
        return Message(RecordDict(), reply_to=msg)

    # Without a host (SuperNode, local runner) that answers SecAgg+, the app alone
    # never trains for a SecAgg+ stage: "train.secagg-setup" is not "train".
    setup = Message(RecordDict(), dst_node_id=1, message_type="train.secagg-setup")
    reply = app(setup, Context(run_id=1, node_id=1))
    assert calls == []
    assert "no handler for 'train.secagg-setup'" in reply.error.reason


def test_the_local_runner_answers_secagg_like_a_supernode() -> None:
    calls: list[int] = []
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        calls.append(1)
        content = RecordDict(
            {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}
        )
        return Message(content, reply_to=msg)

    result = _run(app, 4, rounds=1, secure_aggregation=_secagg())
    assert calls == [1, 1, 1, 1]
    assert result.train_failures[1] == []


def test_site_policy_refuses_plain_training_and_small_cohorts(keyring) -> None:
    strict = make_secagg_mod(keyring.source(), min_cohort=5)
    plain = _run(_client_app(mods=[strict]), 4, rounds=1)
    assert {f.reason for f in plain.train_failures[1]} == {
        "error reply 6: site policy requires SecAgg+ with at least 5 participants for training; "
        "refused a plain 'train' message"
    }
    small = _run(_client_app(mods=[strict]), 4, rounds=1, secure_aggregation=_secagg())
    refusals = [f.reason for f in small.train_failures[1] if f.node_id]
    assert len(refusals) == 4
    assert all(r.startswith("setup: error reply 6: ") for r in refusals)
    assert all("requires at least 5 SecAgg+ participants" in r for r in refusals)
    large = _run(_client_app(mods=[strict]), 5, rounds=1, secure_aggregation=_secagg())
    assert large.train_failures[1] == []


def test_non_linear_strategies_refuse_secure_aggregation() -> None:
    class Median(FedAvg):
        is_linear = False

    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        init = ArrayRecord([np.zeros(2, dtype=np.float32)])
        Median(min_available_nodes=3).start(
            grid=grid, initial_arrays=init, secure_aggregation=_secagg()
        )

    with pytest.raises(RunFailed) as info:
        run_local(server, _client_app(), num_nodes=3)
    assert isinstance(info.value.__cause__, StrategyError)
    assert "Median is not linear" in str(info.value)


def test_secagg_settings_are_validated_up_front() -> None:
    with pytest.raises(ValueError, match="cannot tolerate"):
        SecAggPlus(neighbours=2, dropout_fraction=0.3, min_participants=10)

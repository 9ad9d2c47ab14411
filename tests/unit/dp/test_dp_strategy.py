"""DP-FedAvg wrappers through the local runner: synthetic checks and the hospital example."""

import sys
from pathlib import Path

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, ConfigRecord, MetricRecord, RecordDict, ServerApp
from appliance.local import run_local
from appliance.message import Message
from appliance.strategy import FedAvg
from dp import (
    ClientSideClippingMod,
    DPFedAvgAdaptive,
    DPFedAvgClientSideAdaptive,
    DPFedAvgClientSideFixed,
    DPFedAvgFixed,
    InvalidUpdateError,
    PrivacySpend,
    PrivacyUnit,
    epsilon,
)

HOSPITAL = Path(__file__).resolve().parents[3] / "examples" / "hospital"
DIM = 50


def _synthetic_client(mods=(), scale_by_partition=True):
    """Each site moves every weight by ``partition-id + 1`` (norm grows with the site)."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg, ctx):
        step = float(ctx.node_config["partition-id"] + 1) if scale_by_partition else 1.0
        arrays = msg.content["arrays"]
        new = ArrayRecord({"w": (arrays["w"] + np.float32(step)).astype(np.float32)})
        metrics = MetricRecord({"num-examples": 10, "train-loss": 0.5})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    return app


def _run(strategy, client, *, nodes=3, rounds=1):
    server = ServerApp()
    out = {}

    @server.main()
    def main(grid, ctx):
        initial = ArrayRecord({"w": np.zeros(DIM, dtype=np.float32)})
        out["result"] = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)

    run_local(server, client, num_nodes=nodes)
    return out["result"]


def _fedavg(nodes=3, **kwargs):
    return FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes, **kwargs)


def test_fixed_clipping_aggregates_the_clipped_mean():
    strategy = DPFedAvgFixed(
        _fedavg(),
        noise_multiplier=1e-9,
        clipping_norm=np.sqrt(DIM) * 1.5,
        unsafe_rng=np.random.default_rng(0),
    )
    result = _run(strategy, _synthetic_client())
    # Sites move by 1, 2, 3 per weight; norms sqrt(DIM) * step, clipped to 1.5 sqrt(DIM).
    np.testing.assert_allclose(result.arrays["w"], (1 + 1.5 + 1.5) / 3, rtol=1e-5)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["dp-sites-aggregated"] == 3
    assert "train-loss" not in metrics  # un-noised site metrics are not released


def test_noise_on_the_aggregate_has_std_z_c_over_m():
    clipping_norm, z = 2.0, 1.0
    strategy = DPFedAvgFixed(
        _fedavg(),
        noise_multiplier=z,
        clipping_norm=clipping_norm,
        unsafe_rng=np.random.default_rng(1),
    )
    errors = []
    for _ in range(40):
        result = _run(strategy, _synthetic_client(scale_by_partition=False))
        errors.append(result.arrays["w"] - clipping_norm / np.sqrt(DIM))
    assert np.std(np.concatenate(errors)) == pytest.approx(z * clipping_norm / 3, rel=0.05)


def test_epsilon_is_reported_with_its_unit_and_grows_per_round():
    strategy = DPFedAvgFixed(_fedavg(), noise_multiplier=1.0, clipping_norm=1.0)
    result = _run(strategy, _synthetic_client(), rounds=3)
    spends = [
        PrivacySpend.from_metrics(result.train_metrics_clientapp[r], PrivacyUnit.SITE)
        for r in (1, 2, 3)
    ]
    assert spends[0].epsilon < spends[1].epsilon < spends[2].epsilon
    expected = epsilon(
        noise_multiplier=1.0, sampling_rate=1.0, rounds=3, delta=1e-5, accountant="rdp"
    )
    assert strategy.spent.epsilon == pytest.approx(expected)
    assert strategy.spent.unit is PrivacyUnit.SITE


def test_poisson_sampling_is_done_by_the_wrapper_and_accounted():
    strategy = DPFedAvgFixed(
        _fedavg(nodes=1),
        noise_multiplier=1.0,
        clipping_norm=1.0,
        sampling_rate=0.5,
        unsafe_rng=np.random.default_rng(4),
    )
    result = _run(strategy, _synthetic_client(), nodes=8, rounds=4)
    aggregated = [m["dp-sites-aggregated"] for m in result.train_metrics_clientapp.values()]
    assert all(n < 8 for n in aggregated)
    rounds = len(result.train_metrics_clientapp)
    expected = epsilon(
        noise_multiplier=1.0, sampling_rate=0.5, rounds=rounds, delta=1e-5, accountant="rdp"
    )
    assert strategy.spent.epsilon == pytest.approx(expected)


def test_client_side_clipping_with_server_noise_rejects_sites_that_did_not_clip():
    mod = ClientSideClippingMod(max_clipping_norm=10.0)
    clipping = _synthetic_client(mods=[mod])
    unclipped = _synthetic_client()

    class Mixed(ClientApp):
        """Site 0 runs without the mod; the others clip."""

        def __call__(self, message, context, **kwargs):
            app = unclipped if context.node_config["partition-id"] == 0 else clipping
            return app(message, context, **kwargs)

    strategy = DPFedAvgClientSideFixed(
        _fedavg(nodes=2),
        noise_multiplier=1e-9,
        clipping_norm=0.5,
        unsafe_rng=np.random.default_rng(0),
    )
    result = _run(strategy, Mixed(), nodes=3)
    failures = result.train_failures[1]
    assert len(failures) == 1 and "the site did not clip" in failures[0].reason
    assert np.linalg.norm(result.arrays["w"]) == pytest.approx(0.5, rel=1e-5)


def test_client_side_norm_above_a_sites_maximum_is_refused_and_reported():
    mod = ClientSideClippingMod(max_clipping_norm=0.1)
    strategy = DPFedAvgClientSideFixed(_fedavg(nodes=1), noise_multiplier=1.0, clipping_norm=0.5)
    result = _run(strategy, _synthetic_client(mods=[mod]), nodes=2)
    assert len(result.train_failures[1]) == 2
    assert "above this site's maximum 0.1" in result.train_failures[1][0].reason
    assert 1 not in result.train_metrics_clientapp and strategy.spent.epsilon == 0.0


@pytest.mark.parametrize("client_side", [False, True], ids=["server-side", "client-side"])
def test_adaptive_clipping_moves_the_norm_towards_the_target_quantile(client_side):
    kwargs = {
        "noise_multiplier": 0.5,
        "initial_clipping_norm": 1.0,
        "target_quantile": 0.5,
        "clip_learning_rate": 1.0,
        "clipped_count_stddev": 0.5,
        "unsafe_rng": np.random.default_rng(3),
    }
    if client_side:
        strategy = DPFedAvgClientSideAdaptive(_fedavg(), **kwargs, max_clipping_norm=100.0)
        client = _synthetic_client(mods=[ClientSideClippingMod(max_clipping_norm=100.0)])
    else:
        strategy = DPFedAvgAdaptive(_fedavg(), **kwargs)
        client = _synthetic_client()
    result = _run(strategy, client, rounds=15)
    # Update norms are sqrt(DIM) * (1, 2, 3) ~ 7, 14, 21: the median is ~14.
    assert 6 < strategy.clipping_norm < 30
    last = result.train_metrics_clientapp[15]
    assert last["dp-next-clipping-norm"] == strategy.clipping_norm
    assert last["dp-noise-multiplier"] == 0.5


def test_client_side_adaptive_needs_the_within_clip_report():
    strategy = DPFedAvgClientSideAdaptive(
        _fedavg(nodes=1), noise_multiplier=0.5, initial_clipping_norm=100.0
    )
    result = _run(strategy, _synthetic_client(), nodes=2)
    assert all("dp-within-clip" in f.reason for f in result.train_failures[1])


def test_wrapper_refuses_integer_models():
    strategy = DPFedAvgFixed(_fedavg(), noise_multiplier=1.0, clipping_norm=1.0)
    with pytest.raises(InvalidUpdateError, match="floating-point model"):
        strategy.configure_train(
            1, ArrayRecord({"n": np.zeros(2, dtype=np.int64)}), ConfigRecord(), None
        )


def test_train_metrics_pass_only_with_the_unsafe_switch():
    strategy = DPFedAvgFixed(
        _fedavg(), noise_multiplier=1.0, clipping_norm=1.0, unsafe_release_train_metrics=True
    )
    result = _run(strategy, _synthetic_client())
    assert result.train_metrics_clientapp[1]["train-loss"] == pytest.approx(0.5)


@pytest.fixture
def hospital(monkeypatch):
    pytest.importorskip("sklearn", reason="needs the examples extra (scikit-learn)")
    monkeypatch.syspath_prepend(str(HOSPITAL))
    from hospital import client_app, task

    yield client_app, task
    for name in [m for m in sys.modules if m == "hospital" or m.startswith("hospital.")]:
        sys.modules.pop(name)


def test_hospital_with_central_dp_still_learns_and_reports_epsilon(hospital):
    client_app, task = hospital
    client = ClientApp()
    client.train()(client_app.train)
    server = ServerApp()
    out = {}
    rounds = 10

    @server.main()
    def main(grid, ctx):
        test_set = task.load_test_set(42, 0.2)
        strategy = DPFedAvgFixed(
            _fedavg(nodes=3),
            noise_multiplier=1.0,
            clipping_norm=0.5,
            unsafe_rng=np.random.default_rng(0),
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(task.initial_parameters()),
            num_rounds=rounds,
            train_config=ConfigRecord({"learning-rate": 0.5}),
            evaluate_fn=lambda rnd, arrays: MetricRecord(
                {"accuracy": task.evaluate(arrays.to_numpy_ndarrays(), test_set)[1]}
            ),
        )
        out["accuracy"] = result.evaluate_metrics_serverapp[rounds]["accuracy"]
        out["spend"] = PrivacySpend.from_metrics(
            result.train_metrics_clientapp[rounds], PrivacyUnit.SITE
        )

    config = {
        "local-epochs": 5,
        "batch-size": 16,
        "dirichlet-alpha": 1.0,
        "data-seed": 42,
        "test-fraction": 0.2,
    }
    run_local(server, client, num_nodes=3, run_config=config)
    print(
        f"hospital, DP-FedAvg z=1.0 C=0.5, 3 sites, {rounds} rounds: "
        f"accuracy {out['accuracy']:.3f}, {out['spend']}"
    )
    assert out["accuracy"] >= 0.85
    assert out["spend"].unit is PrivacyUnit.SITE
    assert out["spend"].epsilon == pytest.approx(
        epsilon(
            noise_multiplier=1.0, sampling_rate=1.0, rounds=rounds, delta=1e-5, accountant="rdp"
        )
    )


def _run_secure(strategy, client, *, nodes=3):
    from secagg import SecAggPlus

    server = ServerApp()
    out = {}

    @server.main()
    def main(grid, ctx):
        initial = ArrayRecord({"w": np.zeros(DIM, dtype=np.float32)})
        out["result"] = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=1,
            secure_aggregation=SecAggPlus(clip_range=4.0),
        )

    run_local(server, client, num_nodes=nodes)
    return out["result"]


def test_client_side_dp_runs_under_secagg_on_the_sum_of_clipped_updates():
    norm = float(np.sqrt(DIM) * 1.5)
    strategy = DPFedAvgClientSideFixed(
        _fedavg(), noise_multiplier=1e-9, clipping_norm=norm, unsafe_rng=np.random.default_rng(0)
    )
    client = _synthetic_client(mods=[ClientSideClippingMod(max_clipping_norm=norm)])
    result = _run_secure(strategy, client)
    # Steps 1, 2, 3 clipped to 1, 1.5, 1.5, each site weighing 1 (not its num-examples).
    np.testing.assert_allclose(result.arrays["w"], (1 + 1.5 + 1.5) / 3, atol=1e-3)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["dp-sites-aggregated"] == 3
    assert strategy.spent.epsilon > 0 and strategy.accountant.rounds == 1


def test_noise_under_secagg_has_std_z_c_over_m():
    clipping_norm, z = 2.0, 1.0
    strategy = DPFedAvgClientSideFixed(
        _fedavg(), noise_multiplier=z, clipping_norm=clipping_norm,
        unsafe_rng=np.random.default_rng(7),
    )  # fmt: skip
    client = _synthetic_client(
        mods=[ClientSideClippingMod(max_clipping_norm=clipping_norm)], scale_by_partition=False
    )
    result = _run_secure(strategy, client)
    noise = result.arrays["w"].astype(np.float64) - clipping_norm / np.sqrt(DIM)
    assert result.train_metrics_clientapp[1]["dp-noise-std"] == pytest.approx(z * 2.0 / 3)
    assert np.std(noise) == pytest.approx(z * clipping_norm / 3, rel=0.35)  # 50 draws

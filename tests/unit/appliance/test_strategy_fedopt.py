"""FedAdagrad, FedAdam, FedYogi: the update rule against a hand-written reference, and SecAgg+."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from appliance import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    ServerApp,
)
from appliance.appconfig import load_app_spec, load_component, merge_run_config
from appliance.local import run_local
from appliance.strategy import FedAdagrad, FedAdam, FedAvg, FedOpt, FedYogi, Result

NODES = 4
SHAPES = {"w": (3, 2), "b": (2,)}
WEIGHTS = [10, 30, 5, 55]


def _target(site: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(site)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _local(model: dict[str, np.ndarray], site: int) -> dict[str, np.ndarray]:
    """What site ``site`` sends back: halfway from the model to its own target, in float32."""
    target = _target(site)
    return {k: (np.float32(0.5) * model[k] + np.float32(0.5) * target[k]) for k in SHAPES}


def _client(seen_configs: list | None = None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        site = int(ctx.node_config["partition-id"])
        if seen_configs is not None:
            seen_configs.append(dict(msg.content["config"]))
        model = {k: msg.content["arrays"][k] for k in SHAPES}
        metrics = MetricRecord({"num-examples": WEIGHTS[site], "loss": float(site)})
        content = RecordDict({"arrays": ArrayRecord(_local(model, site)), "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


def _init() -> ArrayRecord:
    return ArrayRecord({k: np.full(s, 0.25, dtype=np.float32) for k, s in SHAPES.items()})


def _run(strategy, client: ClientApp, rounds: int, **start) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        results.append(
            strategy.start(grid=grid, initial_arrays=_init(), num_rounds=rounds, **start)
        )

    run_local(server, client, num_nodes=NODES)
    return results[0]


@dataclass(frozen=True)
class Case:
    make: type[FedOpt]
    eta: float
    beta_1: float
    beta_2: float
    tau: float


def _second_moment(kind: type[FedOpt], v, d, beta_2):
    """Reddi et al. 2021, Algorithm 2, written out independently of the implementation."""
    if kind is FedAdagrad:
        return v + d * d
    if kind is FedAdam:
        return beta_2 * v + (1 - beta_2) * d * d
    return v - (1 - beta_2) * d * d * np.sign(v - d * d)  # FedYogi


def _reference(case: Case, rounds: int) -> dict[str, np.ndarray]:
    x = {k: a.copy() for k, a in _init().items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.full(s, case.tau**2) for k, s in SHAPES.items()}
    for _ in range(rounds):
        replies = [_local(x, site) for site in range(NODES)]
        for k in SHAPES:
            mean = sum(w * r[k].astype(np.float64) for w, r in zip(WEIGHTS, replies, strict=True))
            mean = (mean / sum(WEIGHTS)).astype(np.float32)
            delta = mean.astype(np.float64) - x[k].astype(np.float64)
            m[k] = case.beta_1 * m[k] + (1 - case.beta_1) * delta
            v[k] = _second_moment(case.make, v[k], delta, case.beta_2)
            step = case.eta * m[k] / (np.sqrt(v[k]) + case.tau)
            x[k] = (x[k].astype(np.float64) + step).astype(np.float32)
    return x


CASES = {
    "adagrad": Case(FedAdagrad, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
    "adagrad no momentum": Case(FedAdagrad, eta=0.5, beta_1=0.0, beta_2=0.99, tau=1e-2),
    "adam": Case(FedAdam, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
    "adam large tau": Case(FedAdam, eta=0.3, beta_1=0.5, beta_2=0.9, tau=0.5),
    "yogi": Case(FedYogi, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
    "yogi fast decay": Case(FedYogi, eta=0.2, beta_1=0.7, beta_2=0.5, tau=1e-2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_three_rounds_match_the_reference_update_rule(case):
    strategy = case.make(
        eta=case.eta,
        beta_1=case.beta_1,
        beta_2=case.beta_2,
        tau=case.tau,
        fraction_evaluate=0.0,
        min_available_nodes=NODES,
    )
    result = _run(strategy, _client(), rounds=3)
    expected = _reference(case, 3)
    for name in SHAPES:
        assert result.arrays[name].dtype == np.float32
        np.testing.assert_allclose(result.arrays[name], expected[name], rtol=2e-6, atol=1e-7)
    assert all(v.dtype == np.float64 for v in [*strategy.m_t.values(), *strategy.v_t.values()])
    assert result.train_metrics_clientapp[3]["num-examples"] == sum(WEIGHTS)


def test_state_is_reset_when_a_new_run_starts():
    strategy = FedAdam(eta=0.1, fraction_evaluate=0.0, min_available_nodes=NODES)
    first = _run(strategy, _client(), rounds=3)
    again = _run(strategy, _client(), rounds=3)
    assert first.arrays == again.arrays


def test_eta_l_is_sent_as_the_client_learning_rate():
    configs: list[dict] = []
    strategy = FedYogi(eta_l=0.05, fraction_evaluate=0.0, min_available_nodes=NODES)
    _run(strategy, _client(configs), rounds=1)
    assert len(configs) == NODES
    assert all(c["learning-rate"] == 0.05 and c["server-round"] == 1 for c in configs)


def test_integer_arrays_take_the_plain_mean():
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        site = int(ctx.node_config["partition-id"])
        arrays = {"w": np.ones(2), "count": np.array([site * 2], dtype=np.int64)}
        metrics = MetricRecord({"num-examples": 1})
        return Message(
            RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg
        )

    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        init = ArrayRecord({"w": np.zeros(2), "count": np.array([0], dtype=np.int64)})
        strategy = FedAdam(fraction_evaluate=0.0, min_available_nodes=NODES)
        results.append(strategy.start(grid=grid, initial_arrays=init, num_rounds=1))

    run_local(server, app, num_nodes=NODES)
    assert results[0].arrays["count"].tolist() == [3]  # mean of 0, 2, 4, 6
    assert results[0].arrays["w"].dtype == np.float64


PARAMETER_ERRORS = {
    "eta 0": (dict(eta=0.0), "eta must be a finite number > 0"),
    "eta nan": (dict(eta=float("nan")), "eta must be a finite number > 0"),
    "tau negative": (dict(tau=-1e-3), "tau must be"),
    "beta_1 = 1": (dict(beta_1=1.0), "beta_1 must be in \\[0, 1\\)"),
    "beta_2 negative": (dict(beta_2=-0.1), "beta_2 must be in \\[0, 1\\)"),
    "eta_l 0": (dict(eta_l=0.0), "eta_l must be"),
}


@pytest.mark.parametrize("case", PARAMETER_ERRORS.values(), ids=list(PARAMETER_ERRORS))
@pytest.mark.parametrize("make", [FedAdagrad, FedAdam, FedYogi])
def test_parameters_are_validated(make, case):
    kwargs, message = case
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_fedopt_itself_is_abstract_and_all_are_linear():
    with pytest.raises(TypeError):
        FedOpt()  # type: ignore[abstract]
    assert FedAdagrad.is_linear and FedAdam.is_linear and FedYogi.is_linear


def test_fedadam_under_secagg_matches_plaintext_within_quantization():
    secagg = pytest.importorskip("secagg")
    clip, bits = 2.0, 16
    step = 2 * clip / (2**bits - 1)
    nodes = 5

    def run(secure: bool) -> Result:
        mods = [secagg.make_secagg_mod(secagg.UnsafeLocalKeyring().source())] if secure else []
        app = ClientApp(mods=mods)

        @app.train()
        def train(msg, ctx):
            site = int(ctx.node_config["partition-id"])
            model = {k: msg.content["arrays"][k] for k in SHAPES}
            metrics = MetricRecord({"num-examples": WEIGHTS[site % NODES] + site})
            content = RecordDict({"arrays": ArrayRecord(_local(model, site)), "metrics": metrics})
            return Message(content, reply_to=msg)

        results: list[Result] = []
        server = ServerApp()

        @server.main()
        def main(grid, ctx):
            strategy = FedAdam(eta=0.05, tau=0.1, fraction_evaluate=0.0, min_available_nodes=nodes)
            extra = {"secure_aggregation": secagg.SecAggPlus(clip_range=clip)} if secure else {}
            results.append(
                strategy.start(grid=grid, initial_arrays=_init(), num_rounds=2, timeout=30, **extra)
            )

        run_local(server, app, num_nodes=nodes)
        return results[0]

    plain, secure = run(False), run(True)
    assert secure.train_failures[2] == []
    for name in SHAPES:
        # The mean is within one quantization step per element; with tau = 0.1 the step
        # eta * m / (sqrt(v) + tau) moves by at most about eta / tau per unit of error.
        np.testing.assert_allclose(secure.arrays[name], plain.arrays[name], atol=4 * step)


def test_fedavg_is_the_mean_the_adaptive_step_starts_from():
    """Sanity: FedAvg on the same client moves to the weighted mean in one round."""
    result = _run(FedAvg(fraction_evaluate=0.0, min_available_nodes=NODES), _client(), rounds=1)
    replies = [_local(dict(_init().items()), site) for site in range(NODES)]
    expected = np.average(np.stack([r["w"] for r in replies]), axis=0, weights=WEIGHTS)
    np.testing.assert_allclose(result.arrays["w"], expected, rtol=1e-6)


HOSPITAL = Path(__file__).resolve().parents[3] / "examples" / "hospital"
CONVERGENCE = {
    "fedavg": lambda: FedAvg(fraction_evaluate=0.0, seed=1),
    "fedadam": lambda: FedAdam(eta=1.0, fraction_evaluate=0.0, seed=1),
    "fedyogi": lambda: FedYogi(eta=1.0, fraction_evaluate=0.0, seed=1),
    "fedadagrad": lambda: FedAdagrad(eta=1.0, fraction_evaluate=0.0, seed=1),
}


@pytest.mark.parametrize("make", CONVERGENCE.values(), ids=list(CONVERGENCE))
def test_hospital_example_reaches_90_percent(make, record_property):
    """Rounds to 90% test accuracy (3 hospitals; ``docs/strategies.md`` lists them)."""
    pytest.importorskip("sklearn", reason="needs the examples extra (scikit-learn)")
    spec = load_app_spec(HOSPITAL)
    client = load_component(spec, spec.clientapp, ClientApp)
    task = importlib.import_module("hospital.task")
    cfg = merge_run_config(spec.config, {})
    test_set = task.load_test_set(int(cfg["data-seed"]), float(cfg["test-fraction"]))
    accuracy: dict[int, float] = {}
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        def evaluate(server_round: int, arrays: ArrayRecord) -> None:
            accuracy[server_round] = task.evaluate(arrays.to_numpy_ndarrays(), test_set)[1]

        make().start(
            grid=grid,
            initial_arrays=ArrayRecord(task.initial_parameters()),
            num_rounds=20,
            train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}),
            evaluate_fn=evaluate,
        )

    run_local(server, client, num_nodes=3, run_config=cfg)
    reached = [r for r in sorted(accuracy) if accuracy[r] >= 0.90]
    record_property("rounds_to_90_percent", reached[0] if reached else None)
    assert reached, f"never reached 90% in 20 rounds: {accuracy}"
    assert accuracy[20] >= 0.90

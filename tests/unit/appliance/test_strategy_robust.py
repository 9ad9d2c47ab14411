"""Robust aggregation: each rule against a direct numpy computation, and under attack."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, ServerApp
from appliance.errors import StrategyError
from appliance.local import run_local
from appliance.strategy import Bulyan, FedAvg, FedMedian, Krum, MultiKrum, Result, TrimmedMean
from appliance.strategy import robust_rules as rules

SHAPES = {"w": (3, 4), "b": (5,)}


# -- the rules against numpy, on random inputs ------------------------------------------------
def _reference_trimmed_mean(values: np.ndarray, beta: float) -> np.ndarray:
    n = values.shape[0]
    k = int(np.floor(beta * n + 1e-9))
    ordered = np.sort(values, axis=0)
    return ordered[k : n - k].sum(axis=0) / (n - 2 * k)


def _reference_krum_scores(points: list[np.ndarray], f: int) -> list[float]:
    n = len(points)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((points[i] - points[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[: n - f - 2]))
    return scores


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_median_is_numpy_median(seed, n):
    stack = np.random.default_rng(seed).normal(size=(n, 3, 4)).astype(np.float32)
    expected = np.median(stack.astype(np.float64), axis=0)
    assert np.array_equal(rules.coordinate_median(stack), expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (7, 0.1), (10, 0.3), (10, 0.0), (4, 0.49)])
def test_trimmed_mean_drops_floor_beta_n_per_side(seed, n, beta):
    stack = np.random.default_rng(seed).normal(size=(n, 6)) * 10
    got = rules.trimmed_mean(stack, beta)
    np.testing.assert_allclose(got, _reference_trimmed_mean(stack, beta), rtol=1e-14, atol=0)


def test_trimmed_count_is_robust_to_binary_rounding():
    assert rules.trimmed_count(100, 0.29) == 29
    assert rules.trimmed_count(10, 0.3) == 3


@pytest.mark.parametrize("seed", range(3))
def test_pairwise_distances_and_krum_scores_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    updates = [[rng.normal(size=(2, 3)), rng.normal(size=4)] for _ in range(7)]
    flat = [np.concatenate([a.ravel() for a in u]) for u in updates]
    distances = rules.pairwise_squared_distances(updates)
    for i in range(7):
        for j in range(7):
            assert distances[i, j] == pytest.approx(np.sum((flat[i] - flat[j]) ** 2), rel=1e-12)
    scores = rules.krum_scores(distances, 2)
    np.testing.assert_allclose(scores, _reference_krum_scores(flat, 2), rtol=1e-12)
    best = int(np.argmin(_reference_krum_scores(flat, 2)))
    assert rules.krum_select(distances, 2) == [best]


def _constructed() -> tuple[list[np.ndarray], set[int]]:
    """Five honest updates around a centre (index 0) and two colluding Byzantine ones."""
    e = np.eye(4)
    honest = [np.zeros(4), 0.1 * e[0], -0.1 * e[0], 0.2 * e[1], -0.25 * e[1]]
    byzantine = [100 * e[2], 100 * e[2] + 0.001 * e[3]]  # close to each other, far from all
    return honest + byzantine, {5, 6}


def test_krum_picks_the_centre_of_the_honest_cluster():
    points, byzantine = _constructed()
    distances = rules.pairwise_squared_distances([[p] for p in points])
    assert rules.krum_select(distances, 2) == [0]
    multi = rules.krum_select(distances, 2, num_selected=5)
    assert multi[0] == 0 and not set(multi) & byzantine


def test_bulyan_selects_honest_updates_and_averages_the_closest_to_the_median():
    points, _ = _constructed()
    points = points[:5] + points[5:6] + [0.05 * np.ones(4)]  # f = 1 needs n >= 7
    distances = rules.pairwise_squared_distances([[p] for p in points])
    selected = rules.bulyan_select(distances, 1)
    assert len(selected) == 5 and 5 not in selected
    stack = np.stack([points[i] for i in selected])
    got = rules.bulyan_coordinates(stack, 1)
    for c in range(4):  # beta = theta - 2f = 3 values closest to the median, per coordinate
        column = stack[:, c]
        median = np.median(column)
        closest = sorted(column, key=lambda x, m=median: abs(x - m))[:3]
        assert got[c] == pytest.approx(np.mean(closest), abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_bulyan_coordinates_match_a_per_coordinate_loop(seed):
    stack = np.random.default_rng(seed).normal(size=(7, 9))
    got = rules.bulyan_coordinates(stack, 2)
    for c in range(9):
        column = stack[:, c]
        median = np.median(column)
        closest = sorted(column, key=lambda x, m=median: abs(x - m))[:3]
        assert got[c] == pytest.approx(np.mean(closest), rel=1e-14)


RULE_ERRORS = {
    "krum n = 2f + 2": (lambda: rules.krum_select(np.zeros((4, 4)), 1), "n > 2f \\+ 2 = 4"),
    "bulyan n = 4f + 2": (lambda: rules.bulyan_select(np.zeros((6, 6)), 1), "n >= 4f \\+ 3 = 7"),
    "trimmed beta 0.5": (lambda: rules.trimmed_mean(np.zeros((4, 1)), 0.5), "beta must be in"),
    "multi-krum m > n": (lambda: rules.krum_select(np.zeros((5, 5)), 1, 6), "num_selected"),
}


@pytest.mark.parametrize("case", RULE_ERRORS.values(), ids=list(RULE_ERRORS))
def test_rules_refuse_impossible_inputs(case):
    call, message = case
    with pytest.raises(ValueError, match=message):
        call()


# -- the strategies through the local runner --------------------------------------------------
def _client(updates, weights, behaviour=None) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        i = int(ctx.node_config["partition-id"])
        if behaviour and i in behaviour:
            return behaviour[i](msg)
        metrics = MetricRecord({"num-examples": weights[i], "loss": float(i)})
        return Message(
            RecordDict({"arrays": ArrayRecord(updates[i]), "metrics": metrics}), reply_to=msg
        )

    return app


def _run(strategy, client: ClientApp, num_nodes: int, rounds: int = 1, init=None) -> Result:
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        start = init or ArrayRecord({k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()})
        results.append(strategy.start(grid=grid, initial_arrays=start, num_rounds=rounds))

    run_local(server, client, num_nodes=num_nodes)
    return results[0]


def _updates(seed: int, n: int):
    rng = np.random.default_rng(seed)
    updates = [
        {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
        for _ in range(n)
    ]
    return updates, rng.integers(1, 100, size=n).tolist()


def _stack(updates, name, indices=None):
    chosen = range(len(updates)) if indices is None else indices
    return np.stack([updates[i][name] for i in chosen]).astype(np.float64)


STRATEGY_REFERENCES = {
    "median": (lambda n: FedMedian(), lambda s: np.median(s, axis=0)),
    "trimmed mean": (lambda n: TrimmedMean(beta=0.2), lambda s: _reference_trimmed_mean(s, 0.2)),
}


@pytest.mark.parametrize("case", STRATEGY_REFERENCES.values(), ids=list(STRATEGY_REFERENCES))
@pytest.mark.parametrize("seed", range(3))
def test_coordinatewise_strategies_equal_numpy_exactly(case, seed):
    make, reference = case
    n = 5 + seed
    updates, weights = _updates(seed, n)
    strategy = make(n)
    strategy.fraction_evaluate = 0.0
    result = _run(strategy, _client(updates, weights), n)
    for name in SHAPES:
        expected = reference(_stack(updates, name)).astype(np.float32)
        assert np.array_equal(result.arrays[name], expected)
        assert result.arrays[name].dtype == np.float32
    assert result.train_metrics_clientapp[1]["num-examples"] == sum(weights)
    assert result.train_failures[1] == []


def test_krum_and_bulyan_strategies_report_the_selected_nodes():
    updates, weights = _updates(11, 7)
    updates[3] = {k: v + 1000 for k, v in updates[3].items()}  # a Byzantine node
    for strategy in (Krum(num_malicious_nodes=1), Bulyan(num_malicious_nodes=1)):
        strategy.fraction_evaluate = 0.0
        result = _run(strategy, _client(updates, weights), 7)
        flat = [np.concatenate([u[k].ravel() for k in SHAPES]).astype(np.float64) for u in updates]
        if isinstance(strategy, Krum):
            best = int(np.argmin(_reference_krum_scores(flat, 1)))
            for name in SHAPES:
                assert np.array_equal(result.arrays[name], updates[best][name])
        assert len(strategy.last_selected) == (1 if isinstance(strategy, Krum) else 5)
        assert all(v < 100 for v in result.arrays["w"].ravel())


def _nan(msg):
    arrays = {k: np.full(s, np.nan, dtype=np.float32) for k, s in SHAPES.items()}
    metrics = MetricRecord({"num-examples": 5})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


def _bad_shape(msg):
    arrays = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(5, dtype=np.float32)}
    metrics = MetricRecord({"num-examples": 5})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


def _negative_weight(msg):
    arrays = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    metrics = MetricRecord({"num-examples": -3})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


@pytest.mark.parametrize(
    "make", [FedMedian, lambda: TrimmedMean(beta=0.2), lambda: MultiKrum(num_malicious_nodes=0)]
)
def test_bad_replies_are_failures_not_inputs(make):
    updates, weights = _updates(5, 8)
    behaviour = {5: _nan, 6: _bad_shape, 7: _negative_weight}
    strategy = make()
    strategy.fraction_evaluate = 0.0
    result = _run(strategy, _client(updates, weights, behaviour), 8)
    reasons = sorted(f.reason for f in result.train_failures[1])
    assert len(reasons) == 3
    assert any("NaN or infinite" in r for r in reasons)
    assert any("is float32[4, 3], expected float32[3, 4]" in r for r in reasons)
    assert any("positive and finite" in r for r in reasons)
    assert np.isfinite(result.arrays["w"]).all()


CONFIG_ERRORS = {
    "krum f=1 with 4 nodes": (lambda: Krum(num_malicious_nodes=1, min_train_nodes=4), "at least 5"),
    "bulyan f=1 with 6 nodes": (lambda: Bulyan(num_malicious_nodes=1, min_train_nodes=6), "= 7"),
    "bulyan f=2 with 10 nodes": (lambda: Bulyan(num_malicious_nodes=2, min_train_nodes=10), "11"),
    "trimmed 0.2 with 4 nodes": (
        lambda: TrimmedMean(beta=0.2, min_train_nodes=4),
        "needs n >= 5 updates so that floor\\(beta \\* n\\) >= 1",
    ),
    "multi-krum m=6 with 5": (
        lambda: MultiKrum(num_nodes_to_select=6, min_train_nodes=5),
        "selecting 6 updates needs at least 6 updates: min_train_nodes=5 is too small",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS.values(), ids=list(CONFIG_ERRORS))
def test_impossible_configurations_are_refused_up_front(case):
    make, message = case
    with pytest.raises(StrategyError, match=message):
        make()


def test_defaults_derive_min_train_nodes_from_f():
    assert Krum(num_malicious_nodes=2).min_train_nodes == 7
    assert Bulyan(num_malicious_nodes=1).min_train_nodes == 7
    assert TrimmedMean(beta=0.1).min_train_nodes == 10
    with pytest.raises(ValueError, match="num_malicious_nodes must be an integer >= 0"):
        Krum(num_malicious_nodes=-1)
    with pytest.raises(ValueError, match="beta must be in"):
        TrimmedMean(beta=0.5)


def test_too_few_available_nodes_fail_before_the_round():
    updates, weights = _updates(1, 4)
    with pytest.raises(Exception, match="4 node\\(s\\) available, the strategy needs at least 5"):
        _run(Krum(num_malicious_nodes=1, wait_for_nodes_s=0.1), _client(updates, weights), 4)


# -- convergence with a Byzantine site ---------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Honest site i minimises 0.5 ||w - c_i||^2 by E steps of size lr; site n-1 attacks."""

    n: int = 7
    dim: int = 10
    noise: float = 0.1
    lr: float = 0.5
    steps: int = 3
    rounds: int = 8

    @property
    def target(self) -> np.ndarray:
        return np.linspace(-1.0, 1.0, self.dim)

    def optimum(self, site: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + site)
        return self.target + rng.uniform(-self.noise, self.noise, size=self.dim)

    @property
    def rho(self) -> float:
        return (1 - self.lr) ** self.steps

    def bound(self) -> float:
        """Any aggregate inside the honest range per coordinate: |w_R - w*| <= D + rho^R |w*|."""
        spread = max(np.abs(self.optimum(i) - self.target).max() for i in range(self.n - 1))
        return spread + self.rho**self.rounds * np.abs(self.target).max()


ATTACKS = {
    "huge update": lambda w, honest: w + 1e4,
    "sign flip x10": lambda w, honest: w - 10 * (honest - w),
}


def _problem_client(problem: Problem, attack) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        site = int(ctx.node_config["partition-id"])
        w = msg.content["arrays"]["w"].astype(np.float64)
        honest = problem.optimum(site) + problem.rho * (w - problem.optimum(site))
        new = attack(w, honest) if site == problem.n - 1 else honest
        examples = 10**6 if site == problem.n - 1 else 100  # the attacker also lies about size
        metrics = MetricRecord({"num-examples": examples})
        content = RecordDict({"arrays": ArrayRecord({"w": new}), "metrics": metrics})
        return Message(content, reply_to=msg)

    return app


ROBUST = {
    "median": FedMedian,
    "trimmed mean": lambda: TrimmedMean(beta=0.2),
    "krum": lambda: Krum(num_malicious_nodes=1),
    "multi-krum": lambda: MultiKrum(num_malicious_nodes=1),
    "bulyan": lambda: Bulyan(num_malicious_nodes=1),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=list(ATTACKS))
@pytest.mark.parametrize("make", ROBUST.values(), ids=list(ROBUST))
def test_robust_strategies_converge_where_fedavg_is_thrown_off(make, attack):
    problem = Problem()
    init = ArrayRecord({"w": np.zeros(problem.dim)})

    def error(strategy) -> float:
        strategy.fraction_evaluate = 0.0
        client = _problem_client(problem, attack)
        result = _run(strategy, client, problem.n, rounds=problem.rounds, init=init)
        return float(np.abs(result.arrays["w"] - problem.target).max())

    bound = problem.bound()
    assert error(make()) <= bound
    assert error(FedAvg(min_train_nodes=problem.n)) > 10 * bound

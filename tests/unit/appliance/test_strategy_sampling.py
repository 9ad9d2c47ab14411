"""Client sampling: fraction/min rules, seeded reproducibility, and the per-round record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Message, MetricRecord, RecordDict, ServerApp
from appliance.errors import StrategyError
from appliance.local import LocalGrid, make_nodes, run_local
from appliance.strategy import FedAvg, FedMedian, Result, SamplingRecord
from appliance.strategy.sampling import UNIFORM, UNRECORDED, sample_cohort


def _grid(num_nodes: int) -> LocalGrid:
    return LocalGrid(ClientApp(), make_nodes(num_nodes))


@dataclass(frozen=True)
class Case:
    available: int
    fraction: float
    min_nodes: int
    sampled: int


CASES = {
    "all": Case(available=10, fraction=1.0, min_nodes=2, sampled=10),
    "half": Case(available=10, fraction=0.5, min_nodes=2, sampled=5),
    "floor of 3.3": Case(available=11, fraction=0.3, min_nodes=1, sampled=3),
    "binary rounding 0.29 * 100": Case(available=100, fraction=0.29, min_nodes=1, sampled=29),
    "min wins": Case(available=10, fraction=0.2, min_nodes=3, sampled=3),
    "zero fraction, min 1": Case(available=4, fraction=0.0, min_nodes=1, sampled=1),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_fraction_and_minimum_rules(case):
    grid = _grid(case.available)
    cohort, record = sample_cohort(
        grid,
        server_round=1,
        fraction=case.fraction,
        min_nodes=case.min_nodes,
        min_available=1,
        seed=3,
    )
    assert len(cohort) == len(set(cohort)) == case.sampled
    assert set(cohort) <= set(grid.get_node_ids())
    assert record == SamplingRecord(
        server_round=1,
        available=case.available,
        sampled=case.sampled,
        fraction=case.fraction,
        min_nodes=case.min_nodes,
        seed=3,
        method=UNIFORM,
    )
    assert record.rate == pytest.approx(case.sampled / case.available)


def test_same_seed_same_cohorts_and_rounds_and_purposes_differ():
    grid = _grid(20)

    def draw(seed, server_round, purpose="train"):
        return sample_cohort(
            grid,
            server_round=server_round,
            fraction=0.25,
            min_nodes=1,
            min_available=1,
            seed=seed,
            purpose=purpose,
        )[0]

    assert draw(7, 1) == draw(7, 1)
    assert {tuple(draw(7, r)) for r in range(1, 6)} != {tuple(draw(7, 1))}
    assert [draw(7, r) for r in range(1, 6)] != [draw(8, r) for r in range(1, 6)]
    assert [draw(7, r) for r in range(1, 6)] != [draw(7, r, "evaluate") for r in range(1, 6)]


def test_waiting_for_nodes_times_out_with_the_counts():
    clock = iter(np.arange(0.0, 100.0, 0.5))
    with pytest.raises(
        StrategyError, match="3 node\\(s\\) available, the strategy needs at least 4"
    ):
        sample_cohort(
            _grid(3),
            server_round=1,
            fraction=1.0,
            min_nodes=2,
            min_available=4,
            seed=1,
            wait_s=2.0,
            sleep=lambda s: None,
            clock=lambda: float(next(clock)),
        )


def _client(seen: list[tuple[int, int]]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        seen.append((int(msg.content["config"]["server-round"]), ctx.node_id))
        metrics = MetricRecord({"num-examples": 1})
        content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg, ctx):
        return Message(RecordDict({"m": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


def _run(strategy, num_nodes: int, rounds: int = 4) -> tuple[Result, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    results: list[Result] = []
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        init = ArrayRecord([np.zeros(2, dtype=np.float32)])
        results.append(strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds))

    run_local(server, _client(seen), num_nodes=num_nodes)
    return results[0], seen


@pytest.mark.parametrize("make", [FedAvg, FedMedian])
def test_seeded_runs_repeat_their_cohorts_and_record_them(make):
    kwargs = dict(fraction_train=0.3, min_train_nodes=2, fraction_evaluate=0.5, seed=42)
    first, seen_first = _run(make(**kwargs), 10)
    again, seen_again = _run(make(**kwargs), 10)
    assert seen_first == seen_again
    assert first.sampling == again.sampling
    for server_round in range(1, 5):
        record = first.sampling[server_round]
        assert record.available == 10 and record.sampled == 3 and record.rate == 0.3
        assert record.fraction == 0.3 and record.min_nodes == 2 and record.seed == 42
        assert sum(1 for r, _ in seen_first if r == server_round) == 3
    _, seen_other = _run(make(**{**kwargs, "seed": 43}), 10)
    assert seen_other != seen_first


def test_an_unseeded_strategy_records_the_seed_it_drew():
    strategy = FedAvg(fraction_train=0.5, fraction_evaluate=0.0)
    result, seen = _run(strategy, 6, rounds=2)
    seed = result.sampling[1].seed
    assert seed == strategy.seed and isinstance(seed, int)
    _, seen_replay = _run(FedAvg(fraction_train=0.5, fraction_evaluate=0.0, seed=seed), 6, 2)
    assert seen_replay == seen


def test_a_wrapper_reports_the_wrapped_strategys_sampling_and_the_real_count():
    from dp.strategy import DPFedAvgFixed

    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=6, seed=5)
    wrapper = DPFedAvgFixed(
        inner,
        noise_multiplier=0.1,
        clipping_norm=1.0,
        sampling_rate=0.5,
        unsafe_rng=np.random.default_rng(0),
    )
    result, seen = _run(wrapper, 6, rounds=3)
    for server_round, record in result.sampling.items():
        assert record.seed == 5 and record.available == 6 and record.fraction == 1.0
        assert record.sampled == sum(1 for r, _ in seen if r == server_round)


def test_a_strategy_that_does_not_say_is_recorded_as_unrecorded():
    class Plain(FedAvg):
        def train_sampling(self):
            return None

    result, _ = _run(Plain(fraction_evaluate=0.0, min_available_nodes=3), 3, rounds=1)
    record = result.sampling[1]
    assert record.method == UNRECORDED and record.sampled == 3 and record.available == 3
    assert record.fraction is None and record.seed is None

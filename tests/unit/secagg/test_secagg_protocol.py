"""Sum correctness of the pure state machines, with dropouts at every stage (in process)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from secagg_harness import STAGES, drive_round, make_config, node_ids

from secagg import (
    Quantizer,
    RoundStateError,
    ServerRound,
    Stage,
    TooManyDropouts,
    derive_round_params,
    neighbour_graph,
)

D = 8  # values per input: small, the cost is in the key agreements


@dataclass(frozen=True)
class Case:
    n: int
    stage: Stage | None
    drops: int
    error: type[Exception] | None


# Tolerated dropouts with the defaults (dropout 0.2, corrupted 0.1):
# n=3 -> k=2, t=2: none; n=10 -> k=6, t=4: 2; n=30 -> k=16, t=10: 6.
MAX = {3: 0, 10: 2, 30: 6}


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for n, most in MAX.items():
        cases[f"n={n} no dropouts"] = Case(n, None, 0, None)
        for stage in STAGES:
            for drops in sorted({1, most}):
                if drops and drops <= most:
                    cases[f"n={n} {drops} dropped at {stage}"] = Case(n, stage, drops, None)
            cases[f"n={n} {most + 1} dropped at {stage}"] = Case(
                n, stage, most + 1, TooManyDropouts
            )
    return cases


CASES = _cases()


def _dropped(case: Case, ids: list[int], config) -> set[int]:
    """Worst case after SETUP: the dropped nodes are all neighbours of one node."""
    if case.stage is Stage.SETUP or not case.drops:
        return set(ids[-case.drops :]) if case.drops else set()
    params = derive_round_params(config, len(ids))
    graph = neighbour_graph(ids, config.round_id, params.graph.neighbours)
    victim = ids[0]
    pool = sorted(graph[victim]) + sorted(set(ids) - graph[victim] - {victim})
    return set(pool[: case.drops])


def _expected(outcome) -> np.ndarray:
    survivors = sorted(outcome.server.survivors)
    weights = np.array([outcome.weights[i] for i in survivors], dtype=np.float64)
    values = np.stack([outcome.values[i] for i in survivors])
    return (weights[:, None] * values).sum(axis=0) / weights.sum()


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_sum_matches_numpy_with_dropouts(case: Case) -> None:
    ids = node_ids(case.n, seed=case.n)
    setup_tolerance = MAX[case.n]
    config = make_config(case.n, D, seed=case.n, min_participants=max(3, case.n - setup_tolerance))
    drops = {case.stage: _dropped(case, ids, config)} if case.stage else {}
    if case.error is not None:
        with pytest.raises(case.error, match=r"needs at least|tolerates|threshold"):
            drive_round(config, ids, drops=drops, seed=case.n)
        return
    outcome = drive_round(config, ids, drops=drops, seed=case.n)
    quantizer = Quantizer.for_config(config)
    mean = quantizer.dequantize(outcome.total)
    np.testing.assert_allclose(mean.values, _expected(outcome), rtol=0, atol=quantizer.step)
    survivors = outcome.server.survivors
    assert mean.total_weight == sum(outcome.weights[i] for i in survivors)
    dropped_before_input = case.stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.MASKED_INPUT)
    expected_survivors = case.n - (case.drops if dropped_before_input else 0)
    assert len(survivors) == expected_survivors


def test_sum_is_exact_in_the_quantized_domain() -> None:
    """Integer inputs on the grid quantize exactly: the unmasked sum is the exact weighted sum."""
    n, config = 10, make_config(10, 6, seed=3, quantization_bits=4, clip_range=7.5)
    ids = node_ids(n, seed=3)
    grid = np.random.default_rng(3)
    values = {i: grid.integers(-7, 8, size=6) + 0.5 for i in ids}  # exactly on the levels
    outcome = drive_round(config, ids, values=values, seed=3)
    weights = np.array([outcome.weights[i] for i in ids])
    levels = np.stack([values[i] + 7.5 for i in ids])  # q = x + c when L = 2c
    expected = (weights[:, None] * levels).sum(axis=0)
    assert outcome.total.dtype == np.uint32
    assert outcome.total[:-1].tolist() == expected.astype(np.int64).tolist()
    assert int(outcome.total[-1]) == weights.sum()


def test_large_weights_switch_to_a_64_bit_modulus() -> None:
    config = make_config(5, 4, seed=4, max_weight=2**20, quantization_bits=20)
    outcome = drive_round(config, node_ids(5, seed=4), seed=4)
    assert outcome.total.dtype == np.uint64
    mean = Quantizer.for_config(config).dequantize(outcome.total)
    np.testing.assert_allclose(
        mean.values, _expected(outcome), atol=Quantizer.for_config(config).step
    )


def test_complete_graph_is_original_secagg() -> None:
    config = make_config(8, D, seed=5, neighbours=7, dropout_fraction=0.0)
    outcome = drive_round(config, node_ids(8, seed=5), seed=5)
    assert outcome.server.params.graph.is_complete
    mean = Quantizer.for_config(config).dequantize(outcome.total)
    np.testing.assert_allclose(
        mean.values, _expected(outcome), atol=Quantizer.for_config(config).step
    )


def test_metrics_are_averaged_with_the_values() -> None:
    config = make_config(6, 3, seed=6, num_metrics=2, metric_range=10.0)
    outcome = drive_round(config, node_ids(6, seed=6), seed=6)
    mean = Quantizer.for_config(config).dequantize(outcome.total)
    expected = _expected(outcome)
    np.testing.assert_allclose(mean.values, expected[:3], atol=2.0 / 65535)
    np.testing.assert_allclose(mean.metrics, expected[3:], atol=20.0 / 65535)


def test_state_machines_refuse_out_of_order_use() -> None:
    config = make_config(4, 2)
    ids = node_ids(4)
    outcome = drive_round(config, ids)
    with pytest.raises(RoundStateError, match="finished"):
        outcome.server.advance()
    client = outcome.clients[ids[0]]
    with pytest.raises(RoundStateError, match="expecting done"):
        client.confirm(None)  # type: ignore[arg-type]
    fresh = ServerRound(config, ids)
    with pytest.raises(RoundStateError, match="not finished"):
        fresh.result()

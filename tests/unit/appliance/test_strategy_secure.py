"""Linearity: which strategies may run under SecAgg+, and the refusal of the others."""

from __future__ import annotations

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Message, MetricRecord, RecordDict
from appliance.errors import StrategyError
from appliance.local import LocalGrid, make_nodes
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
    TrimmedMean,
)

secagg = pytest.importorskip("secagg")

LINEAR = {
    "FedAvg": FedAvg,
    "FedProx": lambda: FedProx(proximal_mu=0.1),
    "FedAdagrad": FedAdagrad,
    "FedAdam": FedAdam,
    "FedYogi": FedYogi,
}
NON_LINEAR = {
    "FedMedian": (FedMedian, "the coordinate-wise median needs each site's individual update"),
    "TrimmedMean": (TrimmedMean, "the trimmed mean sorts each site's individual update"),
    "Krum": (Krum, "Krum compares the distances between the sites' individual updates"),
    "MultiKrum": (MultiKrum, "Krum compares the distances between the sites' individual updates"),
    "Bulyan": (Bulyan, "Bulyan compares and sorts the sites' individual updates"),
}


class _Counting(LocalGrid):
    """A local grid that counts pushed messages and may report a site policy."""

    secure_aggregation_required_by: tuple[str, ...] = ()

    def __init__(self, num_nodes: int = 7) -> None:
        app = ClientApp()

        @app.train()
        def train(msg, ctx):
            metrics = MetricRecord({"num-examples": 1})
            content = RecordDict({"arrays": msg.content["arrays"], "metrics": metrics})
            return Message(content, reply_to=msg)

        super().__init__(app, make_nodes(num_nodes))
        self.pushed = 0

    def push_messages(self, messages):
        messages = list(messages)
        self.pushed += len(messages)
        return super().push_messages(messages)


def _start(strategy, grid, **start):
    init = ArrayRecord([np.zeros(3, dtype=np.float32)])
    return strategy.start(grid=grid, initial_arrays=init, num_rounds=1, **start)


@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_strategies_declare_it(name):
    assert LINEAR[name]().is_linear


@pytest.mark.parametrize("name", list(NON_LINEAR))
def test_non_linear_strategy_with_secagg_is_refused_before_any_message(name):
    make, reason = NON_LINEAR[name]
    strategy = make()
    assert not strategy.is_linear
    grid = _Counting()
    with pytest.raises(StrategyError) as info:
        _start(strategy, grid, secure_aggregation=secagg.SecAggPlus(clip_range=0.5))
    message = str(info.value)
    assert message.startswith(f"{name} is not linear: {reason}")
    assert "secure aggregation (SecAgg+) reveals only the sum of the sites' updates" in message
    assert "Use a linear strategy (FedAvg, FedProx, FedAdagrad, FedAdam, FedYogi)" in message
    assert f"or {name} without it" in message
    assert grid.pushed == 0


def test_a_site_policy_requiring_secagg_refuses_a_non_linear_strategy_before_the_run():
    grid = _Counting()
    grid.secure_aggregation_required_by = ("hospital-b", "hospital-a")
    with pytest.raises(
        StrategyError,
        match=r"the site policy of hospital-a, hospital-b requires secure aggregation "
        r"\(SecAgg\+\)\. Krum is not linear",
    ):
        _start(Krum(), grid)
    with pytest.raises(StrategyError, match=r"pass secure_aggregation=secagg\.SecAggPlus"):
        _start(FedAvg(), grid)
    assert grid.pushed == 0
    FedAdam().check_secure_aggregation(
        secagg.SecAggPlus(clip_range=0.5), required_by=grid.secure_aggregation_required_by
    )


def test_robust_strategies_without_secagg_run():
    grid = _Counting()
    result = _start(Bulyan(num_malicious_nodes=1, fraction_evaluate=0.0), grid)
    assert grid.pushed == 7 and result.train_failures[1] == []


def test_secure_aggregation_must_be_a_secure_aggregation():
    with pytest.raises(StrategyError, match="must implement aggregate_round\\(\\), got str"):
        _start(FedAvg(), _Counting(), secure_aggregation="secagg")


def test_direct_secure_aggregation_call_on_a_robust_strategy_is_refused():
    with pytest.raises(StrategyError, match="FedMedian is not linear"):
        FedMedian().aggregate_train_secure(1, [], _Counting(), secagg.SecAggPlus(), 1.0)


def test_a_wrapper_without_a_reason_gets_the_generic_one():
    from dp.strategy import DPFedAvgFixed

    wrapper = DPFedAvgFixed(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    with pytest.raises(
        StrategyError,
        match="DPFedAvgFixed is not linear: its training aggregation is not a function of the sum",
    ):
        wrapper.check_secure_aggregation(secagg.SecAggPlus(clip_range=0.5))

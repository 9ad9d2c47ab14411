"""Distributed DP under SecAgg+: sites add Skellam shares; the server gets a noised mean."""

from __future__ import annotations

import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, ServerApp
from appliance.distributed_dp import SkellamEncoder, distributed_secagg, modulus_bits
from appliance.local import run_local
from appliance.strategy import FedAvg
from dp.distributed import SkellamPlan
from dp.errors import InvalidPrivacyParameter
from dp.plan import DPPlan
from secagg import ParameterError, PolicyRefused, RoundConfig

PLAN = {
    "dp-mode": "distributed",
    "dp-noise-multiplier": 1.0,
    "dp-clipping-norm": 1.0,
    "dp-min-surviving-sites": 3,
    "num-server-rounds": 1,
}
SCALE = 1024.0  # the default: 1024 / C


def _round(*, invited: int = 4, num_values: int = 8, **overrides) -> RoundConfig:
    settings = {
        "round_id": bytes(32),
        "dropout_fraction": 0.2,
        "corrupted_fraction": 0.1,
        "num_values": num_values,
        "clip_range": 1.0,
        "invited": invited,
        "min_participants": 3,
        "integer_scale": SCALE,
        "integer_modulus_bits": 32,
        "max_weight": 1,
    }
    settings.update(overrides)
    if not settings["integer_scale"]:
        settings.update(integer_modulus_bits=0, max_weight=4096)
    return RoundConfig(**settings)


def _context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=7, run_config=run_config)


def test_a_run_with_a_distributed_plan_takes_only_matching_integer_rounds() -> None:
    encoder = SkellamEncoder()
    encoder.check(_round(), _context(PLAN))
    with pytest.raises(PolicyRefused, match="proposed a fixed-point round"):
        encoder.check(_round(integer_scale=0.0), _context(PLAN))
    with pytest.raises(PolicyRefused, match="integer scale 2048 is not the plan's dp-scale 1024"):
        encoder.check(_round(integer_scale=2048.0), _context(PLAN))
    with pytest.raises(PolicyRefused, match=r"unmask a sum of 3 sites.*at least .* = 4"):
        encoder.check(_round(), _context({**PLAN, "dp-min-surviving-sites": 4}))
    with pytest.raises(PolicyRefused, match=r"invalid: .*dp-min-surviving-sites"):
        encoder.check(_round(), _context({**PLAN, "dp-min-surviving-sites": "three"}))


def test_the_site_decides_what_it_requires() -> None:
    plain = _round(integer_scale=0.0)
    SkellamEncoder().check(plain, _context({}))  # no DP anywhere: a plain round is fine
    with pytest.raises(PolicyRefused, match="trains only under distributed DP"):
        SkellamEncoder(required=True).check(plain, _context({}))
    with pytest.raises(PolicyRefused, match="no distributed DP"):
        SkellamEncoder().check(_round(), _context({}))
    above = r"dp-clipping-norm 1 is above this site's clip_norm 0\.5"
    with pytest.raises(PolicyRefused, match=above):
        SkellamEncoder(max_clipping_norm=0.5).check(_round(), _context(PLAN))


def test_each_site_adds_a_share_and_the_shares_sum_to_the_planned_noise() -> None:
    dimension = 4_000
    config = _round(num_values=dimension, invited=5)
    encoder = SkellamEncoder(unsafe_rng=np.random.default_rng(11))
    zero = np.zeros(dimension)
    plan = DPPlan.from_run_config(PLAN)
    assert plan is not None
    skellam = SkellamPlan(
        clipping_norm=1.0, scale=SCALE, dimension=dimension, noise_multiplier=1.0,
        expected_sites=5, min_surviving_sites=3,
    )  # fmt: skip
    for surviving in (3, 5):
        total = sum(encoder.encode(zero, config, _context(PLAN)) for _ in range(surviving))
        assert total.dtype == np.int64
        assert float(np.var(total)) == pytest.approx(
            skellam.surviving_variance(surviving), rel=0.06
        )
    # With the minimum survivors the summed noise is z times the sensitivity.
    assert skellam.surviving_variance(3) == pytest.approx((1.0 * skellam.l2_sensitivity) ** 2)


def test_an_update_is_clipped_to_the_plans_norm_before_its_share_is_added() -> None:
    config = _round(num_values=3)
    encoder = SkellamEncoder(unsafe_rng=np.random.default_rng(5))
    big = np.array([30.0, 40.0, 0.0])  # norm 50, clipped to 1
    encoded = encoder.encode(big, config, _context({**PLAN, "dp-noise-multiplier": 0.01}))
    np.testing.assert_allclose(encoded / SCALE, [0.6, 0.8, 0.0], atol=0.05)
    with pytest.raises(ParameterError, match="distributed DP: update has 2 values"):
        encoder.encode(np.zeros(2), config, _context(PLAN))


def test_the_server_side_matches_the_plan() -> None:
    secure = distributed_secagg(PLAN, dimension=100, sites=5, min_participants=3)
    assert "integer_scale=1024.0" in repr(secure) and "integer_modulus_bits=32" in repr(secure)
    raised = distributed_secagg({**PLAN, "dp-min-surviving-sites": 4}, dimension=100, sites=5)
    assert "min_participants=4" in repr(raised)
    assert modulus_bits({**PLAN, "dp-scale": 1e12}, dimension=100, sites=5) == 64
    with pytest.raises(ValueError, match=r"needs 7[0-9] bits"):
        modulus_bits({**PLAN, "dp-scale": 1e20}, dimension=100, sites=5)
    with pytest.raises(InvalidPrivacyParameter, match="no dp-mode = 'distributed'"):
        distributed_secagg({}, dimension=100, sites=5)


def test_a_local_federation_learns_a_noised_mean_of_clipped_updates() -> None:
    steps = {0: 0.1, 1: 0.2, 2: 0.3, 3: 5.0}  # the last site's update is clipped
    client = ClientApp()

    @client.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        step = steps[int(ctx.node_config["partition-id"])]
        content = RecordDict(
            {
                "arrays": ArrayRecord([a + step for a in arrays]),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=msg)

    results = []
    server = ServerApp()
    size, rounds = 25, 3

    @server.main()
    def main(grid, ctx):
        strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=4, min_train_nodes=4)
        secure = distributed_secagg(ctx.run_config, dimension=size, sites=4)
        results.append(
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord([np.zeros(size)]),
                num_rounds=rounds,
                timeout=30,
                secure_aggregation=secure,
            )
        )

    config = {**PLAN, "num-server-rounds": rounds, "dp-noise-multiplier": 0.5}
    run_local(server, client, num_nodes=4, run_config=config)
    (result,) = results
    assert all(not failures for failures in result.train_failures.values())
    # Per round: the mean of the clipped updates (norm 5 * 5 = 25 clipped to 1: 0.2 each).
    clipped = np.array([0.1, 0.2, 0.3, 1.0 / 5.0])
    expected = rounds * float(clipped.mean())
    got = result.arrays["0"]
    # Noise on each coordinate of the mean: z * Δ2 * sqrt(4/3) / (scale * 4) per round.
    sigma = 0.5 * 1.0 * np.sqrt(4 / 3) / 4 * np.sqrt(rounds) * 1.02
    assert np.abs(got - expected).max() < 6 * sigma
    assert np.std(got) > sigma / 3  # every coordinate got its own noise
    assert result.train_metrics_clientapp[1]["num-examples"] == 4  # each site counts once

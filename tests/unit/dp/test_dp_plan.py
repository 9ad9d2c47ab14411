"""The run-config DP plan: parsing with named errors, and the spends it implies."""

from __future__ import annotations

import pytest

from dp import epsilon
from dp.errors import InvalidPrivacyParameter
from dp.plan import DPPlan, PlanMode
from dp.spend import PrivacyUnit

CENTRAL = {
    "dp-mode": "central",
    "dp-noise-multiplier": 1.0,
    "dp-clipping-norm": 0.5,
    "dp-sampling-rate": 0.1,
    "num-server-rounds": 100,
}


def test_no_dp_mode_means_no_plan_whatever_the_other_keys():
    assert DPPlan.from_run_config({}) is None
    assert DPPlan.from_run_config({"dp-mode": "", "dp-noise-multiplier": 1.0}) is None


def test_a_central_plan_spends_what_the_accountant_says():
    plan = DPPlan.from_run_config(CENTRAL)
    assert plan is not None and plan.mode is PlanMode.CENTRAL and plan.rounds == 100
    spend = plan.spend()
    assert spend.unit is PrivacyUnit.SITE and spend.delta == 1e-5
    reference = epsilon(
        noise_multiplier=1.0, sampling_rate=0.1, rounds=100, delta=1e-5, accountant="rdp"
    )
    assert spend.epsilon == pytest.approx(reference)
    assert spend.epsilon == pytest.approx(7.90, abs=0.01)


def test_spend_grows_with_rounds_and_a_site_books_without_sampling_amplification():
    plan = DPPlan.from_run_config(CENTRAL)
    assert plan is not None
    assert plan.spend(0).epsilon == 0.0
    series = [plan.spend(r).epsilon for r in (1, 10, 50, 100)]
    assert series == sorted(series) and len(set(series)) == 4
    assert plan.site_spend().epsilon > plan.spend().epsilon  # q = 1 for the site
    assert plan.site_spend(1).epsilon == pytest.approx(
        epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=1, delta=1e-5, accountant="rdp")
    )


def test_dp_rounds_overrides_num_server_rounds_and_pld_is_tighter():
    rdp = DPPlan.from_run_config({**CENTRAL, "dp-rounds": 10})
    pld = DPPlan.from_run_config({**CENTRAL, "dp-rounds": 10, "dp-accountant": "pld"})
    assert rdp is not None and pld is not None and rdp.rounds == 10
    assert pld.spend().epsilon < rdp.spend().epsilon


def test_a_dp_sgd_plan_is_record_level_at_its_target():
    plan = DPPlan.from_run_config(
        {"dp-mode": "dp-sgd", "dp-target-epsilon": 2, "num-server-rounds": 5, "dp-delta": 1e-6}
    )
    assert plan is not None and plan.unit is PrivacyUnit.RECORD
    assert (plan.spend().epsilon, plan.spend().delta) == (2.0, 1e-6)
    assert plan.site_spend() == plan.spend()
    assert plan.describe()["target_epsilon"] == "2.0"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dp-mode": "local", "num-server-rounds": 3}, "dp-mode must be one of"),
        ({**CENTRAL, "dp-noise": 1}, "unknown DP plan key"),
        ({**CENTRAL, "dp-noise-multiplier": None}, "needs dp-noise-multiplier"),
        ({**CENTRAL, "dp-noise-multiplier": "1"}, "dp-noise-multiplier must be a number"),
        ({**CENTRAL, "dp-noise-multiplier": 0.0}, "dp-noise-multiplier must be > 0"),
        ({**CENTRAL, "dp-clipping-norm": -1.0}, "dp-clipping-norm must be > 0"),
        ({**CENTRAL, "dp-sampling-rate": 1.5}, "dp-sampling-rate must be in"),
        ({**CENTRAL, "dp-delta": 1.0}, "dp-delta must be in"),
        ({**CENTRAL, "dp-accountant": "moments"}, "dp-accountant must be"),
        ({**CENTRAL, "num-server-rounds": 0}, "dp-rounds must be in"),
        ({**CENTRAL, "num-server-rounds": 2.5}, "must be an integer"),
        ({"dp-mode": "dp-sgd", "num-server-rounds": 3}, "needs dp-target-epsilon"),
        ({**CENTRAL, "dp-noise-multiplier": float("inf")}, "must be finite"),
    ],
)
def test_bad_plans_name_the_key(config, message):
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(InvalidPrivacyParameter, match=message):
        DPPlan.from_run_config(config)


DISTRIBUTED = {
    "dp-mode": "distributed",
    "dp-noise-multiplier": 1.0,
    "dp-clipping-norm": 0.5,
    "dp-min-surviving-sites": 3,
    "num-server-rounds": 20,
}


def test_a_distributed_plan_is_site_level_with_a_default_scale():
    plan = DPPlan.from_run_config(DISTRIBUTED)
    assert plan is not None and plan.mode is PlanMode.DISTRIBUTED
    assert plan.unit is PrivacyUnit.SITE
    assert plan.scale * plan.clipping_norm == pytest.approx(1024.0)
    assert plan.site_spend() == plan.spend()  # no sampling to amplify
    assert plan.describe()["min_surviving_sites"] == 3
    series = [plan.spend(r).epsilon for r in (1, 5, 20)]
    assert series == sorted(series) and len(set(series)) == 3


def test_the_distributed_plan_bounds_every_actual_skellam_round():
    from dp.distributed import SkellamPlan, skellam_spend

    plan = DPPlan.from_run_config({**DISTRIBUTED, "dp-scale": 40.0, "num-server-rounds": 5})
    assert plan is not None
    planned = plan.spend().epsilon
    for dimension in (1, 100, 1_000_000):
        for survivors in (3, 4, 7):
            actual = SkellamPlan(
                clipping_norm=0.5, scale=40.0, dimension=dimension, noise_multiplier=1.0,
                expected_sites=7, min_surviving_sites=3,
            )  # fmt: skip
            spent = skellam_spend(actual, [survivors] * 5, delta=1e-5).epsilon
            assert spent <= planned * (1 + 1e-9)
    # At the minimum survivors and a small model the bound is tight (within a few %).
    tight = SkellamPlan(
        clipping_norm=0.5, scale=40.0, dimension=1, noise_multiplier=1.0,
        expected_sites=3, min_surviving_sites=3,
    )  # fmt: skip
    assert skellam_spend(tight, [3] * 5, delta=1e-5).epsilon == pytest.approx(planned, rel=0.05)


def test_the_distributed_plan_is_close_to_the_gaussian_at_a_fine_scale():
    plan = DPPlan.from_run_config(DISTRIBUTED)
    central = DPPlan.from_run_config({**DISTRIBUTED, "dp-mode": "central"})
    assert plan is not None and central is not None
    assert plan.spend().epsilon == pytest.approx(central.site_spend().epsilon, rel=0.02)
    assert plan.spend().epsilon >= central.site_spend().epsilon


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**DISTRIBUTED, "dp-min-surviving-sites": None}, "needs dp-min-surviving-sites"),
        ({**DISTRIBUTED, "dp-min-surviving-sites": 0}, "dp-min-surviving-sites must be"),
        ({**DISTRIBUTED, "dp-sampling-rate": 0.5}, "dp-sampling-rate is not used"),
        ({**DISTRIBUTED, "dp-accountant": "pld"}, "dp-accountant must be 'rdp'"),
        ({**DISTRIBUTED, "dp-scale": 1.0}, "below one integer unit"),
        ({**DISTRIBUTED, "dp-scale": -3.0}, "dp-scale must be finite and > 0"),
        ({**DISTRIBUTED, "dp-clipping-norm": None}, "needs dp-clipping-norm"),
    ],
)
def test_bad_distributed_plans_name_the_key(config, message):
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(InvalidPrivacyParameter, match=message):
        DPPlan.from_run_config(config)

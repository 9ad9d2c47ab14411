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

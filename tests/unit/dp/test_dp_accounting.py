"""Accountant: reference values, monotonic growth, typed errors, typed spends."""

import importlib.util
import itertools

import pytest

from dp import (
    InvalidPrivacyParameter,
    PrivacySpend,
    PrivacyUnit,
    RunAccountant,
    epsilon,
    epsilon_fixed_cohort,
    noise_multiplier_for,
    planned_spend,
)

REFERENCE = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "rounds": 100, "delta": 1e-5}


def test_reference_value_rdp():
    assert epsilon(**REFERENCE, accountant="rdp") == pytest.approx(7.90, abs=0.01)


def test_reference_value_pld():
    assert epsilon(**REFERENCE, accountant="pld") == pytest.approx(7.06, rel=0.01)


def test_site_level_example_from_the_docs():
    """z = 0.8, every site every round, 50 rounds, δ = 1e-5: ε ≈ 76 (PLD)."""
    args = {"noise_multiplier": 0.8, "sampling_rate": 1.0, "rounds": 50, "delta": 1e-5}
    assert epsilon(**args, accountant="pld") == pytest.approx(76, rel=0.01)
    assert epsilon(**args, accountant="rdp") == pytest.approx(79.7, rel=0.01)


@pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="opacus is not installed")
def test_rdp_agrees_with_opacus_within_one_percent():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(1.0, 0.1, 100)]
    theirs = accountant.get_epsilon(delta=1e-5)
    assert epsilon(**REFERENCE, accountant="rdp") == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_grows_monotonically_with_rounds(accountant):
    values = [
        epsilon(
            noise_multiplier=1.0, sampling_rate=0.5, rounds=t, delta=1e-5, accountant=accountant
        )
        for t in (0, 1, 2, 5, 10, 20)
    ]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))


def test_more_noise_and_less_sampling_mean_less_epsilon():
    base = epsilon(noise_multiplier=1.0, sampling_rate=0.5, rounds=10, delta=1e-5, accountant="rdp")
    noisier = epsilon(
        noise_multiplier=2.0, sampling_rate=0.5, rounds=10, delta=1e-5, accountant="rdp"
    )
    sparser = epsilon(
        noise_multiplier=1.0, sampling_rate=0.1, rounds=10, delta=1e-5, accountant="rdp"
    )
    assert noisier < base and sparser < base


def test_fixed_cohort_accounts_replace_one_with_twice_the_sensitivity():
    full = epsilon_fixed_cohort(
        noise_multiplier=1.0, cohort_size=5, num_sites=5, rounds=10, delta=1e-5
    )
    half_noise = epsilon(
        noise_multiplier=0.5, sampling_rate=1.0, rounds=10, delta=1e-5, accountant="rdp"
    )
    assert full == pytest.approx(half_noise, rel=1e-6)
    sampled = epsilon_fixed_cohort(
        noise_multiplier=1.0, cohort_size=2, num_sites=10, rounds=10, delta=1e-5
    )
    assert sampled < full


def test_noise_multiplier_calibration_meets_the_target():
    z = noise_multiplier_for(epsilon=5.0, delta=1e-5, sampling_rate=0.2, rounds=30)
    reached = epsilon(
        noise_multiplier=z, sampling_rate=0.2, rounds=30, delta=1e-5, accountant="rdp"
    )
    assert reached <= 5.0
    assert reached == pytest.approx(5.0, rel=0.01)


NONSENSE = {
    "negative noise": ({"noise_multiplier": -1.0}, "noise_multiplier must be finite and > 0"),
    "zero noise": ({"noise_multiplier": 0.0}, "noise_multiplier must be finite and > 0"),
    "infinite noise": ({"noise_multiplier": float("inf")}, "noise_multiplier"),
    "delta one": ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    "delta above one": ({"delta": 2.0}, r"delta must be in \(0, 1\)"),
    "delta zero": ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
    "sampling zero": ({"sampling_rate": 0.0}, r"sampling_rate must be in \(0, 1\]"),
    "sampling above one": ({"sampling_rate": 1.5}, r"sampling_rate must be in \(0, 1\]"),
    "negative rounds": ({"rounds": -1}, "rounds must be >= 0"),
    "fractional rounds": ({"rounds": 2.5}, "rounds must be an int"),
    "boolean noise": ({"noise_multiplier": True}, "noise_multiplier must be a number"),
    "unknown accountant": ({"accountant": "moments"}, "accountant must be one of pld, rdp"),
}


@pytest.mark.parametrize("case", NONSENSE.values(), ids=list(NONSENSE))
def test_nonsense_inputs_raise_typed_errors(case):
    changes, match = case
    with pytest.raises(InvalidPrivacyParameter, match=match):
        epsilon(**{**REFERENCE, "accountant": "rdp", **changes})


def test_fixed_cohort_refuses_a_cohort_larger_than_the_population():
    with pytest.raises(InvalidPrivacyParameter, match="larger than num_sites"):
        epsilon_fixed_cohort(noise_multiplier=1.0, cohort_size=6, num_sites=5, rounds=1, delta=1e-5)


def test_planned_spend_carries_delta_and_unit():
    spend = planned_spend(**REFERENCE, unit=PrivacyUnit.SITE, accountant="rdp")
    assert isinstance(spend, PrivacySpend)
    assert spend.unit is PrivacyUnit.SITE and spend.delta == 1e-5
    assert "site-level" in str(spend)
    assert spend.to_metrics() == {"dp-epsilon-site": spend.epsilon, "dp-delta-site": 1e-5}
    assert PrivacySpend.from_metrics(spend.to_metrics(), PrivacyUnit.SITE) == spend
    assert PrivacySpend.from_metrics(spend.to_metrics(), PrivacyUnit.RECORD) is None


def test_spends_of_different_units_never_add():
    site = PrivacySpend(epsilon=1.0, delta=1e-6, unit=PrivacyUnit.SITE)
    record = PrivacySpend(epsilon=1.0, delta=1e-6, unit=PrivacyUnit.RECORD)
    assert (site + site).epsilon == 2.0
    with pytest.raises(InvalidPrivacyParameter, match="cannot add a record-level spend"):
        _ = site + record


def test_run_accountant_matches_the_closed_form_and_grows():
    run = RunAccountant(delta=1e-5, unit=PrivacyUnit.SITE)
    previous = run.spend().epsilon
    assert previous == 0.0
    for _ in range(5):
        run.add_rounds(noise_multiplier=1.0, sampling_rate=0.1, count=20)
        current = run.spend().epsilon
        assert current > previous
        previous = current
    assert run.rounds == 100 and len(run.events) == 1
    assert previous == pytest.approx(epsilon(**REFERENCE, accountant="rdp"))
    run.add_rounds(noise_multiplier=2.0, sampling_rate=1.0)
    assert len(run.events) == 2 and run.spend().epsilon > previous

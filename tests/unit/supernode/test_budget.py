"""The SuperNode's privacy budget over a real ledger file: plan, reserve, charge, close."""

from __future__ import annotations

import dataclasses
import json

import pytest
from policy_harness import policy

from appliance.supernode.budget import SiteBudget
from appliance.supernode.policy import PolicyRefused
from dp.plan import DPPlan
from dp.spend import PrivacyUnit

CAPS = """
[privacy]
max_epsilon_per_run = 5
max_epsilon_total = 7
dataset = "oncology"
"""


def central(noise: float, rounds: int) -> str:
    return json.dumps(
        {"dp-mode": "central", "dp-noise-multiplier": noise, "dp-clipping-norm": 1.0,
         "num-server-rounds": rounds}
    )  # fmt: skip


@pytest.fixture
def budget(tmp_path):
    opened = SiteBudget(tmp_path)
    opened.configure(policy(CAPS))
    yield opened
    opened.close_ledger()


def test_a_fitting_plan_is_reserved_charged_per_round_and_closed(budget, tmp_path):
    site = policy(CAPS)
    charge = budget.plan(site, 1, central(2.0, 2))
    assert charge is not None and charge.unit is PrivacyUnit.SITE
    budget.reserve(1, charge)
    first = budget.charge_round(1, charge, server_round=1, rounds=1)
    second = budget.charge_round(1, charge, server_round=2, rounds=2)
    assert first.epsilon < second.epsilon == pytest.approx(charge.planned.epsilon)
    budget.close(1, charge)
    (status,) = budget.status()
    assert status.budget.dataset == "oncology" and status.spent.epsilon == second.epsilon
    # The ledger outlives the process: a reopened site sees the same spend.
    reopened = SiteBudget(tmp_path)
    try:
        assert reopened.status()[0].spent.epsilon == second.epsilon
    finally:
        reopened.close_ledger()


def test_plans_over_a_cap_are_refused_before_anything_is_reserved(budget):
    site = policy(CAPS)
    with pytest.raises(PolicyRefused, match="max_epsilon_per_run") as per_run:
        budget.plan(site, 2, central(0.5, 10))
    assert "planned epsilon 48.8 exceeds max_epsilon_per_run 5" in str(per_run.value)
    charge = budget.plan(site, 3, central(2.0, 2))
    assert charge is not None
    budget.reserve(3, charge)  # 3.19 of 7 reserved while the run is open
    with pytest.raises(PolicyRefused, match=r"privacy\.max_epsilon_total"):
        budget.plan(site, 4, central(1.5, 2))  # 4.42 + 3.19 > 7
    assert budget.status()[0].open_runs == 1


def test_a_round_past_the_reservation_is_refused(budget):
    site = policy(CAPS)
    charge = budget.plan(site, 5, central(2.0, 2))
    assert charge is not None
    budget.reserve(5, charge)
    budget.charge_round(5, charge, server_round=1, rounds=1)
    budget.charge_round(5, charge, server_round=2, rounds=2)
    # A third round is beyond the plan: its spend exceeds the reservation (the
    # admission refuses it before asking); a round booked twice is refused too.
    with pytest.raises(PolicyRefused, match="max_epsilon_per_run"):
        budget.charge_round(5, charge, server_round=3, rounds=3)
    with pytest.raises(Exception, match="already committed round 2"):
        budget.charge_round(5, charge, server_round=2, rounds=2)


def test_require_dp_central_refuses_a_run_without_a_central_plan(tmp_path):
    site = policy(
        """
        [privacy]
        require_dp = "central"
        clip_norm = 1.0
        max_epsilon_per_run = 5
        max_epsilon_total = 7
        """
    )
    budget = SiteBudget(tmp_path)
    try:
        budget.configure(site)
        with pytest.raises(PolicyRefused, match=r"privacy\.require_dp"):
            budget.plan(site, 1, json.dumps({"num-server-rounds": 3}))
        with pytest.raises(PolicyRefused, match="DP plan is invalid"):
            budget.plan(site, 1, json.dumps({"dp-mode": "central", "num-server-rounds": 3}))
        assert budget.plan(site, 1, central(2.0, 2)) is not None
    finally:
        budget.close_ledger()


def test_a_site_without_caps_books_nothing_and_record_caps_are_separate(tmp_path):
    budget = SiteBudget(tmp_path)
    try:
        budget.configure(policy(""))
        assert budget.plan(policy(""), 1, central(2.0, 2)) is None
        record_caps = policy(
            "[privacy]\nmax_record_epsilon_per_run = 3\nmax_record_epsilon_total = 4\n"
        )
        budget.configure(record_caps)
        sgd = json.dumps({"dp-mode": "dp-sgd", "dp-target-epsilon": 2.5, "num-server-rounds": 2})
        charge = budget.plan(record_caps, 1, sgd)
        assert charge is not None and charge.unit is PrivacyUnit.RECORD
        budget.reserve(1, charge)
        assert budget.charge_round(1, charge, 1, 1).epsilon == 2.5  # all of it at once
        with pytest.raises(PolicyRefused, match="max_record_epsilon_total"):
            budget.plan(record_caps, 2, sgd)
        assert budget.plan(record_caps, 3, central(2.0, 2)) is None  # no site-level caps
        assert DPPlan.from_run_config(json.loads(sgd)) is not None
    finally:
        budget.close_ledger()


def test_a_run_in_flight_resumes_its_booking_after_a_restart(tmp_path):
    """The node restarts mid-run: the next round is booked as the run's third, not its
    first (which the ledger would refuse as a spend going backwards)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import audit
    from appliance.message import Message
    from appliance.proto import fleet_pb2 as pb
    from appliance.records import RecordDict
    from appliance.supernode.admission import RunAdmission, RunStanding
    from appliance.supernode.site_audit import SiteAudit

    digest = "ab" * 32
    site_policy = policy(CAPS + f'[apps]\nallow = ["sha256:{digest}"]\n')
    link = audit.NoteSigner(name="link", private_key=Ed25519PrivateKey.generate()).verifier_key()
    context = pb.RunContext(run_id=9, bundle_sha256=digest, run_config_json=central(2.0, 4))
    receipts: list[object] = []

    def round_message(server_round: int) -> Message:
        message = Message(RecordDict(), 7, "train", group_id=str(server_round))
        return Message.from_parts(dataclasses.replace(message.metadata, run_id=9), RecordDict())

    def node_life(rounds: range) -> list[float]:
        admission = RunAdmission(tmp_path / "node", lambda *args: receipts.append(args))
        admission.configure(site_policy)
        site = SiteAudit(tmp_path / "node", node_name="n1", superlink_vkey=link.encode())
        standing = RunStanding()
        try:
            assert admission.admit(standing, context, policy=site_policy, site=site, node_id=7)
            for server_round in rounds:
                admission.charge_round(standing, round_message(server_round), site=site, node_id=7)
            return [s.spent.epsilon for s in admission.budget.status()]
        finally:
            site.close()
            admission.close()

    (before,) = node_life(range(1, 3))  # rounds 1 and 2, then the node dies
    (after,) = node_life(range(3, 5))  # restarted: rounds 3 and 4
    plan = DPPlan.from_run_config(json.loads(central(2.0, 4)))
    assert plan is not None
    assert before == pytest.approx(plan.site_spend(2).epsilon)
    assert after == pytest.approx(plan.site_spend(4).epsilon)
    # The plan covered four rounds: a fifth is refused, not booked past the plan.
    with pytest.raises(PolicyRefused, match=r"covers 4 round\(s\)"):
        node_life(range(5, 6))


def test_require_dp_sgd_books_the_record_level_target_and_refuses_other_runs(tmp_path):
    site = policy(
        """
        [privacy]
        require_dp = "dp-sgd"
        max_record_epsilon_per_run = 3
        max_record_epsilon_total = 5
        """
    )
    ledger = SiteBudget(tmp_path)
    ledger.configure(site)
    try:
        for config in ("{}", central(2.0, 2)):
            with pytest.raises(PolicyRefused, match="trains only under dp-sgd DP") as refused:
                ledger.plan(site, 1, config)
            assert refused.value.key == "privacy.require_dp"
        sgd = json.dumps({"dp-mode": "dp-sgd", "dp-target-epsilon": 2.5, "num-server-rounds": 3})
        charge = ledger.plan(site, 2, sgd)
        assert charge is not None and charge.unit is PrivacyUnit.RECORD
        assert charge.planned.epsilon == 2.5
        ledger.reserve(2, charge)
        too_much = json.dumps({**json.loads(sgd), "dp-target-epsilon": 3.0})
        with pytest.raises(PolicyRefused, match="max_record_epsilon_total"):
            ledger.plan(site, 3, too_much)  # 2.5 reserved + 3 > 5
    finally:
        ledger.close_ledger()

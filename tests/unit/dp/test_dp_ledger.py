"""Budget ledger: refusal before training, survives a reopen, no overspend under concurrency."""

import threading

import pytest

from appliance import ClientApp, Context, Message, MetricRecord, RecordDict
from appliance.message import Error
from dp import (
    BudgetExceeded,
    BudgetLedger,
    InvalidPrivacyParameter,
    LedgerStateError,
    NoBudget,
    PrivacySpend,
    PrivacyUnit,
)

SITE, RECORD = PrivacyUnit.SITE, PrivacyUnit.RECORD
DATASET = "breast-cancer"


def _spend(epsilon, unit=SITE, delta=1e-6):
    return PrivacySpend(epsilon=epsilon, delta=delta, unit=unit)


@pytest.fixture
def ledger(ledger_url):
    ledger = BudgetLedger(ledger_url)
    ledger.set_budget(DATASET, SITE, max_epsilon_per_run=10.0, max_epsilon_total=25.0)
    ledger.set_budget(DATASET, RECORD, max_epsilon_per_run=2.0, max_epsilon_total=4.0)
    yield ledger
    ledger.close()


def test_plan_over_the_per_run_cap_is_refused_with_the_numbers(ledger):
    check = ledger.check_plan(DATASET, 1, _spend(12.0))
    assert not check.allowed
    assert "12" in check.reason and "max_epsilon_per_run 10" in check.reason
    with pytest.raises(
        BudgetExceeded, match=r"planned epsilon 12 exceeds max_epsilon_per_run 10"
    ) as info:
        ledger.reserve(DATASET, 1, _spend(12.0))
    assert (info.value.cap, info.value.limit, info.value.requested) == ("per-run", 10.0, 12.0)
    assert ledger.status(DATASET)[1].runs == 0  # nothing was written


def test_plan_over_the_total_cap_is_refused_with_the_numbers(ledger):
    ledger.reserve(DATASET, 1, _spend(10.0))
    ledger.reserve(DATASET, 2, _spend(10.0))
    with pytest.raises(
        BudgetExceeded,
        match=r"epsilon 6 \+ already spent or reserved 20 = 26 exceeds max_epsilon_total 25",
    ):
        ledger.verify_plan(DATASET, 3, _spend(6.0))
    assert ledger.check_plan(DATASET, 3, _spend(5.0)).allowed


def test_units_are_kept_apart(ledger):
    ledger.reserve(DATASET, 1, _spend(10.0, SITE))
    assert ledger.check_plan(DATASET, 1, _spend(2.0, RECORD)).allowed
    with pytest.raises(BudgetExceeded, match="record-level"):
        ledger.reserve(DATASET, 2, _spend(3.0, RECORD))


def test_unknown_dataset_has_no_budget(ledger):
    with pytest.raises(NoBudget, match="'other' has no site-level privacy budget"):
        ledger.reserve("other", 1, _spend(0.1))


def test_commit_per_round_then_close_releases_the_unspent_reservation(ledger):
    ledger.reserve(DATASET, 1, _spend(10.0))
    for server_round, eps in enumerate([2.0, 3.5, 4.0], start=1):
        ledger.commit(DATASET, 1, server_round, _spend(eps))
    (_, site) = ledger.status(DATASET)
    assert site.spent.epsilon == 4.0 and site.reserved_epsilon == pytest.approx(6.0)
    assert site.remaining_epsilon == pytest.approx(15.0)
    assert ledger.close_run(DATASET, 1, SITE).epsilon == 4.0
    (_, site) = ledger.status(DATASET)
    assert site.remaining_epsilon == pytest.approx(21.0) and site.open_runs == 0


def test_commit_errors(ledger):
    with pytest.raises(LedgerStateError, match="no open site-level reservation"):
        ledger.commit(DATASET, 9, 1, _spend(1.0))
    ledger.reserve(DATASET, 1, _spend(5.0))
    ledger.commit(DATASET, 1, 1, _spend(2.0))
    with pytest.raises(LedgerStateError, match="went backwards"):
        ledger.commit(DATASET, 1, 2, _spend(1.0))
    with pytest.raises(LedgerStateError, match="already committed round 1"):
        ledger.commit(DATASET, 1, 1, _spend(3.0))
    with pytest.raises(BudgetExceeded, match="exceeds max_epsilon_per_run 5"):
        ledger.commit(DATASET, 1, 2, _spend(5.5))
    ledger.close_run(DATASET, 1, SITE)
    with pytest.raises(LedgerStateError, match="was closed"):
        ledger.reserve(DATASET, 1, _spend(1.0))


def test_budget_refuses_nonsense_caps(ledger):
    with pytest.raises(InvalidPrivacyParameter, match="exceeds max_epsilon_total"):
        ledger.set_budget("x", SITE, max_epsilon_per_run=5, max_epsilon_total=1)
    with pytest.raises(InvalidPrivacyParameter, match="max_epsilon_total must be finite"):
        ledger.set_budget("x", SITE, max_epsilon_per_run=1, max_epsilon_total=float("inf"))
    with pytest.raises(InvalidPrivacyParameter, match="dataset key"):
        ledger.set_budget("", SITE, max_epsilon_per_run=1, max_epsilon_total=1)


def test_spending_survives_a_restart(ledger_url):
    first = BudgetLedger(ledger_url)
    first.set_budget(DATASET, SITE, max_epsilon_per_run=10.0, max_epsilon_total=12.0)
    first.reserve(DATASET, 1, _spend(8.0))
    first.commit(DATASET, 1, 1, _spend(3.0))
    first.close()  # the SuperNode "crashes" mid-run

    again = BudgetLedger(ledger_url)
    assert again.spent(DATASET, SITE).epsilon == 3.0
    with pytest.raises(BudgetExceeded, match=r"already spent or reserved 8"):
        again.reserve(DATASET, 2, _spend(5.0))  # the open run still holds its reservation
    again.close_run(DATASET, 1, SITE)
    again.reserve(DATASET, 2, _spend(5.0))
    again.close()


def test_open_creates_the_ledger_file_and_its_folder(tmp_path):
    path = tmp_path / "site" / "budget.db"
    BudgetLedger.open(path).close()
    assert path.exists()


def test_concurrent_runs_cannot_overspend(ledger_url):
    setup = BudgetLedger(ledger_url)
    setup.set_budget(DATASET, SITE, max_epsilon_per_run=1.0, max_epsilon_total=5.0)
    setup.close()
    ledgers = [BudgetLedger(ledger_url) for _ in range(4)]  # separate engines, like processes
    granted, refused = [], []
    barrier = threading.Barrier(12)

    def attempt(run_id):
        barrier.wait()
        try:
            ledgers[run_id % 4].reserve(DATASET, run_id, _spend(1.0))
            granted.append(run_id)
        except BudgetExceeded:
            refused.append(run_id)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == 5 and len(refused) == 7
    status = ledgers[0].status(DATASET)[0]
    assert status.reserved_epsilon == pytest.approx(5.0) and status.remaining_epsilon == 0.0
    for item in ledgers:
        item.close()


def test_a_guard_refuses_a_run_before_the_handler_touches_data(ledger):
    """How a site wires the ledger: verify and reserve the plan before training."""
    touched = []
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        touched.append(ctx.run_id)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    def guard(msg, ctx, call_next):
        plan = PrivacySpend.from_metrics(msg.content["plan"], SITE)
        ledger.reserve(DATASET, ctx.run_id, plan)
        return call_next(msg, ctx)

    app.mods.append(guard)
    over = RecordDict({"plan": MetricRecord(_spend(11.0).to_metrics())})
    reply = app(Message(over, dst_node_id=1, message_type="train"), Context(run_id=5, node_id=1))
    assert reply.has_error() and isinstance(reply.error, Error)
    assert "max_epsilon_per_run 10" in reply.error.reason
    assert touched == []
    fits = RecordDict({"plan": MetricRecord(_spend(9.0).to_metrics())})
    reply = app(Message(fits, dst_node_id=1, message_type="train"), Context(run_id=6, node_id=1))
    assert not reply.has_error() and touched == [6]

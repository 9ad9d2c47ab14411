"""The bank example: fraud detection with DP-SGD (Opacus) at three banks."""

import importlib
import math
import re
from pathlib import Path

import numpy as np
import pytest

from appliance import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from appliance.appconfig import load_app_spec
from appliance.local import run_local_app
from dp.plan import DPPlan, PlanMode
from dp.spend import PrivacyUnit

pytest.importorskip("torch", reason="the bank example needs the torch extra (torch, opacus)")
pytest.importorskip("opacus", reason="the bank example needs the torch extra (torch, opacus)")

APP = Path(__file__).resolve().parents[2] / "examples" / "bank"
TARGET_EPSILON = 2.0  # the app's default dp-target-epsilon
TOLERANCE = 1e-6
NUMBER = r"(\d+\.\d+)"


@pytest.fixture
def task(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    module = importlib.import_module("bank.task")
    module._bank.cache_clear()
    module.load_test_set.cache_clear()
    yield module
    module._bank.cache_clear()
    module.load_test_set.cache_clear()


@pytest.fixture
def client_app(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    return importlib.import_module("bank.client_app").app


def _run_config(**overrides):
    return {**load_app_spec(APP).config, **overrides}


def _printed(out: str, label: str) -> tuple[float, float]:
    """The AUPRC and recall the ServerApp printed on the line labelled ``label``."""
    found = re.search(rf"^  {re.escape(label)}\s+AUPRC {NUMBER}\s+recall {NUMBER}$", out, re.M)
    assert found, f"no line {label!r} in:\n{out}"
    return float(found.group(1)), float(found.group(2))


def test_default_run_learns_under_dp_reports_baselines_and_stays_within_epsilon(capsys):
    run = run_local_app(APP, num_nodes=3)  # what `greenhouse run --local ... --nodes 3` does
    out = capsys.readouterr().out
    final = run.server_context.state["result"]

    prevalence = final["prevalence"]
    assert 0.005 < prevalence < 0.015  # about 1% of the test transactions are fraud
    # DP-SGD at ε = 2 learns: AUPRC far above a random score's (measured 0.33-0.45).
    assert final["auprc"] > 10 * prevalence
    assert final["recall-at-fpr"] > 10 * 0.01  # a random score catches 1% at 1% FPR
    # The trained baselines are seeded, hence exact: pooling three banks beats bank 0 alone.
    assert final["no-dp-auprc"] > 0.4
    assert final["single-bank-auprc"] > 10 * prevalence
    assert final["no-dp-auprc"] > final["single-bank-auprc"] + 0.1

    # What a person reads: every figure, clearly labelled.
    assert "recall at a false-positive rate of 1.00%" in out
    dp_auprc, dp_recall = _printed(out, "federated, DP-SGD (this run)")
    assert (dp_auprc, dp_recall) == pytest.approx(
        (final["auprc"], final["recall-at-fpr"]), abs=1e-4
    )
    assert _printed(out, "baseline: federated, 3 banks, no DP") == pytest.approx(
        (final["no-dp-auprc"], final["no-dp-recall-at-fpr"]), abs=1e-4
    )
    assert _printed(out, "baseline: bank 0 alone, no DP") == pytest.approx(
        (final["single-bank-auprc"], final["single-bank-recall-at-fpr"]), abs=1e-4
    )
    assert _printed(out, "baseline: random score (AUPRC = fraud rate)") == pytest.approx(
        (prevalence, 0.01), abs=1e-4
    )
    assert re.search(r"^\s+5\s+\d\.\d{4}\s+\d+\.\d{4}\s+\d\.\d{4}", out, re.M), out

    privacy = run.server_context.state["privacy"]
    spends = privacy["site-epsilons"]
    assert len(spends) == 3
    for epsilon in spends:
        assert math.isfinite(epsilon)
        assert 0 < epsilon <= TARGET_EPSILON + TOLERANCE
        assert epsilon == pytest.approx(TARGET_EPSILON, rel=0.01)  # all planned rounds ran
    assert privacy["dp-epsilon-record"] == max(spends)
    assert privacy["dp-delta-record"] == pytest.approx(1e-5)
    printed = re.search(
        rf"privacy spent \(DP-SGD, record-level: protects one customer's transaction record "
        rf"within one bank\): ε = {NUMBER} at δ = 1e-05",
        out,
    )
    assert printed, out
    assert float(printed.group(1)) == pytest.approx(max(spends), abs=1e-3)


def test_no_dp_switch_trains_what_the_server_reports_as_the_no_dp_baseline():
    run = run_local_app(
        APP, num_nodes=3, run_config_overrides={"dp-mode": "", "num-server-rounds": 2}
    )
    state = run.server_context.state
    assert "privacy" not in state  # nobody reported a spend
    final = state["result"]
    assert final["auprc"] == pytest.approx(final["no-dp-auprc"], abs=1e-6)
    assert final["recall-at-fpr"] == pytest.approx(final["no-dp-recall-at-fpr"], abs=1e-6)


def test_default_config_is_a_dp_sgd_plan_the_banks_can_book():
    plan = DPPlan.from_run_config(load_app_spec(APP).config)  # what SuperLink and sites read
    assert plan is not None
    assert plan.mode is PlanMode.DP_SGD
    assert plan.unit is PrivacyUnit.RECORD
    assert plan.target_epsilon == TARGET_EPSILON
    assert plan.delta == pytest.approx(1e-5)
    assert plan.rounds == load_app_spec(APP).config["num-server-rounds"]


def _message(task, kind, server_round):
    content = RecordDict(
        {
            "arrays": ArrayRecord(task.initial_parameters(0)),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    return Message(content, dst_node_id=1, message_type=kind)


def test_bank_reports_record_level_spend_repeats_it_and_refuses_an_unplanned_round(
    task, client_app
):
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 2, "num-partitions": 3},
        run_config=_run_config(**{"num-server-rounds": 2, "local-epochs": 1}),
    )
    spent = []
    for server_round in (1, 2):
        reply = client_app(_message(task, "train", server_round), ctx)
        assert not reply.has_error(), reply.error
        metrics = reply.content["metrics"]
        train_set, _ = task.load_bank_data(2, 3, seed=42, validation_fraction=0.2)
        assert metrics["num-examples"] == len(train_set)
        assert 0 < metrics["dp-epsilon-record"] <= TARGET_EPSILON + TOLERANCE
        assert metrics["dp-delta-record"] == pytest.approx(1e-5)
        spent.append(metrics["dp-epsilon-record"])
        arrays = reply.content["arrays"]
        assert list(arrays) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
        assert all(np.isfinite(a).all() for a in arrays.values())
    assert spent[0] < spent[1] == pytest.approx(TARGET_EPSILON, rel=0.01)  # cumulative

    evaluated = client_app(_message(task, "evaluate", 2), ctx)
    assert not evaluated.has_error(), evaluated.error
    metrics = evaluated.content["metrics"]
    assert metrics["dp-epsilon-record"] == spent[1]
    assert 0 <= metrics["auprc"] <= 1
    assert 0 <= metrics["recall-at-fpr"] <= 1
    assert "accuracy" not in metrics

    refused = client_app(_message(task, "train", 3), ctx)
    assert refused.has_error()
    assert "budget for the run is spent" in refused.error.reason


def test_central_dp_plan_is_refused_by_the_bank(task, client_app):
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 3},
        run_config=_run_config(
            **{"dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clipping-norm": 1.0}
        ),
    )
    reply = client_app(_message(task, "train", 1), ctx)
    assert reply.has_error()
    assert "dp-mode 'dp-sgd' or ''" in reply.error.reason


def test_generator_is_seeded_imbalanced_and_non_iid(task):
    first = [task.load_bank_data(i, 3, seed=7, validation_fraction=0.2) for i in range(3)]
    test_first = task.load_test_set(7, 30_000)
    task._bank.cache_clear()
    task.load_test_set.cache_clear()
    again = [task.load_bank_data(i, 3, seed=7, validation_fraction=0.2) for i in range(3)]
    for (train_a, val_a), (train_b, val_b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(train_a.x, train_b.x)
        np.testing.assert_array_equal(train_a.y, train_b.y)
        np.testing.assert_array_equal(val_a.x, val_b.x)
        np.testing.assert_array_equal(val_a.y, val_b.y)
    test_again = task.load_test_set(7, 30_000)
    np.testing.assert_array_equal(test_first.x, test_again.x)
    np.testing.assert_array_equal(test_first.y, test_again.y)
    other = task.load_bank_data(0, 3, seed=8, validation_fraction=0.2)[0]
    assert not np.array_equal(other.x, first[0][0].x)
    assert not np.array_equal(other.y, first[0][0].y)
    assert not np.array_equal(task.load_test_set(8, 30_000).x, test_first.x)

    # Each bank its own fraud rate (0.5%, 1%, 2%), about 1% overall and in the test set.
    frauds = [float(t.y.sum() + v.y.sum()) for t, v in first]
    sizes = [len(t) + len(v) for t, v in first]
    rates = [f / n for f, n in zip(frauds, sizes, strict=True)]
    assert 0.003 < rates[0] < 0.008
    assert 0.007 < rates[1] < 0.014
    assert 0.014 < rates[2] < 0.027
    assert rates[0] < rates[1] < rates[2]
    assert 0.005 < sum(frauds) / sum(sizes) < 0.015
    assert 0.005 < test_first.fraud_rate < 0.015

    train = first[0][0]
    assert train.x.shape[1] == len(task.FEATURES)
    assert train.x.dtype == np.float32
    assert np.isfinite(train.x).all()
    assert set(np.unique(train.y)) == {0.0, 1.0}


def test_raw_transactions_are_plausible(task):
    raw, y = task._transactions(task.MARKET, 20_000, np.random.default_rng(0))
    column = {name: raw[:, i] for i, name in enumerate(task.RAW_FIELDS)}
    assert (column["amount"] > 0).all()
    assert set(np.unique(column["hour"])) <= set(range(24))
    assert set(np.unique(column["category"])) == set(range(len(task.CATEGORIES)))
    assert set(np.unique(column["card-present"])) == {0.0, 1.0}
    assert not (column["new-device"] * column["card-present"]).any()  # devices are online only
    assert (column["transactions-24h"] >= 1).all()
    fraud, legit = y == 1, y == 0
    # Fraud is larger, further from home, more often on a new device (on average).
    assert np.median(column["amount"][fraud]) > 2 * np.median(column["amount"][legit])
    assert np.median(column["distance-km"][fraud]) > 5 * np.median(column["distance-km"][legit])
    assert column["new-device"][fraud].mean() > 3 * column["new-device"][legit].mean()


def test_auprc_and_recall_at_fpr_agree_with_scikit_learn(task):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = (rng.random(20_000) < 0.01).astype(np.float32)
    scores = rng.normal(size=len(y)) + 2.5 * y
    for s in (scores, np.round(scores, 1)):  # with and without tied scores
        assert task.average_precision(s, y) == pytest.approx(
            metrics.average_precision_score(y, s), rel=1e-12
        )
        fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
        for target in (0.001, 0.01, 0.05):
            assert task.recall_at_fpr(s, y, target) == pytest.approx(tpr[fpr <= target].max())
    assert task.average_precision(y.astype(np.float64), y) == 1.0
    assert task.recall_at_fpr(y.astype(np.float64), y, 0.0) == 1.0
    assert task.average_precision(rng.random(len(y)), y) < 3 * y.mean()
    assert math.isnan(task.average_precision(scores, np.zeros_like(y)))

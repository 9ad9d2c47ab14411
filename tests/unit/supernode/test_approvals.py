"""The site's approval book and the site administrator's commands, on a real SQLite file."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import threading

import pytest

from appliance.cli import main as cli_main
from appliance.receipts import RunManifest
from appliance.supernode.approvals import ApprovalBook, ApprovalError, ApprovalState
from dp.plan import DPPlan

POLICY = "ef" * 32


def manifest(run_id: int = 42, config: str = '{"rounds":3}') -> RunManifest:
    return RunManifest(run_id=run_id, bundle_sha256="ab" * 32, run_config_json=config)


@pytest.fixture
def book(tmp_path):
    with ApprovalBook(tmp_path / "node") as opened:
        yield opened


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_a_request_waits_once_and_is_private_to_the_site(book):
    first = book.request(manifest(), POLICY)
    again = book.request(manifest(), POLICY)
    assert first == again
    assert first.state is ApprovalState.PENDING and not first.decided
    assert [a.run_id for a in book.pending()] == [42]
    assert stat.S_IMODE(book.path.stat().st_mode) == 0o600


def test_the_same_run_with_another_manifest_is_refused(book):
    book.request(manifest(), POLICY)
    with pytest.raises(ApprovalError, match="arrived with manifest"):
        book.request(manifest(config='{"rounds":300}'), POLICY)


def test_approve_and_refuse_are_final(book):
    book.request(manifest(1), POLICY)
    book.request(manifest(2), POLICY)
    approved = book.decide(1, approve=True, by="ana")
    assert approved.state is ApprovalState.APPROVED and approved.decided_by == "ana"
    refused = book.decide(2, approve=False, by="ana", reason="  too many rounds ")
    assert refused.state is ApprovalState.REFUSED and refused.reason == "too many rounds"
    with pytest.raises(ApprovalError, match="already approved"):
        book.decide(1, approve=False, by="eve", reason="changed my mind")
    with pytest.raises(ApprovalError, match="already refused"):
        book.decide(2, approve=True, by="eve")
    assert book.pending() == []
    assert book.get(1).decided and book.get(2).decided


def test_decisions_need_a_pending_run_a_reason_and_the_reviewed_manifest(book):
    with pytest.raises(ApprovalError, match="not waiting for approval"):
        book.decide(7, approve=True, by="ana")
    book.request(manifest(7), POLICY)
    with pytest.raises(ApprovalError, match="needs a reason"):
        book.decide(7, approve=False, by="ana", reason="  ")
    with pytest.raises(ApprovalError, match="over 1024 characters"):
        book.decide(7, approve=False, by="ana", reason="x" * 1025)
    with pytest.raises(ApprovalError, match="manifest is"):
        book.decide(7, approve=True, by="ana", manifest_sha256="00" * 32)
    assert book.get(7).state is ApprovalState.PENDING  # nothing changed
    book.decide(7, approve=True, by="ana", manifest_sha256=manifest(7).sha256)
    assert book.get(7).state is ApprovalState.APPROVED


def test_a_run_that_ended_undecided_is_withdrawn_not_approved(book):
    book.request(manifest(3), POLICY)
    book.withdraw(3)
    assert book.get(3).state is ApprovalState.WITHDRAWN and not book.get(3).decided
    with pytest.raises(ApprovalError, match="already withdrawn"):
        book.decide(3, approve=True, by="ana")


def test_two_administrators_racing_get_one_decision(book):
    book.request(manifest(5), POLICY)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def decide(approve: bool) -> None:
        with ApprovalBook(book.path.parent) as own:
            barrier.wait()
            try:
                own.decide(5, approve=approve, by="x", reason="no")
                outcomes.append("won")
            except ApprovalError:
                outcomes.append("lost")

    threads = [threading.Thread(target=decide, args=(flag,)) for flag in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["lost", "won"]


def test_the_site_administrators_commands(tmp_path):
    data_dir = tmp_path / "node"
    code, _, err = cli("pending", "--data-dir", str(data_dir))
    assert code == 1 and "no approval book" in err
    with ApprovalBook(data_dir) as book:
        book.request(manifest(11), POLICY)
        book.request(manifest(12), POLICY)
    code, out, _ = cli("pending", "--data-dir", str(data_dir))
    assert code == 0 and "run 11" in out and "run 12" in out
    assert f"sha256:{manifest(11).sha256}" in out
    code, out, _ = cli("pending", "--data-dir", str(data_dir), "--json")
    listed = json.loads(out)
    assert [e["run_id"] for e in listed] == [11, 12]
    assert listed[0]["run_config"] == {"rounds": 3}
    code, out, _ = cli(
        "approve", "11", "--data-dir", str(data_dir), "--manifest", f"sha256:{manifest(11).sha256}"
    )
    assert code == 0 and "run 11 approved" in out
    code, _, err = cli("refuse", "12", "--data-dir", str(data_dir))
    assert code == 2 and "--reason" in err
    code, out, _ = cli("refuse", "12", "--data-dir", str(data_dir), "--reason", "audit week")
    assert code == 0 and "audit week" in out
    code, _, err = cli("approve", "12", "--data-dir", str(data_dir))
    assert code == 1 and err.strip() == "greenhouse: error: run 12 is already refused"
    code, out, _ = cli("pending", "--data-dir", str(data_dir))
    assert out.strip() == "no run is waiting for approval"


def test_pending_shows_what_each_runs_dp_plan_costs_the_site(tmp_path):
    data_dir = tmp_path / "node"
    central = {"dp-mode": "central", "dp-rounds": 3, "dp-noise-multiplier": 1.1,
               "dp-clipping-norm": 1.0}  # fmt: skip
    with ApprovalBook(data_dir) as book:
        book.request(manifest(21, json.dumps(central)), POLICY)
        book.request(manifest(22, '{"dp-mode": "central", "dp-rounds": 0}'), POLICY)
        book.request(manifest(23), POLICY)
    code, out, _ = cli("pending", "--data-dir", str(data_dir), "--json")
    assert code == 0, out
    plans = {e["run_id"]: e["privacy_plan"] for e in json.loads(out)}
    spend = DPPlan.from_run_config(central).site_spend()
    assert plans[21] == f"central, 3 rounds: {spend}"
    assert "ε = " in plans[21] and spend.epsilon > 0
    assert plans[22].startswith("invalid: ") and plans[22].endswith(
        "(the site will refuse the run)"
    )
    assert plans[23].startswith("none declared")
    code, out, _ = cli("pending", "--data-dir", str(data_dir))
    assert f"DP plan     central, 3 rounds: {spend}" in out

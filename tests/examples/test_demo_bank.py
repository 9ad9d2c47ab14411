"""`make demo-bank`'s script: three banks train with DP-SGD over mTLS, then clean up."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from demo_processes import processes_under

pytest.importorskip("torch", reason="the bank demo needs the torch extra (torch, opacus)")
pytest.importorskip("opacus", reason="the bank demo needs the torch extra (torch, opacus)")
ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "demo-bank"
TARGET_EPSILON = 2.0  # the bank app's dp-target-epsilon
RANDOM_AUPRC = 0.0106  # the test set's fraud rate (default seed)


def _run_demo(timeout_s: float) -> tuple[int, str, str]:
    """Run the demo; past the timeout, SIGTERM it first so that it stops its processes."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "bank"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        pytest.fail(f"the bank demo took over {timeout_s} s:\n{out}{err}")
    return process.returncode, out, err


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_bank_demo_trains_with_dp_sgd_over_mtls_and_stops_every_process():
    code, out, err = _run_demo(timeout_s=200)
    assert code == 0, out + err
    # Every bank accepted (signed receipt), the record-level plan was shown.
    assert out.count("accepted the run") == 3, out
    assert "privacy plan: (ε = 2, δ = 1e-05) record-level (DP-SGD" in out, out
    assert "SecAgg+ on" in out
    assert len(re.findall(r"^\s+[1-5]\s+\d\.\d{4}\s+\d+\.\d{4}\s+\d\.\d{4}", out, re.M)) == 5
    done = re.search(
        r"federated AUPRC (\d\.\d+), recall (\d\.\d+) at 1\.00% FPR \(DP-SGD\); "
        r"record-level ε spent per bank ([\d., ]+) at δ = 1e-05",
        out,
    )
    assert done, out
    # DP-SGD at ε = 2 learns: far above a random score (AUPRC 0.011, recall 0.01).
    assert float(done.group(1)) > 10 * RANDOM_AUPRC
    assert float(done.group(2)) > 0.1
    spent = [float(e) for e in done.group(3).split(", ")]
    assert len(spent) == 3
    assert all(0 < e <= TARGET_EPSILON + 1e-6 for e in spent), spent
    assert all(e == pytest.approx(TARGET_EPSILON, rel=0.01) for e in spent), spent
    # Each bank's ledger booked the plan's record-level ε against its own caps.
    booked = re.findall(r"default\s+record-level\s+([\d.]+)\s+0\s+([\d.]+)\s+4\s+10", out)
    assert booked == [("2", "8")] * 3, out
    assert "files (certificates, databases, logs, audit exports): var/demo-bank" in out
    assert (WORKDIR / "superlink" / "state.db").exists()
    # The audit logs were exported, verified (banks cosigned) and reconciled.
    assert "ok: the logs agree" in out
    cosigned = re.search(r"witness cosignatures per tree head \(distinct witnesses\): (.*)", out)
    assert cosigned and "3 on" in cosigned.group(1), out
    replies = re.search(
        r"replies: (\d+) sent by the site, (\d+) received by the SuperLink, (\d+) matched", out
    )
    assert replies and int(replies.group(1)) == int(replies.group(3)) > 0
    assert (WORKDIR / "audit-exports" / "superlink" / "entries.jsonl").exists()
    assert processes_under(WORKDIR) == []

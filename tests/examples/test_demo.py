"""`make demo`'s script: a real federation that starts, trains and cleans up after itself."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from demo_processes import processes_under

pytest.importorskip("sklearn", reason="needs the examples extra (scikit-learn)")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_demo_trains_over_mtls_and_stops_every_process():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accuracy = float(re.search(r"federated test accuracy (\d\.\d+)", proc.stdout).group(1))
    assert accuracy >= 0.7  # central DP noise (fresh each run); the majority class is 0.63
    # Every hospital accepted (signed receipt), the plan was shown, each site booked it.
    assert proc.stdout.count("accepted the run") == 3, proc.stdout
    assert "privacy plan: (ε = " in proc.stdout and "site-level" in proc.stdout
    spent = re.search(r"privacy spent \(ε = ([\d.]+), δ = 1e-05\) site-level", proc.stdout)
    assert spent and float(spent.group(1)) > 0, proc.stdout
    booked = re.findall(r"default\s+site-level\s+([\d.]+)", proc.stdout)
    assert len(booked) == 3 and all(float(b) > 0 for b in booked), proc.stdout
    assert "files (certificates, databases, logs, audit exports): var/demo" in proc.stdout
    assert (ROOT / "var" / "demo" / "superlink" / "state.db").exists()
    # The audit logs were exported, verified (hospitals cosigned) and reconciled.
    assert "ok: the logs agree" in proc.stdout
    cosigned = re.search(
        r"witness cosignatures per tree head \(distinct witnesses\): (.*)", proc.stdout
    )
    assert cosigned and "3 on" in cosigned.group(1), proc.stdout
    replies = re.search(
        r"replies: (\d+) sent by the site, (\d+) received by the SuperLink, (\d+) matched",
        proc.stdout,
    )
    assert replies and int(replies.group(1)) == int(replies.group(3)) > 0
    exports = ROOT / "var" / "demo" / "audit-exports"
    assert (exports / "superlink" / "entries.jsonl").exists()
    assert processes_under(ROOT / "var" / "demo") == []

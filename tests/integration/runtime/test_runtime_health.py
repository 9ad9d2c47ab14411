"""``--health-address``: real SuperLink and SuperNode processes, probed as an orchestrator would."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from runtime_harness import Federation, free_port, wait_for

from appliance.health import HealthError, HealthStatus, check

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _probe(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``greenhouse health ADDRESS`` in its own process, like a HEALTHCHECK or an exec probe."""
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "health", address, "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _status(address: str) -> HealthStatus | None:
    try:
        return check(address, timeout_s=2)
    except HealthError:
        return None


def test_superlink_serves_health_until_it_stops(federation: Federation):
    address = f"127.0.0.1:{free_port()}"
    federation.start_superlink(extra=("--health-address", address))

    probe = _probe(address)
    assert (probe.returncode, probe.stdout, probe.stderr) == (0, "SERVING\n", "")

    # systemd's ExecReload sends SIGHUP: a reload, never a silent exit.
    assert federation.superlink is not None
    federation.superlink.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: CRL reloaded" in federation.log("superlink"), 30, "SIGHUP")
    assert federation.superlink.poll() is None
    assert _probe(address).returncode == 0

    assert federation.terminate("superlink") == 0
    probe = _probe(address)
    assert probe.returncode == 1
    assert probe.stdout == ""
    assert probe.stderr.startswith(f"greenhouse: error: cannot reach a health service at {address}")
    assert probe.stderr.count("\n") == 1


def test_supernode_is_serving_only_while_connected(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
):
    address = f"127.0.0.1:{free_port()}"
    federation.start_superlink()
    federation.enrol("n1")
    # As in the container image: the address from the environment, no flag.
    monkeypatch.setenv("GREENHOUSE_HEALTH_ADDRESS", address)
    federation.start_node("n1", 0, 1)
    monkeypatch.delenv("GREENHOUSE_HEALTH_ADDRESS")
    federation.wait_online("n1")
    wait_for(lambda: _status(address) is HealthStatus.SERVING, 30, "the node to say SERVING")

    federation.kill_superlink()
    wait_for(lambda: _status(address) is HealthStatus.NOT_SERVING, 30, "NOT_SERVING")
    probe = _probe(address)
    assert probe.returncode == 1
    assert probe.stderr == f"greenhouse: error: {address} is NOT_SERVING\n"
    assert _probe(address, "--live").returncode == 0  # alive, only disconnected

    federation.start_superlink()
    wait_for(lambda: _status(address) is HealthStatus.SERVING, 30, "SERVING after reconnecting")
    assert federation.terminate("n1") == 0
    assert _status(address) is None

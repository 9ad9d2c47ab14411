"""deploy/ through the tools operators and scanners use: docker-compose, checkov, systemd.

Each test skips when its tool is missing, and fails instead under
GREENHOUSE_REQUIRE_DEPLOY_TOOLS=1 (CI: .ci/deploy-tools.sh installs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_manifests import DEPLOY, ROOT, assert_compose_hardening, find_tool

# -- docker-compose (v1, Debian) -----------------------------------------------------------


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = find_tool("GREENHOUSE_DOCKER_COMPOSE", "docker-compose")
    return subprocess.run(
        [tool, "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=DEPLOY,
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENHOUSE_DB", "COMPOSE"))}
    env.pop("GREENHOUSE_IMAGE", None)
    return env


@pytest.mark.skipif((DEPLOY / ".env").exists(), reason="a local deploy/.env would be read")
def test_docker_compose_renders_the_file_with_its_hardening():
    result = _compose_config({**_clean_env(), "GREENHOUSE_DB_PASSWORD": "0123abcd"})
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    assert_compose_hardening(rendered)
    superlink = rendered["services"]["superlink"]
    assert superlink["environment"]["GREENHOUSE_DATABASE_URL"].startswith(
        "postgresql+psycopg://greenhouse:0123abcd@postgres:5432/"
    )
    assert superlink["image"] == "greenhouse:0.1.0"


@pytest.mark.skipif((DEPLOY / ".env").exists(), reason="a local deploy/.env would be read")
def test_docker_compose_refuses_to_run_without_a_database_password():
    result = _compose_config(_clean_env())
    assert result.returncode != 0
    assert "GREENHOUSE_DB_PASSWORD" in result.stderr


# -- checkov -------------------------------------------------------------------------------


def _checkov(*target: str, framework: str) -> list[dict[str, Any]]:
    tool = find_tool("GREENHOUSE_CHECKOV", "checkov", ROOT / ".ci/.checkov-venv/bin/checkov")
    result = subprocess.run(
        [tool, *target, "--framework", framework, "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        # Nothing is fetched: --skip-download, and no check-ID mapping download either.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def _assert_clean(reports: list[dict[str, Any]], expected_type: str) -> None:
    assert [r["check_type"] for r in reports] == [expected_type]
    (report,) = reports
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped.get("check_result", {}).get("suppress_comment", "")
        assert reason and reason != "No comment provided", skipped["check_id"]


def test_checkov_finds_nothing_in_the_dockerfile():
    _assert_clean(_checkov("--file", "deploy/Dockerfile", framework="dockerfile"), "dockerfile")


def test_checkov_finds_nothing_unexplained_in_the_kubernetes_manifests():
    reports = _checkov("--directory", "deploy/kubernetes", framework="kubernetes")
    _assert_clean(reports, "kubernetes")
    assert reports[0]["summary"]["resource_count"] >= 9


# -- systemd -------------------------------------------------------------------------------


@pytest.fixture
def units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's greenhouse (verify wants a binary)."""
    greenhouse = Path(sys.executable).with_name("greenhouse")
    assert greenhouse.is_file()
    copies = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        copy = tmp_path / unit.name
        text = unit.read_text(encoding="utf-8")
        assert "/opt/greenhouse/bin/greenhouse" in text
        copy.write_text(text.replace("/opt/greenhouse/bin/greenhouse", str(greenhouse)))
        copies.append(copy)
    assert len(copies) == 2
    return copies


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = find_tool("GREENHOUSE_SYSTEMD_ANALYZE", "systemd-analyze")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_systemd_analyze_verifies_the_units(units):
    result = _systemd_analyze("verify", "--man=no", *map(str, units))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_rates_the_units_exposure_as_ok(units):
    # "OK" is an exposure of at most 2.0 of 10 (the threshold counts tenths).
    for unit in units:
        result = _systemd_analyze("security", "--offline=true", "--threshold=20", str(unit))
        assert result.returncode == 0, result.stdout[-3000:]

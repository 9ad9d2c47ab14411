"""Site policy enforced by real SuperNode processes: what may run, and what may leave."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from runtime_harness import APPS, Federation, start

import audit
from appliance.bundle import build_bundle
from appliance.supernode.limits import LimitError, check_network_isolation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PROBE = APPS / "probe"


def _policy(path: Path, *, allow: list[str], extra: str = "", network: str = "allowed") -> Path:
    allowed = ", ".join(f'"sha256:{digest}"' for digest in allow)
    path.write_text(
        textwrap.dedent(
            f"""
            [apps]
            allow = [{allowed}]

            [egress]
            allowed_metric_keys = ["num-examples", "step"]
            """
        )
        + textwrap.dedent(extra if "[execution]" in extra else extra + "[execution]\n")
        + f'network = "{network}"\n'
    )
    path.chmod(0o600)
    return path


def _site_log(federation: Federation, node: str, action: str) -> list[dict[str, object]]:
    """The details of the ``action`` entries in a running site's own audit log."""
    db = federation.root / f"node-{node}" / "audit" / "site-audit.db"
    query = audit.EntryQuery(actions=frozenset({audit.Action(action)}))
    return [e.to_json()["details"] for e in audit.open_source(db).entries(query)]  # type: ignore[misc]


def _variant(federation: Federation, name: str, client_prefix: str) -> Path:
    app = federation.root / name
    shutil.copytree(PROBE, app)
    client = app / "probe" / "client_app.py"
    client.write_text(client_prefix + client.read_text())
    return app


def test_a_bundle_not_on_the_allowlist_never_runs(federation: Federation):
    app = _variant(
        federation,
        "marker-app",
        "from pathlib import Path\n"
        "(Path(__file__).resolve().parents[3] / 'MARKER').write_text('ran')\n",
    )
    policy = _policy(federation.root / "site.toml", allow=[build_bundle(PROBE).sha256])
    start(federation, 2, policy)
    code, out, err = federation.cli(
        "alice", "run", str(app), "--federation", "test", "--run-config", "num-server-rounds=1"
    )
    assert code == 0, err
    assert out.count("is not on this site's allowlist") == 2, out
    assert "final sum 0.0000" in out
    for node in ("n1", "n2"):
        assert not list((federation.root / f"node-{node}").rglob("MARKER"))
        assert not list((federation.root / f"node-{node}").rglob("client_app.py"))
        refusals = _site_log(federation, node, "policy.refused")
        assert len(refusals) == 1 and "allowlist" in str(refusals[0]["reason"])
        assert _site_log(federation, node, "message.received") == []
    # The allowlisted app runs under the same policy.
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    assert "final sum 30.0000" in out


def test_required_secure_aggregation_refuses_plain_training(federation: Federation):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
        extra="""
        [privacy]
        require_secure_aggregation = true
        min_secagg_cohort = 3
        """,
    )
    start(federation, 3, policy)
    code, out, err = federation.cli(
        "alice", "run", str(PROBE), "--federation", "test", "--run-config", "num-server-rounds=1"
    )
    assert code == 0, err
    assert out.count("privacy.require_secure_aggregation") == 3
    assert "final sum 0.0000" in out
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        "secagg=true num-server-rounds=1 min-nodes=3",
    )
    assert code == 0, err
    final = float(re.search(r"final sum (\S+)", out).group(1))
    assert abs(final - 20.0) < 0.01  # steps 1, 2, 3 -> mean 2 on 10 weights


def test_egress_blocks_free_text_and_unlisted_metrics(federation: Federation):
    app = _variant(federation, "leaky-app", "")
    client = app / "probe" / "client_app.py"
    client.write_text(
        client.read_text().replace(
            'metrics = MetricRecord({"num-examples": 10, "step": step})',
            'metrics = MetricRecord({"num-examples": 10, "step": step, "patient-age-42": 1.0})',
        )
    )
    leaky_text = _variant(federation, "text-app", "")
    text_client = leaky_text / "probe" / "client_app.py"
    text_client.write_text(
        text_client.read_text()
        .replace(
            "from appliance import ArrayRecord,", "from appliance import ArrayRecord, ConfigRecord,"
        )
        .replace(
            'RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics})',
            'RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics, '
            '"config": ConfigRecord({"note": "Jane Doe, born 1961"})})',
        )
    )
    digests = [build_bundle(app).sha256, build_bundle(leaky_text).sha256]
    policy = _policy(federation.root / "site.toml", allow=digests)
    start(federation, 2, policy)
    for leaky in (app, leaky_text):
        code, out, err = federation.cli(
            "alice",
            "run",
            str(leaky),
            "--federation",
            "test",
            "--run-config",
            "num-server-rounds=1",
        )
        assert code == 0, err
        assert out.count("reply blocked, nothing of it left the site") == 2, out
        assert "final sum 0.0000" in out
        assert "Jane Doe" not in out
        assert "patient-age-42" not in out
    for node in ("n1", "n2"):  # the site's log: two refusals; what left carries neither
        assert len(_site_log(federation, node, "policy.refused")) == 2
        for sent in _site_log(federation, node, "egress.reply"):
            assert sent["records"] == [] and sent["metric_keys"] == []
    database = (federation.root / "superlink" / "state.db").read_bytes()
    assert b"Jane Doe" not in database
    assert b"patient-age-42" not in database


def test_resource_limits_stop_runaway_clientapps_and_the_node_keeps_serving(
    federation: Federation,
):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
        extra="""
        [execution]
        memory_mb = 2048
        wall_seconds = 4
        """,
    )
    start(federation, 2, policy)
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        "hog='memory' num-server-rounds=1",
    )
    assert code == 0, err
    assert out.count("MemoryError") == 2, out
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        "hog='loop' num-server-rounds=1 min-nodes=1",
    )
    assert code == 0, err
    assert "did not reply within 4 s" in out
    assert "final sum 20.0000" in out  # node 2 (step 2) trained; node 1 was stopped
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    assert "final sum 30.0000" in out  # both nodes serve the next run normally


def _isolation_available() -> bool:
    try:
        check_network_isolation()
    except LimitError:
        return False
    return True


@pytest.mark.skipif(not _isolation_available(), reason="no user namespaces on this host")
def test_network_none_leaves_the_clientapp_without_a_network(federation: Federation):
    policy = _policy(
        federation.root / "site.toml", allow=[build_bundle(PROBE).sha256], network="none"
    )
    start(federation, 2, policy)
    # The app tries the SuperLink's own fleet port, which the SuperNode itself reaches.
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        f"hog='network' reach='127.0.0.1:{federation.fleet_port}' num-server-rounds=1",
    )
    assert code == 0, err
    assert "the network is reachable" not in out, out
    assert "final sum 15.0000" in out, out  # both nodes trained (steps 1 and 2)

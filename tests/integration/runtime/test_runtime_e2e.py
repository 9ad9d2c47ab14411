"""The deployment runtime end to end: real processes, real certificates, mTLS on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import re
import time

import pytest
from runtime_harness import APPS, EXAMPLES, NODES, Federation, start, submitted_run, wait_for

import audit
from appliance.local import run_local_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PROBE = APPS / "probe"


def _table(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s+\d+\s+", line)]


def test_hospital_over_mtls_matches_the_local_runner(federation: Federation):
    pytest.importorskip("sklearn")
    start(federation, 3)
    code, out, err = federation.cli(
        "alice",
        "run",
        str(EXAMPLES / "hospital"),
        "--federation",
        "test",
        "--run-config",
        "num-server-rounds=3",
    )
    assert code == 0, err + federation.log("superlink")
    assert re.search(r"run \d+ finished", out)
    local = io.StringIO()
    with contextlib.redirect_stdout(local):
        run_local_app(
            EXAMPLES / "hospital", num_nodes=3, run_config_overrides={"num-server-rounds": 3}
        )
    deployed_rows, local_rows = _table(out), _table(local.getvalue())
    assert len(deployed_rows) == 4
    assert deployed_rows == local_rows  # same rounds, same losses and accuracies to 4 decimals


def test_server_app_that_raises_fails_only_its_run(federation: Federation):
    start(federation, 2)
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        "server-raise='boom at start'",
    )
    assert code != 0
    assert "failed: RuntimeError: boom at start" in err
    run_id = submitted_run(out)
    code, log, _ = federation.cli("alice", "log", str(run_id), "--federation", "test")
    assert code == 0
    assert "RuntimeError: boom at start" in log
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    # Both nodes added 1 and 2 (mean 1.5) in each of 2 rounds to 10 weights: sum 30.
    assert "final sum 30.0000" in out


def test_two_data_scientists_are_isolated(federation: Federation):
    start(federation, 2)
    code, out, _ = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--detach",
        "--run-config",
        "train-sleep=30",
    )
    assert code == 0
    alice_run = submitted_run(out)
    code, out, _ = federation.cli("bob", "ls", "--federation", "test", "--json")
    assert code == 0
    assert str(alice_run) not in out
    code, _, err = federation.cli("bob", "log", str(alice_run), "--federation", "test")
    assert code != 0
    assert "NOT_FOUND" in err
    code, _, err = federation.cli("bob", "stop", str(alice_run), "--federation", "test")
    assert code != 0
    assert federation.run_status("alice", alice_run)[0] in ("starting", "running")
    code, out, _ = federation.cli("audrey", "ls", "--federation", "test", "--json")
    assert str(alice_run) in out  # auditors read every run
    code, _, err = federation.cli("audrey", "stop", str(alice_run), "--federation", "test")
    assert code != 0
    assert "PERMISSION_DENIED" in err
    code, out, _ = federation.cli("alice", "stop", str(alice_run), "--federation", "test")
    assert code == 0
    status, reason = federation.wait_run("alice", alice_run)
    assert (status, reason) == ("stopped", "stopped by alice")


def test_killed_supernode_fails_its_work_and_the_round_completes(federation: Federation):
    start(federation, 3)
    _code, out, _ = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--detach",
        "--run-config",
        "train-sleep=3.0 num-server-rounds=1 min-nodes=2",
    )
    run_id = submitted_run(out)
    wait_for(lambda: federation.run_status("alice", run_id)[0] == "running", 30, "the run to start")
    time.sleep(1.5)  # the nodes are inside train()
    federation.kill_node("n3")
    status, reason = federation.wait_run("alice", run_id)
    assert status == "finished", reason
    _, log, _ = federation.cli("alice", "log", str(run_id), "--federation", "test")
    # The SuperLink answered for the dead node (NODE_UNAVAILABLE), rather than the round
    # waiting out its 60 s timeout ("no reply before the timeout").
    assert re.search(r"round 1 failure: error reply 5: node \d+ went offline", log), log
    assert "no reply before the timeout" not in log
    assert "final sum 15.0000" in log  # mean of +1 and +2 over 10 weights
    assert "n3" not in federation.online()
    federation.start_node("n3", 2, 3)
    federation.wait_online("n3")


def test_superlink_restart_keeps_state_and_nodes_reconnect(federation: Federation):
    start(federation, 2)
    code, _, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    code, out, _ = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--detach",
        "--run-config",
        "train-sleep=30",
    )
    in_flight = submitted_run(out)
    wait_for(lambda: federation.run_status("alice", in_flight)[0] == "running", 30, "run start")
    federation.kill_superlink()
    federation.start_superlink()
    assert federation.run_status("alice", in_flight) == ("failed", "superlink restarted")
    code, out, _ = federation.cli("alice", "ls", "--federation", "test", "--json")
    assert out.count('"finished"') == 1
    federation.wait_online("n1", "n2")  # the SuperNodes reconnected on their own
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    assert "final sum 30.0000" in out


def test_unenrolled_node_is_refused(federation: Federation):
    start(federation, 2)
    federation.start_node("stranger", 0, 1)
    wait_for(lambda: "not enrolled" in federation.log("node-stranger"), 30, "the refusal")
    assert "stranger" not in federation.online()
    assert NODES[0] in federation.online()


@pytest.fixture
def postgres_url():
    """A fresh schema in the CI PostgreSQL server, as a SQLAlchemy URL."""
    import os
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("GREENHOUSE_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("GREENHOUSE_REQUIRE_POSTGRES") == "1":
            pytest.fail("GREENHOUSE_REQUIRE_POSTGRES=1 but GREENHOUSE_TEST_POSTGRES_URL is unset")
        pytest.skip("PostgreSQL tests need GREENHOUSE_TEST_POSTGRES_URL (set by .ci/run)")
    schema = f"gh_e2e_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


def test_a_run_on_postgresql_survives_a_restart(federation: Federation, postgres_url: str):
    federation.database = postgres_url
    start(federation, 2)
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err + federation.log("superlink")
    assert "final sum 30.0000" in out
    run_id = submitted_run(out)
    federation.kill_superlink()
    federation.start_superlink()
    assert federation.run_status("alice", run_id) == ("finished", "")
    assert '"backend": "postgresql"' in federation.log("superlink")


def test_a_model_larger_than_a_grpc_message_travels_in_chunks(federation: Federation):
    start(federation, 2)
    # 3M float32 values = 12 MB per message: three times gRPC's default message limit.
    code, out, err = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--run-config",
        "size=3000000 num-server-rounds=1",
    )
    assert code == 0, err + federation.log("superlink")
    assert "final sum 4500000.0000" in out  # mean step 1.5 on 3M weights


def test_insecure_development_mode_works_and_says_so_loudly(federation: Federation):
    from appliance.state import State

    base = [
        "--data-dir",
        str(federation.root / "superlink"),
        "--node-grace",
        "1.0",
        "--fleet-address",
        f"127.0.0.1:{federation.fleet_port}",
        "--control-address",
        f"127.0.0.1:{federation.control_port}",
    ]
    federation.superlink = federation._spawn("superlink", "superlink", "--insecure", *base)
    wait_for(lambda: "superlink ready" in federation.log("superlink"), 30, "the SuperLink")
    for i, name in enumerate(("dev-a", "dev-b")):
        federation.nodes[name] = federation._spawn(
            f"node-{name}",
            "supernode",
            "--insecure",
            "--name",
            name,
            "--superlink",
            f"127.0.0.1:{federation.fleet_port}",
            "--data-dir",
            str(federation.root / name),
            "--node-config",
            f"partition-id={i}",
        )
    config = federation.root / "config-dev"
    config.mkdir()
    (config / "federations.toml").write_text(
        f'[federations.dev]\naddress = "127.0.0.1:{federation.control_port}"\n'
        'insecure = true\nuser = "dev"\n'
    )
    import os

    os.environ["GREENHOUSE_CONFIG_DIR"] = str(config)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            from appliance.cli import main

            wait_for(lambda: _two_nodes_online(federation), 30, "insecure nodes online")
            assert main(["run", str(PROBE), "--federation", "dev"]) == 0
    finally:
        del os.environ["GREENHOUSE_CONFIG_DIR"]
    assert "final sum 30.0000" in out.getvalue()
    assert "FOR DEVELOPMENT ONLY" in federation.log("superlink")
    federation.kill_superlink()
    with State.open(None, data_dir=federation.root / "superlink") as state:
        assert [e.kind for e in state.list_events()] == ["superlink.insecure", "superlink.started"]
    source = audit.open_source(federation.root / "superlink" / "state.db")
    insecure = list(source.entries(audit.EntryQuery(actions={audit.Action.SUPERLINK_INSECURE})))
    assert len(insecure) == 1 and insecure[0].actor.is_system


def _two_nodes_online(federation: Federation) -> bool:
    from appliance.state import State

    with State.open(None, data_dir=federation.root / "superlink") as state:
        return len(state.online_node_ids()) == 2


def test_a_missing_dependency_at_a_site_is_an_error_reply_naming_it(federation: Federation):
    import shutil

    app = federation.root / "needsdep"
    shutil.copytree(PROBE, app)
    client = app / "probe" / "client_app.py"
    client.write_text("import no_such_package_xyz  # noqa\n" + client.read_text())
    start(federation, 2)
    code, out, err = federation.cli(
        "alice", "run", str(app), "--federation", "test", "--run-config", "num-server-rounds=1"
    )
    assert code == 0, err
    assert (
        out.count(
            "error reply 7: cannot import 'probe.client_app': no module named 'no_such_package_xyz'"
        )
        == 2
    )
    assert "final sum 0.0000" in out  # no usable reply: the model stays as it was


def test_secagg_round_survives_a_node_killed_after_key_sharing(federation: Federation):
    start(federation, 5)
    code, out, _ = federation.cli(
        "alice",
        "run",
        str(PROBE),
        "--federation",
        "test",
        "--detach",
        "--run-config",
        "secagg=true num-server-rounds=1 min-nodes=4 pause-after-stage='share-keys' pause-s=4.0",
    )
    assert code == 0
    run_id = submitted_run(out)

    def log() -> str:
        return federation.cli("alice", "log", str(run_id), "--federation", "test")[1]

    wait_for(lambda: "stage share-keys closed with 5 replies" in log(), 60, "key sharing")
    federation.kill_node("n5")  # the ServerApp pauses 4 s before asking for masked inputs
    status, reason = federation.wait_run("alice", run_id)
    assert status == "finished", reason + log()
    text = log()
    assert "stage masked-input closed with 4 replies" in text
    # Plain FedAvg over the survivors (steps 1..4, equal weights) gives mean 2.5 on 10
    # weights; SecAgg+ must match within its quantization error (16 bits over [-10, 10]).
    final = float(re.search(r"final sum (\S+)", text).group(1))
    assert abs(final - 25.0) <= 10 * 2 * 10.0 / (2**16 - 1)


def test_artifacts_are_kept_with_the_run_and_pulled_by_their_owner(federation: Federation):
    import json

    from appliance.strategy import decode_npz

    start(federation, 2)
    code, out, err = federation.cli("alice", "run", str(PROBE), "--federation", "test")
    assert code == 0, err
    run_id = str(submitted_run(out))
    target = federation.root / "pulled"
    code, out, err = federation.cli(
        "alice", "pull", run_id, "--federation", "test", "--out", str(target)
    )
    assert code == 0, err
    assert "wrote" in out
    final = decode_npz((target / "model-final.npz").read_bytes())
    assert float(final["0"].sum()) == pytest.approx(30.0)
    metrics = json.loads((target / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert metrics["rounds"][0]["train"]["num-examples"] == 20
    code, out, _ = federation.cli("alice", "log", run_id, "--federation", "test", "--json")
    assert json.loads(out) == metrics
    code, out, _ = federation.cli("alice", "log", run_id, "--federation", "test")
    assert "per-round metrics (FedAvg)" in out
    code, _, err = federation.cli("bob", "pull", run_id, "--federation", "test", "--out", "x")
    assert code != 0
    assert "NOT_FOUND" in err
    # The run's message bodies are gone from the data dir; its bundle and artifacts stay.
    blobs = {p.name for p in (federation.root / "superlink" / "blobs").iterdir()}
    with federation.client("alice") as client:
        artifacts = {a.sha256 for a in client.artifacts(int(run_id))}
        (info,) = client.runs(int(run_id))
    assert blobs == artifacts | {info.bundle_sha256}

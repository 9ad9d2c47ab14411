"""Site policy enforced by real SuperNode processes: what may run, and what may leave."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import textwrap
from pathlib import Path

import pytest
from runtime_harness import APPS, Federation, start, submitted_run, wait_for

import audit
from appliance.bundle import build_bundle
from appliance.receipts import Decision, ReceiptInvalid, RunManifest, SignedReceipt
from appliance.supernode.limits import network_isolation_available

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


def _run(federation: Federation, *args: str, app: Path = PROBE, config: str = "") -> str:
    """``greenhouse run APP --run-config CONFIG ARGS`` as alice; what it printed (the
    submission itself must succeed: refusals by sites show in the run's log)."""
    extra = ["--run-config", config] if config else []
    code, out, err = federation.cli("alice", "run", str(app), "--federation", "test", *args, *extra)
    assert code == 0, err
    return out


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
    out = _run(federation, app=app, config="num-server-rounds=1")
    assert out.count("failure: error reply 6: site policy apps.allow") == 2, out
    # Each site's refusal is also a signed receipt the data scientist sees in the log.
    assert out.count("refused the run: site policy apps.allow") == 2, out
    assert "final sum 0.0000" in out
    for node in ("n1", "n2"):
        assert not list((federation.root / f"node-{node}").rglob("MARKER"))
        assert not list((federation.root / f"node-{node}").rglob("client_app.py"))
        refusals = _site_log(federation, node, "policy.refused")
        assert len(refusals) == 1 and "allowlist" in str(refusals[0]["reason"])
        assert _site_log(federation, node, "message.received") == []
    # The allowlisted app runs under the same policy.
    out = _run(federation)
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
    out = _run(federation, config="num-server-rounds=1")
    assert out.count("privacy.require_secure_aggregation") == 3
    assert "final sum 0.0000" in out
    out = _run(federation, config="secagg=true num-server-rounds=1 min-nodes=3")
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
        out = _run(federation, app=leaky, config="num-server-rounds=1")
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
    out = _run(federation, config="hog='memory' num-server-rounds=1")
    assert out.count("MemoryError") == 2, out
    out = _run(federation, config="hog='loop' num-server-rounds=1 min-nodes=1")
    assert "did not reply within 4 s" in out
    assert "final sum 20.0000" in out  # node 2 (step 2) trained; node 1 was stopped
    out = _run(federation)
    assert "final sum 30.0000" in out  # both nodes serve the next run normally


@pytest.mark.skipif(not network_isolation_available(), reason="no user namespaces on this host")
def test_network_none_leaves_the_clientapp_without_a_network(federation: Federation):
    policy = _policy(
        federation.root / "site.toml", allow=[build_bundle(PROBE).sha256], network="none"
    )
    start(federation, 2, policy)
    # The app tries the SuperLink's own fleet port, which the SuperNode itself reaches.
    out = _run(
        federation,
        config=f"hog='network' reach='127.0.0.1:{federation.fleet_port}' num-server-rounds=1",
    )
    assert "the network is reachable" not in out, out
    assert "final sum 15.0000" in out, out  # both nodes trained (steps 1 and 2)


@pytest.mark.skipif(not network_isolation_available(), reason="no user namespaces on this host")
def test_the_clientapp_cannot_read_the_nodes_keys_or_site_books(federation: Federation):
    secrets = ",".join(
        str(path)
        for path in (
            federation.pki.key("n1"),
            federation.pki.signing_key("n1"),
            federation.root / "node-n1" / "audit" / "site-audit.key",
            federation.root / "node-n1" / "audit" / "witness.key",
        )
    )
    config = f"hog='secrets' reach='{secrets}' num-server-rounds=1 min-nodes=1"
    federation.start_superlink()
    federation.enrol("n1")
    federation.start_node("n1", 0, 1)  # no policy: a development node hides nothing
    federation.wait_online("n1")
    out = _run(federation, config=config)
    assert "a node secret is readable" in out, out  # the probe does read what it can
    federation.terminate("n1")

    policy = _policy(federation.root / "site.toml", allow=[build_bundle(PROBE).sha256])
    federation.start_node("n1", 0, 1, policy=policy)
    federation.wait_online("n1")
    out = _run(federation, config=config)
    assert "a node secret is readable" not in out, out
    assert "final sum 10.0000" in out, out  # it trained, in its own run directory
    assert federation.pki.signing_key("n1").read_bytes()  # hidden from the app only


def test_manual_approval_holds_the_run_and_every_decision_is_a_signed_receipt(
    federation: Federation,
):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
        extra='[approval]\nmode = "manual"\n',
    )
    start(federation, 2, policy)
    out = _run(federation, "--detach", config="num-server-rounds=1 min-nodes=1")
    run_id = submitted_run(out)

    def listed() -> str:
        return federation.cli("alice", "ls", "--federation", "test")[1]

    wait_for(lambda: "waiting for approval from n1, n2" in listed(), 30, "both sites to wait")
    node1, node2 = (str(federation.root / f"node-{n}") for n in ("n1", "n2"))
    code, out, _ = federation.cli("admin", "pending", "--data-dir", node1)
    assert code == 0 and f"run {run_id}" in out
    manifest = re.search(r"manifest    sha256:([0-9a-f]{64})", out).group(1)
    # Approving another manifest than the one reviewed is refused; nothing ran yet.
    code, _, err = federation.cli(
        "admin", "approve", str(run_id), "--data-dir", node1, "--manifest", "0" * 64
    )
    assert code == 1 and "manifest is" in err
    assert not list((federation.root / "node-n1").rglob("client_app.py"))

    assert federation.cli("admin", "approve", str(run_id), "--data-dir", node1,
                          "--manifest", manifest)[0] == 0  # fmt: skip
    assert federation.cli("admin", "refuse", str(run_id), "--data-dir", node2,
                          "--reason", "not during the audit week")[0] == 0  # fmt: skip
    status, _ = federation.wait_run("alice", run_id)
    assert status == "finished"
    code, log, _ = federation.cli("alice", "log", str(run_id), "--federation", "test")
    assert "waiting for approval from n1" in log
    assert "n1 accepted the run" in log
    assert "n2 refused the run" in log and "not during the audit week" in log
    assert "final sum 10.0000" in log  # only n1 (step 1) trained
    assert federation.cli("admin", "approve", str(run_id), "--data-dir", node2)[0] == 1

    # The receipts: pending then accepted / refused, each signed by the site's key.
    with federation.client("alice") as client:
        (info,) = client.runs(run_id)
    decisions = [(r.node, r.decision) for r in info.receipts]
    assert sorted(decisions) == sorted(
        [("n1", "pending"), ("n2", "pending"), ("n1", "accepted"), ("n2", "refused")]
    )
    expected = RunManifest(
        run_id=run_id, bundle_sha256=info.bundle_sha256, run_config_json=info.run_config_json
    )
    for stored in info.receipts:
        key = federation.pki.signing_public_key(stored.node)
        receipt, _ = SignedReceipt(stored.receipt, stored.signature).verify(key)
        assert receipt.manifest_sha256 == expected.sha256 == manifest
        flipped = "refused" if receipt.decision != "refused" else "accepted"
        tampered = dataclasses.replace(receipt, decision=Decision(flipped)).to_bytes()
        with pytest.raises(ReceiptInvalid, match="receipt signature refused"):
            SignedReceipt(tampered, stored.signature).verify(key)
    code, shown, _ = federation.cli("alice", "show", str(run_id), "--federation", "test")
    assert code == 0 and "not during the audit week" in shown and "[" in shown

    # Both sites' own logs hold the decision and who took it.
    for node, action in (("n1", "run.approved"), ("n2", "run.refused")):
        (entry,) = _site_log(federation, node, action)
        assert entry["manifest_sha256"] == manifest
    superlink = audit.open_source(federation.root / "superlink" / "state.db")
    receipts = list(
        superlink.entries(audit.EntryQuery(actions=frozenset({audit.Action.RECEIPT_RECEIVED})))
    )
    assert len(receipts) == 4


def test_sighup_reloads_the_policy_and_an_invalid_file_keeps_the_old_one(
    federation: Federation,
):
    site = federation.root / "site.toml"
    _policy(site, allow=[build_bundle(PROBE).sha256])
    start(federation, 1, site)

    def run() -> str:
        out = _run(federation, config="num-server-rounds=1 min-nodes=1")
        return out

    def reload(marker: str) -> None:
        before = federation.log("node-n1").count(marker)
        federation.nodes["n1"].send_signal(signal.SIGHUP)
        wait_for(lambda: federation.log("node-n1").count(marker) > before, 30, marker)

    assert "final sum 10.0000" in run()
    site.write_text("[apps]\nallow = [\n")  # broken TOML: the node keeps its policy
    reload("site policy NOT reloaded")
    assert federation.nodes["n1"].poll() is None
    assert "final sum 10.0000" in run()
    _policy(site, allow=[])  # nothing may run any more
    reload("site policy reloaded")
    assert "is not on this site's allowlist" in run()
    reloads = _site_log(federation, "n1", "policy.reloaded")
    assert len(reloads) == 2
    assert "error" in reloads[0] and reloads[0]["policy"] == reloads[0]["previous_policy"]
    assert "error" not in reloads[1] and reloads[1]["policy"] != reloads[1]["previous_policy"]


def test_the_privacy_plan_is_shown_and_each_site_books_it_against_its_caps(
    federation: Federation,
):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
        extra="[privacy]\nmax_epsilon_per_run = 5\nmax_epsilon_total = 7\n",
    )
    start(federation, 1, policy)

    def run(noise: float, rounds: int) -> str:
        out = _run(
            federation,
            config=f"dp-mode='central' dp-noise-multiplier={noise} num-server-rounds={rounds} "
            "min-nodes=1",
        )
        return out

    fits = run(2.0, 2)  # the site books ε 3.19 (no sampling amplification)
    assert "privacy plan: (ε = 3.189, δ = 1e-05) site-level" in fits
    assert "final sum 20.0000" in fits  # two rounds of step 1: the site trained
    too_big = run(0.5, 10)
    assert "privacy.max_epsilon_per_run" in too_big
    assert "planned epsilon 48.8 exceeds max_epsilon_per_run 5" in too_big
    assert "final sum 0.0000" in too_big
    over_total = run(1.5, 2)  # 4.42 fits a run, but 3.19 + 4.42 > 7
    assert "privacy.max_epsilon_total" in over_total and "exceeds max_epsilon_total 7" in over_total

    node = str(federation.root / "node-n1")
    code, out, _ = federation.cli("admin", "budget", "show", "--data-dir", node, "--json")
    assert code == 0
    (status,) = json.loads(out)
    assert status["unit"] == "site-level" and status["runs"] == 1 and status["open_runs"] == 0
    assert abs(status["spent_epsilon"] - 3.189) < 0.01
    assert abs(status["remaining_epsilon"] - (7 - status["spent_epsilon"])) < 1e-9
    spent = _site_log(federation, "n1", "budget.spent")
    assert [entry["round"] for entry in spent] == [1, 2]
    assert float(spent[-1]["epsilon"]) == pytest.approx(status["spent_epsilon"])
    code, listed, _ = federation.cli("alice", "ls", "--federation", "test")
    assert "ε 3.19/3.19 site-level" in listed


def test_a_publisher_signed_bundle_runs_and_a_tampered_signature_does_not(
    federation: Federation,
):
    root = federation.root
    for who in ("publisher", "rogue"):
        assert federation.cli("alice", "app", "keygen", "--out", str(root / who))[0] == 0
        code, _, err = federation.cli(
            "alice", "app", "sign", str(PROBE), "--key", str(root / who / "publisher.key"),
            "--out", str(root / f"{who}.sig"),
        )  # fmt: skip
        assert code == 0, err
    signed = json.loads((root / "publisher.sig").read_text())
    flipped = signed["signature"][:10] + ("A" if signed["signature"][10] != "A" else "B")
    (root / "tampered.sig").write_text(
        json.dumps({**signed, "signature": flipped + signed["signature"][11:]})
    )
    site = root / "site.toml"
    site.write_text(
        '[apps]\nallow = []\ntrusted_publishers = ["publisher/publisher.pub"]\n'
        '[egress]\nallowed_metric_keys = ["num-examples", "step"]\n'
        '[execution]\nnetwork = "allowed"\n'
    )
    site.chmod(0o600)
    start(federation, 1, site)

    def run(*signature: str) -> str:
        return _run(federation, *signature, config="num-server-rounds=1 min-nodes=1")

    out = run("--signature", str(root / "publisher.sig"))
    assert "n1 accepted the run" in out and "final sum 10.0000" in out, out
    for signature, reason in (
        ("rogue.sig", "which this site does not trust"),
        ("tampered.sig", "does not verify"),
        (None, "carries no publisher signature"),
    ):
        out = run(*(["--signature", str(root / signature)] if signature else []))
        assert "n1 refused the run: site policy apps.trusted_publishers" in out, out
        assert reason in out, out
        assert "final sum 0.0000" in out
    # A signature over another bundle is refused by the SuperLink before anything runs.
    other = _variant(federation, "other-app", "# another bundle\n")
    code, _, err = federation.cli(
        "alice", "run", str(other), "--federation", "test",
        "--signature", str(root / "publisher.sig"),
    )  # fmt: skip
    assert code == 5 and "the bundle signature is for sha256:" in err, err


def test_an_oversized_reply_is_blocked_and_nothing_of_it_leaves(federation: Federation):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
    )
    policy.write_text(
        policy.read_text().replace("[egress]\n", "[egress]\nmax_reply_bytes = 4096\n", 1)
    )
    start(federation, 1, policy)
    out = _run(federation, config="size=100000 num-server-rounds=1 min-nodes=1")
    assert "egress.max_reply_bytes" in out and "nothing of it left the site" in out, out
    assert "final sum 0.0000" in out
    (refused,) = _site_log(federation, "n1", "policy.refused")
    assert "max_reply_bytes" in str(refused["reason"])
    sent = _site_log(federation, "n1", "egress.reply")
    assert sent and all(entry["bytes"] < 4096 for entry in sent)


def test_distributed_dp_sites_add_their_own_noise_shares_and_book_them(federation: Federation):
    policy = _policy(
        federation.root / "site.toml",
        allow=[build_bundle(PROBE).sha256],
        extra="""
        [privacy]
        require_secure_aggregation = true
        min_secagg_cohort = 3
        require_dp = "distributed"
        clip_norm = 1.0
        max_epsilon_per_run = 10
        max_epsilon_total = 30
        """,
    )
    start(federation, 3, policy)
    central = _run(
        federation, config="dp-mode='central' secagg=true num-server-rounds=1 min-nodes=3"
    )
    assert central.count("trains only under distributed DP") >= 3  # receipts, failures
    assert "final sum 0.0000" in central

    out = _run(
        federation,
        config="dp-mode='distributed' dp-noise-multiplier=1.0 dp-clipping-norm=1.0 "
        "num-server-rounds=1 min-nodes=3",
    )
    from dp.plan import DPPlan

    plan = DPPlan.from_run_config(
        {"dp-mode": "distributed", "dp-noise-multiplier": 1.0, "dp-clipping-norm": 1.0,
         "dp-min-surviving-sites": 3, "num-server-rounds": 1}
    )  # fmt: skip
    assert plan is not None
    planned = plan.spend().epsilon
    assert f"privacy plan: (ε = {planned:.4g}, δ = 1e-05) site-level" in out
    assert "Skellam noise shares under SecAgg+" in out
    # Steps 1, 2, 3 on 10 weights: norms 3.2, 6.3, 9.5, each clipped to 1, so every
    # weight moves by 1/sqrt(10) and the model's sum by sqrt(10) = 3.16, plus the
    # noise: std z * C / 3 per weight (three shares), about 1.05 on the sum of 10.
    final = float(re.search(r"final sum (\S+)", out).group(1))
    assert abs(final - 10**0.5) < 6 * 1.06
    assert final != pytest.approx(10**0.5, abs=1e-3)  # noised
    for node in ("n1", "n2", "n3"):
        (spent,) = _site_log(federation, node, "budget.spent")
        assert float(spent["epsilon"]) == pytest.approx(planned)
        assert spent["unit"] == "site-level"

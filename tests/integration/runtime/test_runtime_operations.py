"""Operations on real processes: Prometheus metrics, SIGHUP reloads, graceful SIGTERM."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import textwrap
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families
from runtime_harness import APPS, Federation, free_port, start, submitted_run, wait_for

import audit
from appliance.bundle import build_bundle
from appliance.proto import fleet_pb2 as pb
from appliance.proto.fleet_pb2_grpc import FleetStub
from certs import (
    CertificateAuthority,
    SigningInterceptor,
    certificate_pem,
    client_credentials,
    load_signing_key,
)
from certs.keys import private_key_pem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
PROBE = APPS / "probe"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _run(federation: Federation, config: str, *args: str, app: Path = PROBE) -> str:
    code, out, err = federation.cli(
        "alice", "run", str(app), "--federation", "test", "--run-config", config, *args
    )
    assert code == 0, err + federation.log("superlink")
    return out


def _site_actions(federation: Federation, node: str, action: str) -> int:
    """How many ``action`` entries a running site's own audit log holds."""
    db = federation.root / f"node-{node}" / "audit" / "site-audit.db"
    if not db.exists():
        return 0
    query = audit.EntryQuery(actions=frozenset({audit.Action(action)}))
    return len(list(audit.open_source(db).entries(query)))


def _json_lines(federation: Federation, name: str, event: str) -> list[dict[str, object]]:
    """The JSON log lines of process ``name`` whose event starts with ``event``."""
    lines = []
    for line in federation.log(name).splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if str(record.get("event", "")).startswith(event):
                lines.append(record)
    return lines


def _sighup_and_wait(federation: Federation, name: str, event: str) -> dict[str, object]:
    """Send SIGHUP to the SuperLink or a node; the next log line starting with ``event``."""
    before = len(_json_lines(federation, name, event))
    process = federation.superlink if name == "superlink" else federation.nodes[name[5:]]
    assert process is not None
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(_json_lines(federation, name, event)) > before, 30, event)
    assert process.poll() is None, federation.log(name)
    return _json_lines(federation, name, event)[before]


# -- metrics -----------------------------------------------------------------------------


def _policy(path: Path, allowed: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            [apps]
            allow = ["sha256:{allowed}"]

            [privacy]
            max_epsilon_per_run = 4.0
            max_epsilon_total = 12.5
            dataset = "cohort-a"

            [egress]
            allowed_metric_keys = ["num-examples", "step"]

            [execution]
            network = "allowed"
            """
        )
    )
    path.chmod(0o600)
    return path


def test_metrics_of_a_real_superlink_and_supernode(federation: Federation):
    link_port, node_port = free_port(), free_port()
    federation.start_superlink(extra=("--metrics-address", f"127.0.0.1:{link_port}"))
    federation.enrol("n1")
    policy = _policy(federation.root / "site.toml", build_bundle(PROBE).sha256)
    federation.start_node("n1", 0, 1, policy, extra=("--metrics-address", f"127.0.0.1:{node_port}"))
    federation.wait_online("n1")

    out = _run(federation, "num-server-rounds=1 min-nodes=1")
    assert "final sum 10.0000" in out, out
    other = federation.root / "other-app"  # another bundle: not on the site's allowlist
    shutil.copytree(PROBE, other)
    (other / "probe" / "extra.py").write_text("# not the allowed bundle\n")
    out = _run(federation, "num-server-rounds=1 min-nodes=1", app=other)
    assert "refused the run: site policy apps.allow" in out, out

    # A request without the node's signature: refused by the SuperLink's interceptor.
    credentials = client_credentials(
        ca_certificate=federation.pki.ca,
        certificate=federation.pki.cert("n1"),
        key=federation.pki.key("n1"),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{federation.fleet_port}", credentials)
    with channel, pytest.raises(grpc.RpcError) as refused:
        FleetStub(channel).Hello(pb.HelloRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    link = _scrape(link_port)
    assert _value(link, "greenhouse_nodes_online") == 1
    assert _value(link, "greenhouse_nodes_enrolled") == 1
    assert _value(link, "greenhouse_runs", status="finished") == 2, link
    assert _value(link, "greenhouse_runs", status="running") == 0
    assert _value(link, "greenhouse_rounds_completed_total") >= 1
    reason = {"api": "fleet", "reason": "signature-missing"}
    assert _value(link, "greenhouse_auth_failures_total", **reason) == 1
    assert _value(link, "greenhouse_receipts_total", site="n1", decision="accepted") == 1
    assert _value(link, "greenhouse_receipts_total", site="n1", decision="refused") == 1
    # The probe's messages and replies are small: each message went whole on the node's
    # Subscribe stream and each reply in one call; none was pulled or streamed (over
    # 64 KiB they are: see test_runtime_e2e's chunked model).
    assert _value(link, "greenhouse_fleet_sent_bytes_total", method="Subscribe") > 0
    assert not _value(link, "greenhouse_fleet_sent_bytes_total", method="PullMessage")
    assert _value(link, "greenhouse_fleet_received_bytes_total", method="PushWholeReply") > 0
    assert not _value(link, "greenhouse_fleet_received_bytes_total", method="PushReply")
    assert _value(link, "greenhouse_audit_appends_total", action="auth.refused") == 1
    assert _value(link, "greenhouse_audit_appends_total", action="run.finished") == 2

    def appends_match_the_log() -> bool:
        now = _scrape(link_port)
        appended = sum(v for (n, _), v in now.items() if n == "greenhouse_audit_appends_total")
        return appended == _value(now, "greenhouse_audit_log_entries") > 0

    wait_for(appends_match_the_log, 30, "every audit entry of this process to be counted")
    assert not any("run_id" in dict(labels) for _, labels in link)

    node = _scrape(node_port)
    assert _value(node, "greenhouse_connected") == 1
    assert _value(node, "greenhouse_messages_total", outcome="replied") == 1
    assert _value(node, "greenhouse_messages_total", outcome="refused") == 1
    assert _value(node, "greenhouse_policy_refusals_total", reason="apps") == 1
    assert _value(node, "greenhouse_content_received_bytes_total", kind="message") > 0
    assert _value(node, "greenhouse_content_received_bytes_total", kind="bundle") > 0
    assert _value(node, "greenhouse_content_sent_bytes_total") > 0
    budget = {"dataset": "cohort-a", "unit": "site-level"}
    assert _value(node, "greenhouse_privacy_budget_remaining_epsilon", **budget) == 12.5
    assert _value(node, "greenhouse_audit_log_entries") > 0

    federation.kill_superlink()
    wait_for(lambda: _value(_scrape(node_port), "greenhouse_connected") == 0, 30, "disconnected")


# -- SIGTERM -----------------------------------------------------------------------------


def _export(db: Path, out: Path) -> list[audit.Entry]:
    audit.export(audit.open_sqlite(db), out)
    return [audit.parse_entry(line) for line in (out / "entries.jsonl").read_bytes().splitlines()]


def test_sigterm_fails_the_superlinks_runs_in_flight_and_seals_its_audit_log(
    federation: Federation, tmp_path: Path
):
    start(federation, 2)
    run_id = submitted_run(_run(federation, "train-sleep=60", "--detach"))
    wait_for(lambda: federation.run_status("alice", run_id)[0] == "running", 30, "run start")

    # Bounded, with room for a loaded machine (it takes about 3 s here when idle).
    assert federation.terminate("superlink", timeout_s=60) == 0, federation.log("superlink")
    link_dir = federation.root / "superlink"
    entries = _export(link_dir / "state.db", tmp_path / "link")
    report = audit.check_export(tmp_path / "link", (link_dir / "audit.vkey").read_text().strip())
    assert report.ok, report.problem  # no unsigned tail: it ends with a signed tree head
    assert max(c.tree_size for c in report.checkpoints) == report.entries == len(entries)
    failed = [
        e.to_json()["details"]
        for e in entries
        if e.action.value == "run.failed" and e.subjects.get("run_id") == str(run_id)
    ]
    assert failed == [{"reason": "superlink shut down"}]

    federation.start_superlink()
    assert federation.run_status("alice", run_id) == ("failed", "superlink shut down")
    code, out, err = federation.cli("alice", "ls", "--federation", "test")
    assert code == 0, err
    assert "superlink shut down" in out
    assert "superlink restarted" not in out


def _received(federation: Federation, *nodes: str) -> Callable[[], bool]:
    return lambda: all(_site_actions(federation, n, "message.received") >= 1 for n in nodes)


def test_sigterm_lets_a_supernode_finish_the_message_in_progress(
    federation: Federation, tmp_path: Path
):
    federation.start_superlink()
    federation.enrol("n1", "n2")
    # A grace well past the 4 s of training: the ClientApp starts only after the message
    # is logged as received, and on a loaded machine its start alone takes seconds.
    for i, name in enumerate(("n1", "n2")):
        federation.start_node(name, i, 2, extra=("--shutdown-grace", "40"))
    federation.wait_online("n1", "n2")
    run_id = submitted_run(
        _run(federation, "train-sleep=4 num-server-rounds=1 min-nodes=2", "--detach")
    )
    wait_for(_received(federation, "n1", "n2"), 30, "both nodes to start training")

    # The SuperLink would answer for a node gone for 1 s (--node-grace): n2 stays
    # subscribed while it finishes, so its reply counts.
    assert federation.terminate("n2", timeout_s=60) == 0, federation.log("node-n2")
    assert federation.wait_run("alice", run_id) == ("finished", "")
    code, log, _ = federation.cli("alice", "log", str(run_id), "--federation", "test")
    assert code == 0
    assert "final sum 15.0000" in log, log  # the mean of both nodes' +1 and +2
    assert "failure" not in log

    site = federation.root / "node-n2" / "audit"
    export = tmp_path / "site-n2"
    entries = _export(site / "site-audit.db", export)
    audit.verify_export(export, (site / "site-audit.vkey").read_text().strip())
    assert [e.action.value for e in entries].count("egress.reply") == 1


def test_a_supernode_kills_a_clientapp_that_outlasts_the_grace(federation: Federation):
    federation.start_superlink()
    federation.enrol("n1")
    federation.start_node("n1", 0, 1, extra=("--shutdown-grace", "0.5"))
    federation.wait_online("n1")
    _run(federation, "train-sleep=120 num-server-rounds=1 min-nodes=1", "--detach")
    wait_for(_received(federation, "n1"), 30, "the node to start training")

    assert federation.terminate("n1", timeout_s=60) == 0, federation.log("node-n1")
    assert _json_lines(federation, "node-n1", "stopping: messages still in progress")
    assert _site_actions(federation, "n1", "egress.reply") == 1  # the error reply, logged


# -- SIGHUP ------------------------------------------------------------------------------


def _served_serial(federation: Federation) -> int:
    """The serial of the certificate the Fleet API presents in a fresh TLS handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(federation.pki.ca)
    context.load_cert_chain(federation.pki.cert("n1"), federation.pki.key("n1"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", federation.fleet_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _same_size_server_files(ca: CertificateAuthority, cert: Path, key: Path) -> x509.Certificate:
    """Issue a server certificate whose PEM files are as long as ``cert`` and ``key``."""
    for _ in range(50):
        new_key, new_cert = ca.issue_server(
            hosts=["localhost"], ips=[ipaddress.ip_address("127.0.0.1")], actor="test"
        )
        cert_pem, key_pem = certificate_pem(new_cert), private_key_pem(new_key)
        if len(cert_pem) == cert.stat().st_size and len(key_pem) == key.stat().st_size:
            for path, data in ((cert, cert_pem), (key, key_pem)):
                stat = path.stat()
                with path.open("r+b") as file:  # same inode, size and mtime: same stamp
                    file.write(data)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            return new_cert
    raise AssertionError("no server certificate of the same length in 50 tries")


def test_sighup_makes_the_superlink_reload_its_certificate_now(federation: Federation):
    tls = federation.root / "tls"
    tls.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy2(federation.pki.ca_dir / "server" / name, tls / name)
    cert, key = tls / "server.pem", tls / "server.key"
    federation.start_superlink(extra=("--cert", str(cert), "--key", str(key)))
    federation.enrol("n1")
    first = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    assert _served_serial(federation) == first

    renewed = _same_size_server_files(CertificateAuthority.open(federation.pki.ca_dir), cert, key)
    # The files' stamps did not change: without SIGHUP the old certificate is served on.
    assert _served_serial(federation) == first
    line = _sighup_and_wait(federation, "superlink", "SIGHUP: server certificate reloaded")
    assert line["serial"] == f"{renewed.serial_number:x}" and line["changed"] is True
    assert line["previous_serial"] == f"{first:x}"
    assert _served_serial(federation) == renewed.serial_number
    crl = _json_lines(federation, "superlink", "SIGHUP: CRL reloaded")[-1]
    assert crl["revoked"] == 0

    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    line = _sighup_and_wait(federation, "superlink", "SIGHUP: server TLS files NOT reloaded")
    assert "server.pem" in str(line["error"])
    assert _served_serial(federation) == renewed.serial_number  # the last good one stays
    federation.start_node("n1", 0, 1)
    federation.wait_online("n1")  # and the SuperLink keeps serving with it


def test_sighup_makes_a_supernode_reload_its_crl(federation: Federation):
    crl, cert = federation.root / "crl.pem", federation.root / "n1.pem"
    shutil.copy2(federation.pki.ca_dir / "crl.pem", crl)
    shutil.copy2(federation.pki.cert("n1"), cert)
    federation.start_superlink()
    federation.enrol("n1")
    federation.start_node("n1", 0, 1, extra=("--crl", str(crl), "--cert", str(cert)))
    federation.wait_online("n1")

    assert _sighup_and_wait(federation, "node-n1", "SIGHUP: CRL reloaded")["revoked"] == 0
    authority = CertificateAuthority.open(federation.pki.ca_dir)
    stranger = x509.load_pem_x509_certificate(federation.pki.cert("stranger").read_bytes())
    authority.revoke(stranger.serial_number, reason=x509.ReasonFlags.key_compromise, actor="test")
    crl.write_bytes(authority.crl(actor="test").public_bytes(Encoding.PEM))
    assert _sighup_and_wait(federation, "node-n1", "SIGHUP: CRL reloaded")["revoked"] == 1

    crl.write_text("garbage")
    line = _sighup_and_wait(federation, "node-n1", "SIGHUP: CRL NOT reloaded")
    assert "not a PEM certificate revocation list" in str(line["error"])
    cert.write_bytes(cert.read_bytes() + b"\n")  # rewritten, but the same certificate
    _sighup_and_wait(federation, "node-n1", "SIGHUP: the node's certificate is unchanged")
    assert "n1" in federation.online()  # the node kept serving through all of it


def _renewed_identity(federation: Federation, directory: Path) -> tuple[Path, Path, Path]:
    """A new certificate, TLS key and signing key for node n1 (the site's new request)."""
    code, _, err = federation.cli(
        "admin", "certs", "request", "--role", "node", "--name", "n1", "--out", str(directory)
    )
    assert code == 0, err
    csr = directory / "n1.csr"
    code, _, err = federation.cli(
        "admin", "ca", "sign", str(csr), "--dir", str(federation.pki.ca_dir), "--role", "node"
    )
    assert code == 0, err
    return directory / "n1.pem", directory / "n1.key", directory / "n1-signing.key"


def _hello(federation: Federation, cert: Path, key: Path, signing_key: Path) -> pb.HelloResponse:
    """A signed Hello with this node identity."""
    credentials = client_credentials(ca_certificate=federation.pki.ca, certificate=cert, key=key)
    with grpc.secure_channel(f"127.0.0.1:{federation.fleet_port}", credentials) as channel:
        signed = grpc.intercept_channel(channel, SigningInterceptor(load_signing_key(signing_key)))
        return FleetStub(signed).Hello(pb.HelloRequest(version="1"), timeout=10)


def test_sighup_switches_a_supernode_to_its_renewed_certificate(federation: Federation):
    pki = federation.root / "pki-n1"
    pki.mkdir()
    files = [pki / name for name in ("n1.pem", "n1.key", "n1-signing.key")]
    for source, copy in zip(
        (federation.pki.cert("n1"), federation.pki.key("n1"), federation.pki.signing_key("n1")),
        files,
        strict=True,
    ):
        shutil.copy2(source, copy)
    cert, key, signing_key = files
    federation.start_superlink()
    federation.enrol("n1")
    extra = ("--cert", str(cert), "--key", str(key), "--signing-key", str(signing_key))
    federation.start_node("n1", 0, 1, extra=extra)
    federation.wait_online("n1")
    with federation.client("admin") as admin:
        (before,) = admin.nodes()
    new_cert, new_key, new_signing_key = _renewed_identity(federation, federation.root / "new")

    # A signing key that is not the one the new certificate binds: not used.
    shutil.copy2(new_cert, cert)
    shutil.copy2(new_key, key)
    line = _sighup_and_wait(federation, "node-n1", "SIGHUP: the node's new certificate or keys")
    assert "is not the one certificate" in str(line["error"])
    # The whole new identity, but the admin has not staged it: the SuperLink refuses it.
    shutil.copy2(new_signing_key, signing_key)
    line = _sighup_and_wait(federation, "node-n1", "SIGHUP: the SuperLink refused")
    assert "PERMISSION_DENIED" in str(line["error"])
    assert "n1" in federation.online()  # on the old certificate all along

    code, out, err = federation.cli("admin", "node", "renew", str(new_cert), "--federation", "test")
    assert code == 0, err
    assert f"staged the renewal of n1 (node {before.node_id})" in out
    code, out, _ = federation.cli("admin", "node", "ls", "--federation", "test")
    assert "(renewal staged)" in out
    line = _sighup_and_wait(federation, "node-n1", "SIGHUP: node certificate switched")
    assert line["node_id"] == before.node_id
    federation.wait_online("n1")
    with federation.client("admin") as admin:
        (after,) = admin.nodes()
    assert (after.node_id, after.renewal_cert_fingerprint) == (before.node_id, "")
    assert after.cert_fingerprint != before.cert_fingerprint
    old_signing_key = federation.pki.signing_key("n1")
    with pytest.raises(grpc.RpcError) as refused:  # the old certificate is retired
        _hello(federation, federation.pki.cert("n1"), federation.pki.key("n1"), old_signing_key)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _hello(federation, new_cert, new_key, new_signing_key).node_id == before.node_id
    assert _site_actions(federation, "n1", "node.renewal_completed") == 1

    run_id = submitted_run(_run(federation, "num-server-rounds=1 min-nodes=1", "--detach"))
    assert federation.wait_run("alice", run_id)[0] == "finished", federation.log("superlink")
    code, out, err = federation.cli(
        "audrey", "audit", "show", "--federation", "test", "--action", "node.renewed",
        "--action", "node.renewal_completed",
    )  # fmt: skip
    assert code == 0, err
    assert "node.renewed" in out and "node.renewal_completed" in out

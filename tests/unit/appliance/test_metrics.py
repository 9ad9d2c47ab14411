"""Metrics: served over real HTTP on 127.0.0.1, counted by real gRPC and SQL transactions."""

from __future__ import annotations

import contextlib
import io
import socket
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from appliance.cli import main as cli_main
from appliance.health import add_health_servicer
from appliance.message import Error, ErrorCode, Message
from appliance.metrics import (
    BudgetReading,
    FleetByteMeter,
    MetricsError,
    SuperLinkMetrics,
    SuperNodeMetrics,
    parse_address,
    serve_metrics,
)
from appliance.records import RecordDict
from appliance.state import AuditActor
from appliance.supernode.budget import BUDGET_FILE
from appliance.supernode.budget_view import BudgetView
from dp import BudgetLedger, PrivacySpend, PrivacyUnit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _link(runs: list[str] | None = None, nodes: tuple[int, int] = (0, 0)) -> SuperLinkMetrics:
    return SuperLinkMetrics(
        runs=lambda: list(runs or []),
        statuses=("pending", "running", "finished", "failed"),
        nodes=lambda: nodes,
        audit_entries=lambda: 42,
    )


def test_each_metrics_object_has_its_own_registry_served_over_http() -> None:
    first = _link(["finished", "finished", "failed"], nodes=(1, 3))
    second = _link()
    first.rounds_completed.inc(2)
    first.refused("/greenhouse.fleet.v1.Fleet/Hello", "signature-missing")
    first.refused("/greenhouse.control.v1.Control/ListRuns", "wrong-role")
    first.refused("/evil.Service/Drop", "method-not-allowed")
    with (
        serve_metrics("127.0.0.1:0", first.registry) as port_1,
        serve_metrics("127.0.0.1:0", second.registry) as port_2,
    ):
        one, two = _scrape(port_1), _scrape(port_2)
    assert one[("greenhouse_runs", (("status", "finished"),))] == 2
    assert one[("greenhouse_runs", (("status", "failed"),))] == 1
    assert one[("greenhouse_runs", (("status", "pending"),))] == 0
    assert one[("greenhouse_nodes_online", ())] == 1
    assert one[("greenhouse_nodes_enrolled", ())] == 3
    assert one[("greenhouse_audit_log_entries", ())] == 42
    assert one[("greenhouse_rounds_completed_total", ())] == 2
    fleet = (("api", "fleet"), ("reason", "signature-missing"))
    assert one[("greenhouse_auth_failures_total", fleet)] == 1
    control = (("api", "control"), ("reason", "wrong-role"))
    assert one[("greenhouse_auth_failures_total", control)] == 1
    other = (("api", "other"), ("reason", "method-not-allowed"))
    assert one[("greenhouse_auth_failures_total", other)] == 1
    assert two[("greenhouse_rounds_completed_total", ())] == 0  # nothing shared
    assert ("greenhouse_auth_failures_total", fleet) not in two
    assert all(name.startswith("greenhouse_") for name, _ in one)  # an own registry: no others


def test_the_endpoint_is_closed_after_the_block_and_a_taken_port_is_an_error() -> None:
    taken = pytest.raises(MetricsError, match=r"cannot serve metrics at 127\.0\.0\.1:")
    with serve_metrics("127.0.0.1:0", _link().registry) as port:
        assert _scrape(port)
        with taken, serve_metrics(f"127.0.0.1:{port}", _link().registry):
            pass
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    with serve_metrics(None, _link().registry) as nothing:
        assert nothing == 0


@pytest.mark.parametrize("address", ["9095", "127.0.0.1", "127.0.0.1:http", ":9095", "h:70000"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(MetricsError, match="is not HOST:PORT"):
        parse_address(address)


def test_addresses_parse() -> None:
    assert parse_address("127.0.0.1:9095") == ("127.0.0.1", 9095)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("0.0.0.0:9095") == ("0.0.0.0", 9095)


def test_a_failing_reading_leaves_the_rest_of_the_scrape() -> None:
    def broken() -> list[str]:
        raise RuntimeError("database is gone")

    metrics = SuperLinkMetrics(
        runs=broken, statuses=("finished",), nodes=lambda: (0, 0), audit_entries=lambda: 0
    )
    metrics.rounds_completed.inc()
    with serve_metrics("127.0.0.1:0", metrics.registry) as port:
        samples = _scrape(port)
    assert samples[("greenhouse_rounds_completed_total", ())] == 1
    assert not any(name == "greenhouse_runs" for name, _ in samples)


def test_audit_entries_are_counted_once_committed_never_when_rolled_back() -> None:
    metrics = _link()
    written: list[str] = []

    def sink(session: Session, action: str, *, actor, subjects, details) -> None:
        session.execute(text("INSERT INTO entries VALUES (:a)"), {"a": action})
        written.append(action)

    tap = metrics.audit_tap(sink)
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE entries (action TEXT)"))

    def count(action: str) -> float:
        return (
            metrics.registry.get_sample_value("greenhouse_audit_appends_total", {"action": action})
            or 0.0
        )

    with Session(engine) as session, session.begin():
        tap(session, "round.completed", actor=None, subjects={}, details={})
        assert count("round.completed") == 0  # not before the commit
    refused = {"node": "st-marys", "decision": "refused"}
    with Session(engine) as session, session.begin():
        actor = AuditActor("st-marys", "node")
        tap(session, "receipt.received", actor=actor, subjects={}, details=refused)
    with Session(engine) as session:
        session.begin()
        tap(session, "round.completed", actor=None, subjects={}, details={})
        session.rollback()  # the change failed: its entry rolls back with it
    assert written == ["round.completed", "receipt.received", "round.completed"]
    assert count("round.completed") == 1
    assert metrics.registry.get_sample_value("greenhouse_rounds_completed_total") == 1
    site = {"site": "st-marys", "decision": "refused"}
    assert metrics.registry.get_sample_value("greenhouse_receipts_total", site) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM entries")).scalar() == 2


@pytest.fixture
def health_channel() -> Iterator[tuple[grpc.Channel, SuperLinkMetrics]]:
    metrics = _link()
    meter = FleetByteMeter(metrics.fleet_received_bytes, metrics.fleet_sent_bytes)
    server = grpc.server(ThreadPoolExecutor(max_workers=2), interceptors=[meter])
    add_health_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, metrics
    finally:
        channel.close()
        server.stop(0).wait()


def test_the_byte_meter_counts_serialized_requests_and_responses(health_channel) -> None:
    channel, metrics = health_channel
    request = health_pb2.HealthCheckRequest(service="")
    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    bogus = health_pb2.HealthCheckRequest(service="no-such-service")
    with pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(bogus, timeout=10)
    unknown = channel.unary_unary("/grpc.health.v1.Health/DropTables")
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"\x01\x02", timeout=10)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED

    get = metrics.registry.get_sample_value
    received = len(request.SerializeToString()) + len(bogus.SerializeToString())
    assert received > 0
    assert get("greenhouse_fleet_received_bytes_total", {"method": "Check"}) == received
    sent = len(reply.SerializeToString())
    assert sent > 0
    assert get("greenhouse_fleet_sent_bytes_total", {"method": "Check"}) == sent
    assert get("greenhouse_fleet_received_bytes_total", {"method": "DropTables"}) is None


def _reply(error: ErrorCode | None) -> Message:
    request = Message(RecordDict(), dst_node_id=5, message_type="train").with_metadata(run_id=7)
    if error is None:
        return Message(RecordDict(), reply_to=request)
    return Message(Error(error, "why"), reply_to=request)


def test_supernode_counts_outcomes_refusals_and_bytes(tmp_path: Path) -> None:
    metrics = SuperNodeMetrics(budget=list, audit_entries=lambda: None)
    metrics.handled(_reply(None), 100)
    metrics.handled(_reply(ErrorCode.POLICY_REFUSED), 0)
    metrics.handled(_reply(ErrorCode.CLIENT_APP_CRASHED), 0)
    metrics.unhandled()
    metrics.refused("egress.allow_query")
    metrics.refused("egress.max_reply_bytes")
    metrics.refused("apps.allow")
    metrics.refused("Bad Key!")
    metrics.received("message", 10)
    metrics.received("bundle", 5)
    metrics.set_connected(True)
    get = metrics.registry.get_sample_value
    for outcome in ("replied", "refused", "error", "unhandled"):
        assert get("greenhouse_messages_total", {"outcome": outcome}) == 1
    assert get("greenhouse_policy_refusals_total", {"reason": "egress"}) == 2
    assert get("greenhouse_policy_refusals_total", {"reason": "apps"}) == 1
    assert get("greenhouse_policy_refusals_total", {"reason": "other"}) == 1
    assert get("greenhouse_content_sent_bytes_total") == 100
    assert get("greenhouse_content_received_bytes_total", {"kind": "message"}) == 10
    assert get("greenhouse_content_received_bytes_total", {"kind": "bundle"}) == 5
    assert get("greenhouse_connected") == 1
    assert get("greenhouse_audit_log_entries") is None  # the site log is not open yet
    metrics.set_connected(False)
    assert get("greenhouse_connected") == 0


def test_the_budget_left_is_read_from_the_site_ledger(tmp_path: Path) -> None:
    view = BudgetView(tmp_path)
    assert view.remaining() == []
    assert not (tmp_path / BUDGET_FILE).exists()  # reading creates nothing

    ledger = BudgetLedger.open(tmp_path / BUDGET_FILE)
    ledger.set_budget("oncology", PrivacyUnit.SITE, max_epsilon_per_run=4, max_epsilon_total=10)
    ledger.set_budget("oncology", PrivacyUnit.RECORD, max_epsilon_per_run=1, max_epsilon_total=3)
    spend = PrivacySpend(epsilon=2.5, delta=1e-5, unit=PrivacyUnit.SITE)
    ledger.reserve("oncology", run_id=7, planned=spend)
    ledger.close()

    metrics = SuperNodeMetrics(
        budget=view.remaining, audit_entries=lambda: 12, close_budget=view.close
    )
    try:
        with serve_metrics("127.0.0.1:0", metrics.registry) as port:
            samples = _scrape(port)
    finally:
        metrics.close()
    left = "greenhouse_privacy_budget_remaining_epsilon"
    site, record = PrivacyUnit.SITE.value, PrivacyUnit.RECORD.value
    assert samples[(left, (("dataset", "oncology"), ("unit", site)))] == 7.5
    assert samples[(left, (("dataset", "oncology"), ("unit", record)))] == 3
    assert samples[("greenhouse_audit_log_entries", ())] == 12
    assert sorted(view.remaining(), key=lambda r: r.unit) == [
        BudgetReading("oncology", record, 3.0),
        BudgetReading("oncology", site, 7.5),
    ]
    view.close()


@pytest.mark.parametrize("command", ["superlink", "supernode"])
def test_a_malformed_metrics_address_is_a_usage_error(command: str, tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        args = [command, "--insecure"]
        if command == "supernode":
            args += ["--superlink", "127.0.0.1:1", "--name", "n"]
        code = cli_main([*args, "--data-dir", str(tmp_path / "d"), "--metrics-address", "9095"])
    assert code == 2
    assert "--metrics-address': metrics address '9095' is not HOST:PORT" in err.getvalue()
    assert not (tmp_path / "d").exists()  # refused before anything started

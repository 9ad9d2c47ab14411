"""Prometheus metrics of the SuperLink and the SuperNode (``--metrics-address``).

An operator's monitoring reads numbers, not logs: runs by status, nodes online,
refused calls, what a site sent and refused, how much privacy budget it has left.
:func:`serve_metrics` serves a registry in the Prometheus text format over plain
HTTP; :class:`SuperLinkMetrics` and :class:`SuperNodeMetrics` define what is in it.

What this module guarantees:

- Each process object owns a :class:`prometheus_client.CollectorRegistry` of its
  own, never the global default one, so several SuperLinks and SuperNodes can live
  in one process (the tests) without sharing a number.
- Every metric is named ``greenhouse_*`` and has a help text. Label values come
  from small sets fixed by the code or the configuration: run statuses, refusal
  reason tags, policy sections, outcome words, Fleet method names, enrolled site
  names, the site policy's dataset names and privacy units. Never run ids, message
  ids, peer addresses, free text or epsilon values.
- What the database already knows (runs by status, nodes, the audit log's size, the
  site's remaining privacy budget) is read at scrape time, so it is right after a
  restart; counters count events since the process started (Prometheus' ``rate``
  and ``increase`` handle the reset).

What it leaves to the deployment: who may reach the endpoint. It answers plain
HTTP without authentication, like every Prometheus exporter: bind it to loopback,
to a pod address behind a NetworkPolicy, or to a monitoring network.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.message import ErrorCode, Message
from appliance.state import AuditActor, AuditSink

__all__ = [
    "BudgetReading",
    "FleetByteMeter",
    "MetricsError",
    "SuperLinkMetrics",
    "SuperNodeMetrics",
    "parse_address",
    "serve_metrics",
]

_log = get_logger("appliance.metrics")
_SECTION = re.compile(r"[a-z][a-z_-]{0,31}")


class MetricsError(ApplianceError):
    """The metrics endpoint cannot be served: a malformed address or a port in use."""


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``.

    Raises:
        MetricsError: no port, or a port outside 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise MetricsError(f"metrics address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def serve_metrics(address: str | None, registry: CollectorRegistry) -> Iterator[int]:
    """Serve ``registry`` at ``http://ADDRESS/metrics`` for the block; yield the bound port.

    With ``address`` None nothing is served and the port is 0. The server is shut
    down and its socket closed when the block ends.

    Raises:
        MetricsError: the address is malformed or cannot be bound.
    """
    if address is None:
        yield 0
        return
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics at {address}: {exc.strerror or exc}") from None
    bound = int(server.server_address[1])
    _log.info("metrics endpoint listening", address=address, port=bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _ScrapeTime(Collector):
    """Metrics read when Prometheus scrapes (from the database or a ledger)."""

    def __init__(self, read: Callable[[], Iterable[Metric]], what: str) -> None:
        self._read = read
        self._what = what

    def collect(self) -> Iterator[Metric]:
        try:
            metrics = list(self._read())
        except Exception as exc:  # a scrape never takes the process down
            _log.warning("metrics not read", what=self._what, error=f"{type(exc).__name__}: {exc}")
            return iter(())
        return iter(metrics)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registered without reading anything


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class FleetByteMeter(grpc.ServerInterceptor):  # type: ignore[misc]
    """Counts the serialized bytes of every request and response of a server's methods.

    Outermost interceptor: it wraps the (de)serializers gRPC calls, so it sees the
    exact protobuf bytes on the wire, refused calls included. Methods the server
    does not serve are not counted (their names are the caller's choice).
    """

    def __init__(self, received: Counter, sent: Counter) -> None:
        self._received = received
        self._sent = sent

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        received = self._received.labels(method=method)
        sent = self._sent.labels(method=method)
        decode = handler.request_deserializer
        encode = handler.response_serializer

        def deserialize(raw: bytes) -> Any:
            received.inc(len(raw))
            return raw if decode is None else decode(raw)

        def serialize(message: Any) -> bytes:
            data = message if encode is None else encode(message)
            sent.inc(len(data))
            return data  # type: ignore[no-any-return]

        for kind, factory in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return factory(
                    behaviour, request_deserializer=deserialize, response_serializer=serialize
                )
        return handler


class SuperLinkMetrics:
    """The SuperLink's metrics, in :attr:`registry`.

    Args:
        runs: the status of every run (read at scrape time).
        statuses: every run status, so a status without runs reads 0.
        nodes: ``(online, enrolled)`` node counts (read at scrape time).
        audit_entries: the audit log's size (read at scrape time).
    """

    def __init__(
        self,
        *,
        runs: Callable[[], Iterable[str]],
        statuses: Iterable[str],
        nodes: Callable[[], tuple[int, int]],
        audit_entries: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_completed = Counter(
            "greenhouse_rounds_completed",
            "Training or evaluation rounds recorded as completed (round.completed).",
            registry=r,
        )
        self.fleet_received_bytes = Counter(
            "greenhouse_fleet_received_bytes",
            "Serialized request bytes the Fleet API received, by method.",
            ["method"],
            registry=r,
        )
        self.fleet_sent_bytes = Counter(
            "greenhouse_fleet_sent_bytes",
            "Serialized response bytes the Fleet API sent, by method.",
            ["method"],
            registry=r,
        )
        self.auth_failures = Counter(
            "greenhouse_auth_failures",
            "Calls refused by authentication or authorization, by API and reason tag "
            "(foreign-CA certificates are refused in the TLS handshake and not counted).",
            ["api", "reason"],
            registry=r,
        )
        self.audit_appends = Counter(
            "greenhouse_audit_appends",
            "Entries appended to the SuperLink's audit log (committed), by action.",
            ["action"],
            registry=r,
        )
        self.receipts = Counter(
            "greenhouse_receipts",
            "Signed run decisions received from sites, by site and decision; "
            'decision="refused" counts the runs a site policy refused.',
            ["site", "decision"],
            registry=r,
        )
        all_statuses = tuple(statuses)

        def state() -> Iterator[Metric]:
            counts = dict.fromkeys(all_statuses, 0)
            for status in runs():
                counts[status] = counts.get(status, 0) + 1
            family = GaugeMetricFamily(
                "greenhouse_runs", "Runs in the state, by status.", labels=["status"]
            )
            for status, count in counts.items():
                family.add_metric([status], count)
            yield family
            online, enrolled = nodes()
            yield _gauge("greenhouse_nodes_online", "Enrolled nodes subscribed now.", online)
            yield _gauge("greenhouse_nodes_enrolled", "Nodes enrolled in the federation.", enrolled)
            yield _gauge(
                "greenhouse_audit_log_entries",
                "Entries in the SuperLink's audit log (its tree size).",
                audit_entries(),
            )

        r.register(_ScrapeTime(state, "superlink state"))

    def refused(self, method: str, reason: str) -> None:
        """Count a refused call (``method`` is the full gRPC method name)."""
        service = method.lstrip("/").split("/", 1)[0]
        api = {"greenhouse.fleet.v1.Fleet": "fleet", "greenhouse.control.v1.Control": "control"}
        self.auth_failures.labels(api=api.get(service, "other"), reason=reason).inc()

    def audit_tap(self, sink: AuditSink) -> AuditSink:
        """``sink``, counting each entry once its transaction commits (not on rollback)."""

        def tap(
            session: Session,
            action: str,
            *,
            actor: AuditActor | None,
            subjects: Mapping[str, str],
            details: Mapping[str, object],
        ) -> None:
            sink(session, action, actor=actor, subjects=subjects, details=details)
            event.listen(session, "after_commit", _Committed(self, action, details), once=True)

        return tap


@dataclass(frozen=True)
class _Committed:
    """What an audit entry adds to the counters, applied after its commit."""

    metrics: SuperLinkMetrics
    action: str
    details: Mapping[str, object]

    def __call__(self, _session: object) -> None:
        self.metrics.audit_appends.labels(action=self.action).inc()
        if self.action == "round.completed":
            self.metrics.rounds_completed.inc()
        elif self.action == "receipt.received":
            site, decision = self.details.get("node"), self.details.get("decision")
            self.metrics.receipts.labels(site=str(site), decision=str(decision)).inc()


@dataclass(frozen=True, slots=True)
class BudgetReading:
    """A site's remaining privacy budget in one dataset and privacy unit."""

    dataset: str
    unit: str
    remaining_epsilon: float


class SuperNodeMetrics:
    """A SuperNode's metrics, in :attr:`registry`.

    Args:
        budget: the remaining privacy budgets (read at scrape time).
        audit_entries: the site audit log's size, None before it is open.
        close_budget: releases what ``budget`` holds open (at :meth:`close`).
    """

    def __init__(
        self,
        *,
        budget: Callable[[], Iterable[BudgetReading]],
        audit_entries: Callable[[], int | None],
        close_budget: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._close_budget = close_budget
        self.messages = Counter(
            "greenhouse_messages",
            "Messages this node answered, by outcome: replied (content), refused (site "
            "policy), error (any other error reply), unhandled (no reply sent).",
            ["outcome"],
            registry=r,
        )
        self.policy_refusals = Counter(
            "greenhouse_policy_refusals",
            "Refusals by the site (bundles, messages, runs, egress, budget, the SuperLink's "
            "audit log), by the policy section that refused.",
            ["reason"],
            registry=r,
        )
        self.received_bytes = Counter(
            "greenhouse_content_received_bytes",
            "Content bytes pulled from the SuperLink, by kind (message, bundle).",
            ["kind"],
            registry=r,
        )
        self.sent_bytes = Counter(
            "greenhouse_content_sent_bytes",
            "Reply content bytes this site let out (after the egress check).",
            registry=r,
        )
        self.connected = Gauge(
            "greenhouse_connected",
            "1 while subscribed to the SuperLink, 0 while (re)connecting.",
            registry=r,
        )

        def readings() -> Iterator[Metric]:
            family = GaugeMetricFamily(
                "greenhouse_privacy_budget_remaining_epsilon",
                "Epsilon left in the site's privacy budget (cap minus spent and reserved), "
                "by dataset and privacy unit (site or record: never added together).",
                labels=["dataset", "unit"],
            )
            for reading in budget():
                family.add_metric([reading.dataset, reading.unit], reading.remaining_epsilon)
            yield family
            size = audit_entries()
            if size is not None:
                yield _gauge(
                    "greenhouse_audit_log_entries",
                    "Entries in the site's audit log (its tree size).",
                    size,
                )

        r.register(_ScrapeTime(readings, "site ledger and audit log"))

    def handled(self, reply: Message, content_bytes: int) -> None:
        """A reply left the site (``content_bytes``: its checked frame)."""
        if not reply.has_error():
            outcome = "replied"
        elif reply.error.code == ErrorCode.POLICY_REFUSED:
            outcome = "refused"
        else:
            outcome = "error"
        self.messages.labels(outcome=outcome).inc()
        self.sent_bytes.inc(content_bytes)

    def received(self, kind: str, content_bytes: int) -> None:
        """Content pulled from the SuperLink: a ``"message"`` or a ``"bundle"``."""
        self.received_bytes.labels(kind=kind).inc(content_bytes)

    def unhandled(self) -> None:
        """A message got no reply from this node (the push or the pull failed)."""
        self.messages.labels(outcome="unhandled").inc()

    def refused(self, key: str) -> None:
        """Count a refusal under its policy section (``"egress.allow_query"`` -> egress)."""
        section = key.split(".", 1)[0].lower()
        self.policy_refusals.labels(
            reason=section if _SECTION.fullmatch(section) else "other"
        ).inc()

    def set_connected(self, connected: bool) -> None:
        """Subscribed (True) or not (False)."""
        self.connected.set(1 if connected else 0)

    def close(self) -> None:
        """Release what the scrape-time readings hold open."""
        self._close_budget()

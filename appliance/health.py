"""The standard gRPC health service (``grpc.health.v1.Health``) for process probes.

Why a separate service: Docker's ``HEALTHCHECK``, Kubernetes' probes and an
operator's scripts need to ask "is this process up and doing its job?" without
holding a federation certificate. The Fleet and Control APIs admit mTLS clients
only, so the health service runs on its own plain-text gRPC server that answers
nothing but ``Health/Check`` and ``Health/Watch``: one status word, no data, no
names. Bind it to loopback (``127.0.0.1:PORT``) or a pod-local address; a probe
runs inside the container or host, so nothing outside needs to reach it.

- :class:`HealthServer`: the plain-text server; the owner calls
  :meth:`HealthServer.set_serving` as its state changes. It starts NOT_SERVING.
- :func:`add_health_servicer`: the same servicer on a server of the caller's.
- :func:`check`: the probe (``greenhouse health ADDRESS``).
"""

from __future__ import annotations

import enum
import ipaddress
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from appliance.errors import ApplianceError
from appliance.logs import get_logger

__all__ = [
    "HealthError",
    "HealthServer",
    "HealthStatus",
    "add_health_servicer",
    "check",
    "is_loopback",
]

_log = get_logger("appliance.health")
#: The service name probes ask for by default: the whole process.
OVERALL = ""
# A probe never goes through an HTTP proxy from the environment.
_PROBE_OPTIONS = [("grpc.enable_http_proxy", 0)]


class HealthError(ApplianceError):
    """A health probe got no status: nothing listens, no answer in time, not a health server."""


class HealthStatus(enum.Enum):
    """The statuses of ``grpc.health.v1.HealthCheckResponse``."""

    UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN
    SERVING = health_pb2.HealthCheckResponse.SERVING
    NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
    SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def add_health_servicer(server: grpc.Server) -> health.HealthServicer:
    """Register a Health servicer on ``server``, NOT_SERVING until the owner says otherwise.

    Returns the servicer; set the status with ``servicer.set("", SERVING)`` or use
    :class:`HealthServer`, which wraps exactly this.
    """
    servicer = health.HealthServicer()
    servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names a loopback host (``127.0.0.0/8``, ``[::1]``, localhost)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HealthServer:
    """A plain-text gRPC server that serves only ``grpc.health.v1.Health`` on ``address``.

    Call :meth:`start`, then :meth:`set_serving` as the process's state changes,
    and :meth:`stop` at the end (it reports NOT_SERVING first).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        # Check is one lock and a dict lookup; Watch streams do not hold a worker.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
            maximum_concurrent_rpcs=64,
            # A second process on the same port is an error, not a silent share.
            options=[("grpc.so_reuseport", 0)],
        )
        self._servicer = add_health_servicer(self._server)

    def start(self) -> int:
        """Bind and serve; return the bound port (useful with port 0)."""
        if not is_loopback(self.address):
            _log.warning(
                "health service bound beyond loopback; keep it pod- or host-local",
                address=self.address,
            )
        try:
            self.port = int(self._server.add_insecure_port(self.address))
        except RuntimeError as exc:
            raise HealthError(f"cannot bind the health service to {self.address}: {exc}") from None
        self._server.start()
        _log.info("health service listening", address=self.address, port=self.port)
        return self.port

    def set_serving(self, serving: bool) -> None:
        """Report SERVING (``True``) or NOT_SERVING (``False``) to every probe."""
        status = HealthStatus.SERVING if serving else HealthStatus.NOT_SERVING
        self._servicer.set(OVERALL, status.value)

    def stop(self, grace_s: float = 0.5) -> None:
        """Report NOT_SERVING for good, then stop serving."""
        self._servicer.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()


def check(
    address: str,
    *,
    timeout_s: float,
    tls: grpc.ChannelCredentials | None = None,
    service: str = OVERALL,
) -> HealthStatus:
    """Ask the health service at ``address`` for ``service``'s status.

    Args:
        address: ``HOST:PORT`` of a health service.
        timeout_s: the whole probe's deadline.
        tls: channel credentials for a server that serves Health over TLS;
            ``None`` for Greenhouse's plain-text health service.
        service: the service name; ``""`` is the whole process.

    Raises:
        HealthError: no status came back; the message is one line saying why.
    """
    if timeout_s <= 0:
        raise HealthError(f"the probe timeout must be positive, not {timeout_s:g} s")
    if tls is None:
        channel = grpc.insecure_channel(address, options=_PROBE_OPTIONS)
    else:
        channel = grpc.secure_channel(address, tls, options=_PROBE_OPTIONS)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise HealthError(_why(exc, address, timeout_s, service)) from None
    try:
        return HealthStatus(reply.status)
    except ValueError:
        return HealthStatus.UNKNOWN


def _why(exc: grpc.RpcError, address: str, timeout_s: float, service: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else ""
    detail = " ".join(str(detail or "").split())  # one line
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no health answer from {address} within {timeout_s:g} s"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach a health service at {address}: {detail or 'unavailable'}"
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return f"{address} does not serve grpc.health.v1.Health"
    if code is grpc.StatusCode.NOT_FOUND:
        return f"{address} does not know the service {service!r}"
    name = code.name if code is not None else "ERROR"
    return f"health check of {address} failed: {name}: {detail}"

"""The gRPC health service and its probe, against real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from appliance.cli import main as cli_main
from appliance.cli.health import health_service
from appliance.errors import ApplianceError
from appliance.health import (
    HealthError,
    HealthServer,
    HealthStatus,
    add_health_servicer,
    check,
    is_loopback,
)


@pytest.fixture
def server() -> Iterator[HealthServer]:
    health = HealthServer("127.0.0.1:0")
    health.start()
    try:
        yield health
    finally:
        health.stop(grace_s=0)


def _address(server: HealthServer) -> str:
    return f"127.0.0.1:{server.port}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_a_new_server_is_not_serving_until_told(server):
    assert server.port > 0
    assert check(_address(server), timeout_s=5) is HealthStatus.NOT_SERVING
    server.set_serving(True)
    assert check(_address(server), timeout_s=5) is HealthStatus.SERVING
    server.set_serving(False)
    assert check(_address(server), timeout_s=5) is HealthStatus.NOT_SERVING


def test_watchers_see_every_change(server):
    with grpc.insecure_channel(_address(server)) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        first = next(stream)
        server.set_serving(True)
        second = next(stream)
        stream.cancel()
    assert HealthStatus(first.status) is HealthStatus.NOT_SERVING
    assert HealthStatus(second.status) is HealthStatus.SERVING


def test_a_stopped_server_cannot_be_reached():
    health = HealthServer("127.0.0.1:0")
    port = health.start()
    health.set_serving(True)
    health.stop(grace_s=0)
    with pytest.raises(
        HealthError, match=re.escape(f"cannot reach a health service at 127.0.0.1:{port}")
    ):
        check(f"127.0.0.1:{port}", timeout_s=5)


def test_nothing_listening_is_one_clear_line():
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(HealthError) as caught:
        check(address, timeout_s=5)
    message = str(caught.value)
    assert address in message
    assert "\n" not in message
    assert isinstance(caught.value, ApplianceError)


def test_a_server_without_the_health_service_is_named():
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(HealthError, match=r"does not serve grpc\.health\.v1\.Health"):
            check(f"127.0.0.1:{port}", timeout_s=5)
    finally:
        server.stop(0)


def test_an_unknown_service_is_named(server):
    with pytest.raises(HealthError, match=r"does not know the service 'greenhouse\.nope'"):
        check(_address(server), timeout_s=5, service="greenhouse.nope")


def test_a_silent_peer_times_out():
    # A listening socket that never answers: the TCP connect succeeds, HTTP/2 never does.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        with pytest.raises(
            HealthError, match=rf"no health answer from 127\.0\.0\.1:{port} within 0\.3 s"
        ):
            check(f"127.0.0.1:{port}", timeout_s=0.3)


def test_a_non_positive_timeout_is_refused(server):
    with pytest.raises(HealthError, match="timeout must be positive"):
        check(_address(server), timeout_s=0)


def test_the_servicer_can_live_on_an_owners_server():
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    servicer = add_health_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert check(f"127.0.0.1:{port}", timeout_s=5) is HealthStatus.NOT_SERVING
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert check(f"127.0.0.1:{port}", timeout_s=5) is HealthStatus.SERVING
    finally:
        server.stop(0)


def _self_signed() -> tuple[bytes, bytes]:
    """A throwaway server certificate for 127.0.0.1 and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "health-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_the_probe_speaks_tls_to_a_tls_health_server():
    cert, key = _self_signed()
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    servicer = add_health_servicer(server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        assert check(address, timeout_s=5, tls=tls) is HealthStatus.SERVING
        with pytest.raises(HealthError, match=re.escape(address)):
            check(address, timeout_s=5)  # plain text to a TLS server: no status
    finally:
        server.stop(0)


def test_a_taken_port_is_a_health_error(server):
    other = HealthServer(_address(server))
    try:
        with pytest.raises(
            HealthError, match=re.escape(f"cannot bind the health service to {_address(server)}")
        ):
            other.start()
    finally:
        other.stop(grace_s=0)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:9094", True),
        ("127.0.0.2:9094", True),
        ("localhost:9094", True),
        ("[::1]:9094", True),
        ("0.0.0.0:9094", False),
        ("[::]:9094", False),
        ("10.1.2.3:9094", False),
        ("superlink:9094", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_health_service_block_serves_then_stops():
    port = _closed_port()
    address = f"127.0.0.1:{port}"
    with health_service(address) as set_serving:
        assert check(address, timeout_s=5) is HealthStatus.NOT_SERVING
        set_serving(True)
        assert check(address, timeout_s=5) is HealthStatus.SERVING
    with pytest.raises(HealthError):
        check(address, timeout_s=5)


def test_no_address_means_no_server():
    with health_service(None) as set_serving:
        set_serving(True)  # accepted and ignored


# -- the CLI probe ---------------------------------------------------------------------


def test_cli_prints_serving_and_exits_zero(server):
    server.set_serving(True)
    code, out, err = _cli("health", _address(server), "--timeout", "5")
    assert (code, out, err) == (0, "SERVING\n", "")


def test_cli_not_serving_is_one_line_and_non_zero(server):
    code, out, err = _cli("health", _address(server))
    assert code == 1
    assert out == ""
    assert err == f"greenhouse: error: {_address(server)} is NOT_SERVING\n"


def test_cli_live_accepts_not_serving(server):
    code, out, _ = _cli("health", _address(server), "--live")
    assert (code, out) == (0, "NOT_SERVING\n")


def test_cli_unreachable_is_one_line_and_non_zero():
    address = f"127.0.0.1:{_closed_port()}"
    code, out, err = _cli("health", address, "--timeout", "5", "--live")
    assert code == 1
    assert out == ""
    assert err.startswith(f"greenhouse: error: cannot reach a health service at {address}")
    assert err.count("\n") == 1

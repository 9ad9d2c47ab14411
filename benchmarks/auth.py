"""Per-call cost of mTLS + AuthInterceptor + request signatures, and Ed25519 verifies/s.

Usage::

    python benchmarks/auth.py                  # 2000 calls per configuration
    python benchmarks/auth.py --calls 500 --rounds 5
    python benchmarks/auth.py --same-process   # server in this process (shares the GIL)

One small unary call (64-byte body, raw-bytes handlers) is timed on 127.0.0.1,
with the server in a separate process (as deployed), over four configurations:

1. insecure channel, no interceptor (the baseline);
2. mutual TLS (ReloadingServerCredentials), no interceptor;
3. mutual TLS + AuthInterceptor (CRL file checked per call), a user caller (unsigned);
4. mutual TLS + AuthInterceptor + signed node request (SigningInterceptor on the
   client; Ed25519 verification, replay window and nonce cache on the server).

The configurations run in interleaved rounds and each figure is the median of the
round means, so load drift on a shared machine hits them alike. It prints the
latency per call, its ratio to the baseline, and what the interceptor and the
signatures add to plain mTLS. Then, without any network, the CPU cost of Ed25519
verification (OpenSSL and libsodium), of the server's full admission of one call
and of client-side signing. Loops are bounded; every server is stopped on exit.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.signing import VerifyKey

from certs import (
    AuthInterceptor,
    CertificateAuthority,
    CrlFile,
    EnvelopeKind,
    EnvelopeSigner,
    ReloadingServerCredentials,
    Role,
    ServerTLSFiles,
    SigningInterceptor,
    allow,
    certificate_pem,
    client_credentials,
    create_request,
    load_certificate,
    load_csr,
    load_signing_key,
    verify_envelope,
    write_server_files,
)
from certs.files import write_atomic

NODE_METHOD = "/bench.Echo/Node"
USER_METHOD = "/bench.Echo/User"
BODY = bytes(range(64))


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    directory: Path

    def party(self, name: str, role: Role) -> tuple[grpc.ChannelCredentials, Path]:
        files = create_request(self.directory / name, name=name, organization=None, role=role)
        cert = self.ca.sign(load_csr(files.csr), role=role, actor="bench")
        cert_path = write_atomic(
            self.directory / name / "cert.pem", certificate_pem(cert), mode=0o644, overwrite=True
        )
        creds = client_credentials(
            ca_certificate=self.directory / "ca" / "ca.pem",
            certificate=cert_path,
            key=files.tls_key,
        )
        return creds, files.signing_key


def _make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority.init(directory / "ca", name="Bench", passphrase=None, actor="bench")
    crl = ca.crl(actor="bench")
    write_atomic(
        directory / "ca" / "crl.pem", crl.public_bytes(Encoding.PEM), mode=0o644, overwrite=False
    )
    return Pki(ca, directory)


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _start_server(mode: str, directory: Path) -> tuple[grpc.Server, int]:
    """Start the echo server: ``insecure``, ``mtls`` or ``mtls+auth``."""
    interceptors: list[grpc.ServerInterceptor] = []
    if mode == "mtls+auth":
        ca_cert = load_certificate(directory / "ca" / "ca.pem")
        interceptors.append(
            AuthInterceptor(
                {NODE_METHOD: allow(Role.NODE), USER_METHOD: allow(Role.DATA_SCIENTIST)},
                ca_cert=ca_cert,
                crl_source=CrlFile(directory / "ca" / "crl.pem", ca_cert=ca_cert),
                is_enrolled=lambda identity: True,
            )
        )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    handlers = {
        m.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(_echo)
        for m in (NODE_METHOD, USER_METHOD)
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    if mode == "insecure":
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        tls = ServerTLSFiles(
            certificate=directory / "tls" / "server.pem",
            key=directory / "tls" / "server.key",
            ca_certificate=directory / "tls" / "ca.pem",
        )
        port = server.add_secure_port("127.0.0.1:0", ReloadingServerCredentials(tls).credentials())
    server.start()
    return server, port


def _serve(mode: str, directory: str, conn: Connection) -> None:
    """Child process: serve until the parent says stop (or goes away)."""
    server, port = _start_server(mode, Path(directory))
    try:
        conn.send(port)
        conn.poll(600)  # bounded: never outlive the benchmark by more than 10 minutes
    finally:
        server.stop(grace=None).wait(5)


@contextmanager
def _server(mode: str, directory: Path, *, separate_process: bool) -> Iterator[str]:
    if not separate_process:
        server, port = _start_server(mode, directory)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(grace=None).wait(5)
        return
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(mode, str(directory), child), daemon=True
    )
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("benchmark server did not start")
        yield f"127.0.0.1:{parent.recv()}"
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


def _time_calls(stub: grpc.UnaryUnaryMultiCallable, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        stub(BODY, timeout=10)
    return (time.perf_counter() - start) / calls


def _per_second(operation: Callable[[], object], seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            operation()
        count += 100
    return count / (time.perf_counter() - start)


def bench_calls(pki: Pki, calls: int, rounds: int, *, separate_process: bool) -> dict[str, float]:
    """Median over ``rounds`` interleaved rounds of mean ms/call per configuration."""
    key, cert = pki.ca.issue_server(
        hosts=["localhost"], ips=[ip_address("127.0.0.1")], actor="bench"
    )
    write_server_files(
        pki.directory / "tls", key=key, certificate=cert, ca_certificate=pki.ca.certificate
    )
    user_creds, _ = pki.party("alice", Role.DATA_SCIENTIST)
    node_creds, node_key_path = pki.party("st-marys", Role.NODE)
    signer = SigningInterceptor(load_signing_key(node_key_path))
    runs = [
        ("insecure", "insecure", None, USER_METHOD, False),
        ("mtls", "mtls", user_creds, USER_METHOD, False),
        ("mtls+auth", "mtls+auth", user_creds, USER_METHOD, False),
        ("mtls+auth+signature", "mtls+auth", node_creds, NODE_METHOD, True),
    ]
    samples: dict[str, list[float]] = {label: [] for label, *_ in runs}
    with ExitStack() as stack:
        targets = {
            mode: stack.enter_context(
                _server(mode, pki.directory, separate_process=separate_process)
            )
            for mode in ("insecure", "mtls", "mtls+auth")
        }
        stubs = {}
        for label, mode, creds, method, signed in runs:
            channel = stack.enter_context(
                grpc.insecure_channel(targets[mode])
                if creds is None
                else grpc.secure_channel(targets[mode], creds)
            )
            used = grpc.intercept_channel(channel, signer) if signed else channel
            stubs[label] = used.unary_unary(method)
            _time_calls(stubs[label], min(200, calls))  # warm up: connection and caches
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            for label, stub in stubs.items():
                samples[label].append(_time_calls(stub, per_round))
    return {label: statistics.median(values) for label, values in samples.items()}


class _FakeContext:
    """Just enough of a ServicerContext for :meth:`AuthInterceptor.admit`."""

    def __init__(self, pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [pem]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def bench_local(pki: Pki, count: int) -> dict[str, float]:
    files = create_request(pki.directory / "local", name="local", organization=None, role=Role.NODE)
    cert = pki.ca.sign(load_csr(files.csr), role=Role.NODE, actor="bench")
    key = load_signing_key(files.signing_key)
    public_key = key.public_key()
    public = public_key.public_bytes_raw()
    signer = EnvelopeSigner(key)
    envelope = signer.sign(kind=EnvelopeKind.REQUEST, method=NODE_METHOD, body=BODY)
    signed_bytes = envelope.signed_bytes()
    verify_key = VerifyKey(public)
    results = {
        "openssl_verify_per_s": _per_second(
            lambda: public_key.verify(envelope.signature, signed_bytes)
        ),
        "sodium_verify_per_s": _per_second(
            lambda: verify_key.verify(signed_bytes, envelope.signature)
        ),
        "envelope_verify_per_s": _per_second(
            lambda: verify_envelope(
                envelope,
                body=BODY,
                signing_key=public,
                kind=EnvelopeKind.REQUEST,
                method=NODE_METHOD,
            )
        ),
    }
    guard = AuthInterceptor(
        {NODE_METHOD: allow(Role.NODE)},
        ca_cert=pki.ca.certificate,
        crl_source=CrlFile(pki.directory / "ca" / "crl.pem", ca_cert=pki.ca.certificate),
    )
    context = _FakeContext(certificate_pem(cert))
    envelopes = [
        signer.sign(kind=EnvelopeKind.REQUEST, method=NODE_METHOD, body=BODY) for _ in range(count)
    ]
    start = time.perf_counter()
    for signed in envelopes:
        guard.admit(
            context,
            NODE_METHOD,
            envelope=signed,
            body=BODY,
            kind=EnvelopeKind.REQUEST,
        )
    results["admit_s"] = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for _ in range(count):
        signer.sign(kind=EnvelopeKind.REQUEST, method=NODE_METHOD, body=BODY)
    results["sign_s"] = (time.perf_counter() - start) / count
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per configuration")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (median)")
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run the server in this process (shares the GIL with the client)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = _make_pki(Path(tmp))
        calls = bench_calls(pki, args.calls, args.rounds, separate_process=not args.same_process)
        local = bench_local(pki, args.calls)
    _report(calls, local, args)


def _report(calls: dict[str, float], local: dict[str, float], args: argparse.Namespace) -> None:
    base = calls["insecure"]
    where = "one process" if args.same_process else "server in a separate process"
    print(f"unary call, {len(BODY)}-byte body, {args.calls} calls per configuration in")
    print(f"{args.rounds} interleaved rounds; median of round means ({where}, 127.0.0.1)")
    for name, seconds in calls.items():
        print(f"  {name:<22} {seconds * 1e3:7.3f} ms/call   x{seconds / base:5.2f} vs insecure")
    unsigned = (calls["mtls+auth"] - calls["mtls"]) * 1e3
    signed = (calls["mtls+auth+signature"] - calls["mtls"]) * 1e3
    print(f"  added to plain mTLS by the interceptor (user, unsigned): {unsigned:+.3f} ms/call")
    print(f"  added to plain mTLS by interceptor + signatures        : {signed:+.3f} ms/call")
    print("    (aim < 0.3 ms; includes client-side signing and gRPC's client interceptor)")
    print("without network (CPU cost per operation):")
    rows = [
        ("Ed25519 verify, OpenSSL (cryptography)", f"{local['openssl_verify_per_s']:,.0f} /s"),
        ("Ed25519 verify, libsodium (pynacl)", f"{local['sodium_verify_per_s']:,.0f} /s"),
        ("envelope verify (digest, key, signature)", f"{local['envelope_verify_per_s']:,.0f} /s"),
        ("server admission (cert, CRL, role, sig, nonce)", f"{local['admit_s'] * 1e6:.1f} us"),
        ("client signing (SignedEnvelope)", f"{local['sign_s'] * 1e6:.1f} us"),
    ]
    for label, value in rows:
        print(f"  {label:<48} {value:>12}")


if __name__ == "__main__":
    main()

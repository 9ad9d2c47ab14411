"""The SuperLink process: Fleet, Control and AppIo APIs over one persistent state.

Composition only. Every Fleet and Control call passes the error translator and the
``certs`` auth interceptor (mTLS identity, role per method — unlisted methods are
refused — CRL on every call, enrolment for nodes, signed node requests). The AppIo
API listens on 127.0.0.1 only and admits a ServerApp by its run's secret token.

At start the state is recovered (every in-flight run of a previous process is
failed with "superlink restarted", every node offline). A sweeper answers, on the
nodes' behalf, requests whose TTL ran out and requests held by a node that stayed
offline longer than the grace period, so a ServerApp learns of a dead node within
seconds instead of waiting for its whole timeout. :meth:`SuperLink.stop` (SIGTERM)
fails the runs in flight with "superlink shut down" before it signs the audit
log's last tree head; :meth:`SuperLink.reload_credentials` (SIGHUP) re-reads the
TLS files and the CRL at once. Metrics (``appliance.metrics``) are counted here and
in the interceptors; the state is read for them at scrape time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from appliance.logs import get_logger
from appliance.message import ErrorCode
from appliance.metrics import FleetByteMeter, SuperLinkMetrics
from appliance.proto import appio_pb2_grpc, control_pb2_grpc
from appliance.state import AlreadyReplied, RunStatus, State
from appliance.superlink.appio import AppIoServicer
from appliance.superlink.audit_trail import AuditSettings, SuperLinkAudit, sink_for
from appliance.superlink.control import ControlServicer
from appliance.superlink.errors import ErrorTranslator
from appliance.superlink.fleet import FleetServicer, add_fleet_to_server
from appliance.superlink.hub import Hub
from appliance.superlink.privacy import PrivacyTracker
from appliance.superlink.runs import RunLauncher
from certs import (
    AuthInterceptor,
    CertError,
    CrlFile,
    Identity,
    ReloadingServerCredentials,
    RevocationList,
    Role,
    ServerTLSFiles,
    allow,
    load_certificate,
)
from certs.grpc_auth import Refusal
from certs.signing import RequestVerifier
from certs.unsafe_dev import UnsafeHeaderAuthInterceptor
from certs.verify import expiry_warning, verify_certificate

__all__ = [
    "CONTROL_METHODS",
    "FLEET_METHODS",
    "INSECURE_BANNER",
    "SHUTDOWN_REASON",
    "SuperLink",
    "SuperLinkConfig",
]

INSECURE_BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  GREENHOUSE SUPERLINK IN --insecure MODE: FOR DEVELOPMENT ONLY                   !!
!!  No TLS, no certificates, no signatures: anyone who reaches these ports can      !!
!!  claim to be any node or user. Never use it with real data. (Recorded in state.) !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""

_log = get_logger("appliance.superlink")
#: Why the runs in flight failed when the SuperLink was stopped (SIGTERM).
SHUTDOWN_REASON = "superlink shut down"
_FLEET = "/greenhouse.fleet.v1.Fleet/"
_CONTROL = "/greenhouse.control.v1.Control/"
FLEET_METHODS = {
    _FLEET + name: allow(Role.NODE)
    for name in (
        "Hello",
        "Subscribe",
        "PullMessage",
        "PushReply",
        "PushWholeReply",
        "GetBundle",
        "Cosign",
        "SendReceipt",
    )
}
_READERS = (Role.DATA_SCIENTIST, Role.AUDITOR, Role.FEDERATION_ADMIN)
CONTROL_METHODS = {
    _CONTROL + "SubmitRun": allow(Role.DATA_SCIENTIST),
    _CONTROL + "ListRuns": allow(*_READERS),
    _CONTROL + "StreamLogs": allow(*_READERS),
    _CONTROL + "StopRun": allow(Role.DATA_SCIENTIST, Role.FEDERATION_ADMIN),
    _CONTROL + "AddNode": allow(Role.FEDERATION_ADMIN),
    _CONTROL + "RemoveNode": allow(Role.FEDERATION_ADMIN),
    _CONTROL + "ListNodes": allow(Role.FEDERATION_ADMIN, Role.AUDITOR),
    _CONTROL + "ListArtifacts": allow(*_READERS),
    _CONTROL + "GetArtifact": allow(*_READERS),
    _CONTROL + "ListAudit": allow(Role.AUDITOR),
}


@dataclass(frozen=True)
class SuperLinkConfig:
    """Everything a SuperLink needs to start."""

    ca_certificate: Path | None
    certificate: Path | None
    key: Path | None
    data_dir: Path
    crl: Path | None = None
    database: str | None = None
    fleet_address: str = "127.0.0.1:9092"
    control_address: str = "127.0.0.1:9093"
    appio_host: str = "127.0.0.1"
    max_message_bytes: int = 2 * 2**30
    #: Bytes of handed-out message bodies kept as files to overwrite (BlobStore).
    spare_body_bytes: int = 2**30
    keepalive_s: float = 5.0
    node_grace_s: float = 3.0
    replay_window_s: float = 60.0
    sweep_interval_s: float = 0.5
    max_workers: int = 128
    audit: AuditSettings = field(default_factory=AuditSettings)
    #: DEVELOPMENT ONLY: no TLS, identities claimed in a header, unsigned replies.
    unsafe_insecure: bool = False


def _grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    # Bodies are chunked (appliance.transport), so per-message limits stay small.
    return [
        ("grpc.max_receive_message_length", 8 * 2**20),
        ("grpc.max_send_message_length", 8 * 2**20),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Without this, gRPC grows each stream's receive window towards the whole
        # body, and the SuperLink's memory towards nodes x model (measured).
        ("grpc.http2.bdp_probe", 0),
    ]


def _no_revocations() -> RevocationList:
    now = datetime.now(UTC)
    return RevocationList(serials=frozenset(), this_update=now, next_update=now + timedelta(days=1))


class SuperLink:
    """A running SuperLink. Call :meth:`start`, later :meth:`stop`."""

    def __init__(self, config: SuperLinkConfig) -> None:
        self.config = config
        self.state = State.open(
            config.database, data_dir=config.data_dir, spare_bytes=config.spare_body_bytes
        )
        try:
            self.audit = SuperLinkAudit(self.state, config.audit, data_dir=config.data_dir)
        except BaseException:
            self.state.close()
            raise
        self.metrics = SuperLinkMetrics(
            runs=lambda: (run.status.value for run in self.state.list_runs()),
            statuses=(status.value for status in RunStatus),
            nodes=lambda: (len(self.state.online_node_ids()), len(self.state.list_nodes())),
            audit_entries=lambda: self.audit.log.size,
        )
        self.state.attach_audit(self.metrics.audit_tap(sink_for(self.audit.log)))
        if config.unsafe_insecure:
            self._init_insecure()
        else:
            self._init_tls(config)
        self.hub = Hub()
        self._offline_since: dict[int, float] = {}
        self._offline_lock = threading.Lock()
        self._stopping = threading.Event()
        self._servers: tuple[grpc.Server, grpc.Server, grpc.Server] | None = None
        self._sweeper: threading.Thread | None = None
        self.fleet_port = self.control_port = self.appio_port = 0

    def _init_insecure(self) -> None:
        print(INSECURE_BANNER, file=sys.stderr, flush=True)
        _log.warning("INSECURE MODE: no TLS, no certificates, no signatures; development only")
        self.state.record_event("superlink.insecure", {"pid": os.getpid()}, audited=True)
        self._tls = None
        self._crl = _no_revocations

    def _init_tls(self, config: SuperLinkConfig) -> None:
        if config.ca_certificate is None or config.certificate is None or config.key is None:
            raise ValueError(
                "a SuperLink needs --ca, --cert and --key (or --insecure for development)"
            )
        self._ca_cert = load_certificate(config.ca_certificate)
        self._tls = ReloadingServerCredentials(
            ServerTLSFiles(
                certificate=config.certificate, key=config.key, ca_certificate=config.ca_certificate
            )
        )
        if config.crl is not None:
            self._crl = CrlFile(config.crl, ca_cert=self._ca_cert)
        else:
            _log.warning("no CRL configured: revoked certificates cannot be refused; pass --crl")
            self._crl = _no_revocations  # type: ignore[assignment]

    # -- helpers used by the servicers -------------------------------------------------

    def _is_enrolled(self, identity: Identity) -> bool:
        if identity.role is not Role.NODE:
            return True
        if self.state.enrolment(identity.certificate_fingerprint) is not None:
            return True
        if self.config.unsafe_insecure:  # development: a claimed node enrols itself
            fake_key = hashlib.sha256(f"unsafe:{identity.name}".encode()).hexdigest()
            self.state.enrol_node(
                identity.name,
                identity.certificate_fingerprint,
                fake_key,
                enrolled_by="insecure-mode",
            )
            return True
        return False

    def _still_admitted(self, identity: Identity) -> str | None:
        """Why a connected node must be cut off now (revoked, removed), or None."""
        try:
            if self._crl().is_revoked(identity.serial):
                return f"certificate {identity.serial_hex} of {identity.name} was revoked"
        except CertError as exc:
            return f"revocation status unknown: {exc}"
        if not self._is_enrolled(identity):
            return f"node {identity.name} is no longer enrolled"
        return None

    def _check_node_certificate(self, pem: bytes) -> Identity:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise ValueError(f"not a PEM certificate: {exc}") from None
        return verify_certificate(
            cert,
            ca_cert=self._ca_cert,
            now=datetime.now(UTC),
            revocations=self._crl(),
            roles={Role.NODE},
        )

    def _node_went_offline(self, node_id: int) -> None:
        with self._offline_lock:
            self._offline_since.setdefault(node_id, time.monotonic())

    # -- lifecycle -----------------------------------------------------------------------

    def _server(self, name: str, *interceptors: grpc.ServerInterceptor) -> grpc.Server:
        return grpc.server(
            ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix=name),
            options=_grpc_options(self.config.max_message_bytes),
            interceptors=list(interceptors),
            maximum_concurrent_rpcs=self.config.max_workers * 4,
        )

    def start(self) -> None:
        """Recover the state, bind the three APIs and start the sweeper."""
        recovery = self.state.recover_after_restart()  # audited: run.failed per run
        if recovery.failed_run_ids:
            _log.warning("runs failed by the restart", run_ids=list(recovery.failed_run_ids))
        for run_id in recovery.failed_run_ids:
            self.state.release_run_bodies(run_id)
        if self._tls is not None:
            warning = expiry_warning(self._tls.certificate, datetime.now(UTC))
            if warning:
                _log.warning("server certificate expiring", detail=warning)
        cfg = self.config
        appio = self._server("appio")
        self.appio_port = appio.add_insecure_port(f"{cfg.appio_host}:0")
        self.privacy = PrivacyTracker(self.state)
        self.launcher = RunLauncher(
            self.state,
            self.hub,
            runs_dir=cfg.data_dir.resolve() / "runs",
            appio_address=f"{cfg.appio_host}:{self.appio_port}",
            max_message_bytes=cfg.max_message_bytes,
            on_run_ended=self._run_ended,
        )
        self._appio = AppIoServicer(
            self.state,
            self.hub,
            self.launcher,
            max_message_bytes=cfg.max_message_bytes,
            on_offline_destination=self._node_went_offline,
            privacy=self.privacy,
        )
        appio_pb2_grpc.add_AppIoServicer_to_server(self._appio, appio)
        verifier = RequestVerifier(window_s=cfg.replay_window_s)
        meter = FleetByteMeter(self.metrics.fleet_received_bytes, self.metrics.fleet_sent_bytes)
        fleet = self._secure_server("fleet", FLEET_METHODS, verifier, meter)
        add_fleet_to_server(
            FleetServicer(
                self.state,
                self.hub,
                verifier=verifier,
                keepalive_s=cfg.keepalive_s,
                max_message_bytes=cfg.max_message_bytes,
                on_disconnect=self._node_went_offline,
                still_admitted=self._still_admitted,
                audit=self.audit,
                unsafe_unsigned_replies=cfg.unsafe_insecure,
            ),
            fleet,
        )
        self.fleet_port = self._bind(fleet, cfg.fleet_address)
        control = self._secure_server("control", CONTROL_METHODS, verifier)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlServicer(
                self.state,
                self.launcher,
                check_node_certificate=self._check_node_certificate,
                audit_log=self.audit.log,
                privacy=self.privacy,
            ),
            control,
        )
        self.control_port = self._bind(control, cfg.control_address)
        for server in (appio, fleet, control):
            server.start()
        self._servers = (fleet, control, appio)
        self.state.record_event(
            "superlink.started",
            {
                "pid": os.getpid(),
                "fleet_port": self.fleet_port,
                "control_port": self.control_port,
                "backend": self.state.backend,
                "insecure": cfg.unsafe_insecure,
                "audit_vkey": self.audit.verifier_key.encode(),
            },
            audited=True,
        )
        self.audit.sign_now()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()
        _log.info(
            "superlink started",
            fleet=self.fleet_port,
            control=self.control_port,
            appio=self.appio_port,
            backend=self.state.backend,
        )

    def _bind(self, server: grpc.Server, address: str) -> int:
        if self._tls is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, self._tls.credentials()))

    def _secure_server(
        self,
        name: str,
        methods: dict[str, object],
        verifier: RequestVerifier,
        *outer: grpc.ServerInterceptor,
    ) -> grpc.Server:
        auth: AuthInterceptor
        if self._tls is None:
            auth = UnsafeHeaderAuthInterceptor(methods, is_enrolled=self._is_enrolled)  # type: ignore[arg-type]
            return self._server(name, *outer, ErrorTranslator(), auth)
        auth = AuthInterceptor(
            methods,  # type: ignore[arg-type]
            ca_cert=self._ca_cert,
            crl_source=self._crl,
            is_enrolled=self._is_enrolled,
            request_verifier=verifier,
            on_refusal=self._refused,
        )
        return self._server(name, *outer, ErrorTranslator(), auth)

    def _run_ended(self, run_id: int) -> None:
        """A run ended: drop its upload holds; sign a tree head now, so its record is
        witnessed without delay."""
        self._appio.forget_run(run_id)
        self.audit.sign_now()

    def _refused(self, refusal: Refusal) -> None:
        _log.warning(
            "call refused", method=refusal.method, peer=refusal.peer, reason=refusal.reason
        )
        self.metrics.refused(refusal.method, refusal.reason)
        self.audit.refused(refusal)

    def reload_credentials(self) -> None:
        """Re-read the server certificate, key, CA and CRL now (SIGHUP); log what changed.

        A file that cannot be used is logged and the material in force stays: the
        SuperLink keeps serving either way. Between SIGHUPs the files are still
        re-read when they change (at the next handshake, or call for the CRL).
        """
        if self._tls is None:
            _log.warning("SIGHUP: insecure mode has no certificates or CRL to reload")
            return
        try:
            change = self._tls.reload()
        except CertError as exc:
            _log.error(
                "SIGHUP: server TLS files NOT reloaded; the previous ones stay", error=str(exc)
            )
        else:
            _log.warning(
                "SIGHUP: server certificate reloaded",
                changed=change.certificate_changed,
                serial=f"{change.current.serial_number:x}",
                previous_serial=f"{change.previous.serial_number:x}",
                not_after=change.current.not_valid_after_utc.isoformat(),
            )
            if change.ca_changed:
                _log.error(
                    "SIGHUP: the CA file holds another CA certificate; TLS handshakes use it, "
                    "but callers and the CRL are still judged against the CA this SuperLink "
                    "started with: restart it to change the federation CA"
                )
        if isinstance(self._crl, CrlFile):
            try:
                crl = self._crl.reload()
            except CertError as exc:
                _log.error("SIGHUP: CRL NOT reloaded; the previous one stays", error=str(exc))
            else:
                _log.warning(
                    "SIGHUP: CRL reloaded",
                    revoked=len(crl.serials),
                    this_update=crl.this_update.isoformat(),
                    next_update=crl.next_update.isoformat(),
                )

    def stop(self, grace_s: float = 2.0) -> None:
        """Fail the runs in flight, stop serving, sign a last tree head, close the state.

        Order: the Control API stops first (no new runs); every ServerApp is stopped
        and its run fails with :data:`SHUTDOWN_REASON` (audited as ``run.failed``,
        and the nodes are told the run ended); runs without a process fail the same
        way; then the Fleet and AppIo APIs stop and the audit log's final tree head
        is signed.
        """
        self._stopping.set()
        fleet, control, appio = self._servers or (None, None, None)
        if control is not None:
            control.stop(grace_s).wait()
        if hasattr(self, "launcher"):
            self.launcher.shutdown(SHUTDOWN_REASON)
            self._fail_in_flight()
        for server in (fleet, appio):  # within the grace, node streams pass on "run ended"
            if server is not None:
                server.stop(grace_s).wait()
        self.hub.close_all()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        if hasattr(self, "privacy"):
            self.privacy.close()
        try:
            self.audit.close()
        except Exception:
            _log.exception("final audit tree head not signed")
        self.state.close()
        _log.info("superlink stopped")

    def _fail_in_flight(self) -> None:
        """Fail the runs no ServerApp settled (not started yet, or not settled in time)."""
        try:
            failed = self.state.fail_in_flight_runs(SHUTDOWN_REASON)  # audited: run.failed
        except Exception:
            _log.exception("runs in flight not failed at shutdown (the next start fails them)")
            return
        for run_id in failed:
            try:
                self.state.release_run_bodies(run_id)
            except Exception:
                _log.exception("could not release the run's message bodies", run_id=run_id)
        if failed:
            _log.warning("runs failed by the shutdown", run_ids=failed)

    def wait(self) -> None:
        """Block until :meth:`stop` or :meth:`stop_async` is called."""
        self._stopping.wait()

    def stop_async(self) -> None:
        """Ask :meth:`wait` to return (safe in a signal handler); then call :meth:`stop`."""
        self._stopping.set()

    # -- sweeping ------------------------------------------------------------------------

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self.config.sweep_interval_s):
            try:
                self._sweep()
            except Exception:
                _log.exception("sweep failed")

    def _answer(self, request_id: str, run_id: int, code: ErrorCode, reason: str) -> None:
        try:
            self.state.store_synthetic_error_reply(request_id, int(code), reason)
        except AlreadyReplied:
            return
        self.hub.replies(run_id).bump()

    def _sweep(self) -> None:
        self.audit.sign_if_due()
        for expired in self.state.expire_messages():
            self._answer(
                expired.message_id,
                expired.run_id,
                ErrorCode.MESSAGE_EXPIRED,
                "message expired before its node replied",
            )
        now = time.monotonic()
        with self._offline_lock:
            gone = [
                n for n, t in self._offline_since.items() if now - t >= self.config.node_grace_s
            ]
            for node_id in gone:
                del self._offline_since[node_id]
        for node_id in gone:
            if self.hub.is_connected(node_id):
                continue
            held = self.state.requests_in_flight_for_node(node_id)
            held += self.state.queued_for_node(node_id, limit=10_000)
            for request in held:
                self._answer(
                    request.message_id,
                    request.run_id,
                    ErrorCode.NODE_UNAVAILABLE,
                    f"node {node_id} went offline",
                )

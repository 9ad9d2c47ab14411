"""The SuperNode: a site's long-running process next to its data.

It dials out to the SuperLink (the site opens no inbound port) over mTLS, signing
every request with the site's Ed25519 key, says Hello, and keeps one Subscribe
stream open: work arrives the moment it is queued. Each message is pulled in
chunks, answered by the run's ClientApp subprocess (kept alive for the run; the
app code comes from the run's bundle, whose SHA-256 is checked before anything is
unpacked or executed), and the reply is pushed in chunks with the node's signature
over its digest. When the SuperLink goes away, the node reconnects with
exponential backoff (tenacity) until it is stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_random_exponential

from appliance.bundle import DEFAULT_MAX_BUNDLE_BYTES, extract_bundle
from appliance.clientapp import ErrorDetail, Mod, wrap_with_mods
from appliance.context import Context, UserConfig
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.message import Error, ErrorCode, Message
from appliance.metrics import SuperNodeMetrics
from appliance.proto import fleet_pb2 as pb
from appliance.proto.fleet_pb2_grpc import FleetStub
from appliance.receipts import Decision, Receipt, RunManifest
from appliance.supernode.admission import RunAdmission, RunStanding, policy_sha256
from appliance.supernode.budget import record_epsilon_cap
from appliance.supernode.budget_view import BudgetView
from appliance.supernode.clientapp_runner import ClientAppProcess
from appliance.supernode.drain import DrainingExecutor, kill_clientapps
from appliance.supernode.limits import LimitError, check_network_isolation, grant_cpu_seconds
from appliance.supernode.link import Link, insecure_link, secure_link
from appliance.supernode.policy import (
    EgressRefused,
    Network,
    PolicyError,
    PolicyRefused,
    SitePolicy,
    admit_message,
    check_data_path,
    host_mods,
    load_policy,
    refusal_reply,
    resource_limits,
    verify_egress,
)
from appliance.supernode.secagg_keys import secagg_credentials
from appliance.supernode.site_audit import SiteAudit, TreeHeadRefused
from appliance.supernode.site_files import SiteFiles
from appliance.transport import (
    REPLY_SIGNATURE_METHOD,
    Assembler,
    data_only,
    head_of,
    reply_digest,
    serialized_data_chunks,
)
from appliance.wire import (
    decode_metadata,
    decode_record_dict,
    encode_metadata,
    encode_record_dict_hashed,
)
from audit import VerifierKey
from certs import CertError
from certs.signing import EnvelopeKind
from secagg import CredentialsSource, make_secagg_mod

__all__ = ["SuperNode", "SuperNodeConfig"]

_log = get_logger("appliance.supernode")
VERSION = "1"
#: How often the node looks for the site administrator's decisions while runs wait.
APPROVAL_POLL_S = 0.5
#: Largest reply content pushed in one unary call (PushWholeReply) instead of a stream.
WHOLE_REPLY_BYTES = 64 * 1024
#: How long calls already on a channel replaced on SIGHUP may go on before it closes.
RETIRE_AFTER_S = 60.0


@dataclass(frozen=True)
class SuperNodeConfig:
    """Everything a SuperNode needs to start."""

    superlink: str
    ca_certificate: Path | None
    certificate: Path | None
    key: Path | None
    signing_key: Path | None
    data_dir: Path
    node_config: UserConfig = field(default_factory=dict)
    max_message_bytes: int = 2 * 2**30
    clientapp_timeout_s: float = 3600.0
    #: On stop (SIGTERM): seconds a message in progress may take to finish and be answered.
    shutdown_grace_s: float = 10.0
    error_detail: ErrorDetail = ErrorDetail.MESSAGE
    max_backoff_s: float = 5.0
    #: The federation CRL, so SecAgg+ can refuse a revoked neighbour's key.
    crl: Path | None = None
    #: The site policy (``site.toml``); ``None`` runs every app and lets every reply out.
    policy: SitePolicy | None = None
    #: Where ``policy`` came from: re-read on :meth:`SuperNode.request_reload` (SIGHUP).
    policy_path: Path | None = None
    #: Seconds new site audit entries may wait for a signed tree head.
    audit_interval_s: float = 10.0
    #: The SuperLink's audit verifier key; ``None``: trusted on first contact and pinned.
    superlink_audit_key: VerifierKey | None = None
    #: DEVELOPMENT ONLY: plain TCP, the node claims ``unsafe_name``, replies unsigned.
    unsafe_insecure: bool = False
    unsafe_name: str = ""


@dataclass
class _Run:
    """What the node keeps for a run it takes part in."""

    run_id: int
    directory: Path
    process: ClientAppProcess | None = None
    host_context: Context | None = None  # one per run: host mods keep state in it
    lock: threading.Lock = field(default_factory=threading.Lock)
    standing: RunStanding = field(default_factory=RunStanding)  # the site's decision
    parked: list[_Pulled] = field(default_factory=list)  # messages waiting for approval


@dataclass(frozen=True)
class _Enforced:
    """The site policy in force and the host mods built from it (swapped together)."""

    policy: SitePolicy | None
    mods: list[Mod]


@dataclass(frozen=True)
class _Pulled:
    """A pulled message with what the site log and the witness need from its pull."""

    message: Message
    head: pb.MessageHead  # run context and the SuperLink's latest tree head
    frame: bytearray | memoryview  # the content as received (its arrays are views of it)
    frame_sha256: bytes | None  # its SHA-256 if hashed as it arrived (else the log hashes it)
    witness_size: int  # the cosigned size the pull asked a consistency proof from
    started: float  # time.monotonic() when the pull started


class SuperNode:
    """A running SuperNode. :meth:`run` blocks until :meth:`stop`."""

    def __init__(self, config: SuperNodeConfig) -> None:
        self.config = config
        # Before any thread starts: a namespace test fails in a threaded process. The
        # answer is kept for SIGHUP, which may switch the policy to network = "none".
        self._isolation_error: LimitError | None = None
        if config.policy is not None or config.policy_path is not None:
            try:
                check_network_isolation()
            except LimitError as exc:
                if config.policy is not None and config.policy.execution.network is Network.NONE:
                    raise
                self._isolation_error = exc
                _log.warning(
                    "no user namespaces: ClientApps can read this node's keys and data "
                    "directory (docs/threat-model.md)",
                    error=str(exc),
                )
        if config.unsafe_insecure:
            self._link = insecure_link(config.superlink, config.unsafe_name)
        else:
            self._link = self._secure_link(config)
        self._retired: list[Link] = []  # links replaced on SIGHUP, closed a while later
        self._secagg = self._secagg_credentials(config)
        self._enforced = self._enforce(config.policy)
        self._reload = threading.Event()
        self._stopping = threading.Event()
        self._runs: dict[int, _Run] = {}
        self._runs_lock = threading.Lock()
        self._workers = DrainingExecutor(max_workers=8, thread_name_prefix="message")
        self._site_files = SiteFiles(config)
        budget = BudgetView(config.data_dir)  # read-only: the metrics' remaining epsilon
        self.metrics = SuperNodeMetrics(
            budget=budget.remaining,
            audit_entries=lambda: None if self._site_audit is None else self._site_audit.log.size,
            close_budget=budget.close,
        )
        self._subscription: grpc.Future | None = None
        self.node_id = 0
        self._site_audit: SiteAudit | None = None
        self.node_name = ""
        self._admission = RunAdmission(config.data_dir, self._send_receipt)
        self._admission.configure(config.policy)
        self._approval_watch = threading.Thread(
            target=self._watch_approvals, name="approvals", daemon=True
        )
        self._on_connection: Callable[[bool], None] = lambda _connected: None
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @staticmethod
    def _secagg_credentials(config: SuperNodeConfig) -> CredentialsSource | None:
        if config.unsafe_insecure:  # insecure: no keys, SecAgg+ rounds fail at setup
            return None
        assert config.ca_certificate
        assert config.certificate
        assert config.signing_key
        return secagg_credentials(
            ca_certificate=config.ca_certificate,
            certificate=config.certificate,
            signing_key=config.signing_key,
            crl=config.crl,
        )

    def _enforce(self, policy: SitePolicy | None) -> _Enforced:
        """The policy with the mods the SuperNode runs around the ClientApp, whatever the
        app says (SecAgg+, DP), built from it."""
        credentials = self._secagg
        if policy is None:
            _log.warning(
                "no site policy (--policy site.toml): every app may run here and every reply "
                "may leave; use only for development"
            )
            return _Enforced(None, [make_secagg_mod(credentials)] if credentials else [])
        _log.info("site policy loaded", policy_hash=policy.policy_hash)
        for problem in check_data_path(policy):
            _log.warning("site data path", problem=problem)
        return _Enforced(policy, host_mods(policy, secagg_credentials=credentials))

    @property
    def _policy(self) -> SitePolicy | None:
        return self._enforced.policy

    @property
    def _host_secagg(self) -> bool:
        return self._secagg is not None

    @staticmethod
    def _secure_link(config: SuperNodeConfig) -> Link:
        return secure_link(
            config.superlink,
            ca_certificate=config.ca_certificate,
            certificate=config.certificate,
            key=config.key,
            signing_key=config.signing_key,
        )

    @property
    def _stub(self) -> FleetStub:
        return self._link.stub

    # -- main loop -----------------------------------------------------------------------

    def run(self, on_connection: Callable[[bool], None] | None = None) -> None:
        """Serve until :meth:`stop`: connect, subscribe, reconnect with backoff.

        ``on_connection(True)`` once subscribed after a Hello, ``(False)`` when the
        session ends (reconnecting or stopping): a health service's SERVING switch.
        """
        if on_connection is not None:
            self._on_connection = on_connection
        self._approval_watch.start()
        retrying = Retrying(
            retry=retry_if_exception_type(grpc.RpcError),
            wait=wait_random_exponential(multiplier=0.2, max=self.config.max_backoff_s),
            stop=stop_when_event_set(self._stopping),
            before_sleep=lambda state: _log.warning(
                "superlink unreachable, retrying",
                attempt=state.attempt_number,
                error=_describe(state.outcome.exception() if state.outcome else None),
            ),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        self._session()
                    finally:
                        self._on_connection(False)
                        self.metrics.set_connected(False)
                    if not self._stopping.is_set():
                        raise _StreamEnded
        except Exception as exc:
            if not self._stopping.is_set():
                raise
            _log.debug("stopped", last_error=_describe(exc))
        finally:
            self._shutdown()

    def _session(self) -> None:
        hello = self._stub.Hello(pb.HelloRequest(version=VERSION), timeout=30)
        self.node_id = hello.node_id
        self.node_name = hello.node_name
        _log.info("connected", node_id=hello.node_id, node=hello.node_name)
        if self._site_audit is None:  # raises TreeHeadRefused on a foreign audit key: stop
            self._site_audit = SiteAudit(
                self.config.data_dir,
                node_name=hello.node_name,
                superlink_vkey=hello.audit_vkey,
                configured_superlink_key=self.config.superlink_audit_key,
            )
        stream = self._stub.Subscribe(pb.SubscribeRequest())
        self._subscription = stream
        self._on_connection(True)
        self.metrics.set_connected(True)
        for event in stream:
            if self._stopping.is_set():
                break
            kind = event.WhichOneof("event")
            if kind == "message":
                self._workers.submit(
                    self._handle_safely, event.message.message_id, event.message.run_id
                )
            elif kind == "delivery":
                self._workers.submit(self._handle_delivery_safely, event.delivery)
            elif kind == "run_ended":
                self._end_run(event.run_ended.run_id)

    def stop(self) -> None:
        """Ask :meth:`run` to return (from another thread or a signal handler): no new
        message starts; one in progress may finish for ``shutdown_grace_s`` (drain.py)."""
        self._stopping.set()
        self._workers.drain_then(
            lambda: None if self._subscription is None else self._subscription.cancel(),
            grace_s=self.config.shutdown_grace_s,
            overdue=lambda: kill_clientapps(self._runs.values()),
        )

    def _shutdown(self) -> None:
        self._stopping.set()  # also when run() ends on an error: the watcher must stop
        if self._approval_watch.is_alive():
            self._approval_watch.join()
        self._workers.shutdown(wait=True, cancel_futures=True)
        with self._runs_lock:
            runs = list(self._runs)
        for run_id in runs:
            self._end_run(run_id)
        if self._site_audit is not None:
            try:
                self._site_audit.close()
            except Exception:
                _log.exception("final site audit tree head not signed")
        for link in (*self._retired, self._link):
            link.channel.close()
        self._admission.close()
        self.metrics.close()

    # -- one message ---------------------------------------------------------------------

    def _handle_safely(self, message_id: str, run_id: int) -> None:
        try:
            self._handle(message_id, run_id)
        except grpc.RpcError as exc:
            self.metrics.unhandled()
            _log.warning("message not handled", message_id=message_id, error=_describe(exc))
        except Exception:
            self.metrics.unhandled()
            _log.exception("message not handled", message_id=message_id)

    def _handle_delivery_safely(self, delivery: pb.MessageDelivery) -> None:
        try:
            site = self._site_audit
            assert site is not None, "messages arrive only after Hello"
            self._process(self._delivered(delivery), site)
        except Exception:
            self.metrics.unhandled()
            _log.exception("delivered message not handled")

    def _delivered(self, delivery: pb.MessageDelivery) -> _Pulled:
        """A message the SuperLink sent whole on the stream, as if pulled."""
        started = time.monotonic()
        head = delivery.head
        if len(delivery.content) != head.content_size:
            raise ValueError(
                f"delivered content is {len(delivery.content)} bytes, "
                f"its head declared {head.content_size}"
            )
        frame = bytearray(delivery.content)  # decoded in place, like a pulled body
        return self._received(head, frame, None, head.audit_proof_from, started)

    def _pull(self, message_id: str, site: SiteAudit) -> _Pulled:
        started = time.monotonic()
        request = pb.PullMessageRequest(message_id=message_id, witness_size=site.witness_size)
        parts = iter(self._stub.PullMessage(request))
        head = head_of(parts, pb.MessageHead)
        assembler = Assembler(head.content_size, self.config.max_message_bytes, hashed=True)
        for piece in data_only(parts):
            assembler.add(piece)
        frame = assembler.finish()  # decoded in place: the arrays are views of it
        return self._received(head, frame, assembler.sha256(), request.witness_size, started)

    def _received(
        self,
        head: pb.MessageHead,
        frame: bytearray | memoryview,
        frame_sha256: bytes | None,
        witness_size: int,
        started: float,
    ) -> _Pulled:
        """Decode a message's frame (in place) into what ``_process`` answers."""
        self.metrics.received("message", len(frame))
        content = decode_record_dict(frame, max_bytes=self.config.max_message_bytes)
        message = Message.from_parts(decode_metadata(head.metadata), content)
        return _Pulled(message, head, frame, frame_sha256, witness_size, started)

    def _witness(self, site: SiteAudit, pulled: _Pulled) -> None:
        """Record the SuperLink's tree head; cosign it if it extends the last one."""
        cosignature = site.saw_tree_head(
            pulled.head.audit_checkpoint,
            list(pulled.head.audit_consistency),
            proof_from=pulled.witness_size,
            pulled_at=pulled.started,
        )
        if cosignature is None:
            return
        try:
            self._stub.Cosign(
                pb.CosignRequest(
                    tree_size=cosignature.tree_size,
                    signature_line=cosignature.signature_line,
                    witness_vkey=cosignature.witness_vkey,
                ),
                timeout=30,
            )
        except grpc.RpcError as exc:  # the site's own log holds the cosignature anyway
            _log.warning("cosignature not delivered", error=_describe(exc))

    def _handle(self, message_id: str, run_id: int) -> None:
        site = self._site_audit
        assert site is not None, "messages arrive only after Hello"
        self._process(self._pull(message_id, site), site)

    def _process(self, pulled: _Pulled, site: SiteAudit, *, resumed: bool = False) -> None:
        """Answer one pulled message (``resumed``: it waited for approval and is witnessed)."""
        message, run_context = pulled.message, pulled.head.run
        run = self._run(run_context)
        policy = self._policy
        with run.lock:
            try:
                if not resumed:
                    self._witness(site, pulled)
                elif _expired(message):
                    _log.warning("message expired while waiting", run_id=run.run_id)
                    return
                if policy is not None:
                    admit_message(policy, message)
                admitted = self._admission.admit(
                    run.standing, run_context, policy=policy, site=site, node_id=self.node_id
                )
                if not admitted:
                    run.parked.append(pulled)  # answered once the site administrator decides
                    _log.info("message waits for approval", run_id=run.run_id)
                    return
                site.received(
                    message,
                    node_id=self.node_id,
                    app_sha256=run_context.bundle_sha256,
                    frame=pulled.frame,
                    sha256=pulled.frame_sha256,
                )
                if run.process is None:
                    run.process = self._start_clientapp(run, run_context)
                process = run.process
                self._admission.charge_round(run.standing, message, site=site, node_id=self.node_id)
            except TreeHeadRefused as exc:
                self.metrics.refused("audit")
                _log.error("SuperLink audit log refused", run_id=run.run_id, reason=str(exc))
                site.refused(message, node_id=self.node_id, reason=str(exc))
                reply = Message(Error(ErrorCode.POLICY_REFUSED, str(exc)), reply_to=message)
            except PolicyRefused as exc:
                self.metrics.refused(exc.key)
                _log.warning("policy refused", run_id=run.run_id, key=exc.key, reason=exc.reason)
                site.refused(message, node_id=self.node_id, reason=str(exc))
                reply = refusal_reply(message, exc)
            except (grpc.RpcError, ValueError, OSError, ApplianceError) as exc:
                _log.warning("cannot run the ClientApp", run_id=run.run_id, error=_describe(exc))
                reason = f"node cannot run the app: {_describe(exc)}"
                reply = Message(Error(ErrorCode.LOAD_CLIENT_APP_FAILED, reason), reply_to=message)
            else:
                reply = self._call(process, message, run, run_context)
        self._push(message, reply, record_epsilon_cap(run_context.run_config_json))

    # -- the site's decision about a run -------------------------------------------------

    def _send_receipt(
        self, manifest: RunManifest, decision: Decision, reason: str, decided_by: str
    ) -> None:
        """Sign and send the site's receipt (a failure is logged: the site log holds it)."""
        link = self._link
        if link.signer is None:  # insecure development mode: nothing to sign with
            return
        receipt = Receipt(
            run_id=manifest.run_id,
            node=self.node_name,
            decision=decision,
            manifest_sha256=manifest.sha256,
            policy_sha256=policy_sha256(self._policy),
            reason=reason,
            decided_by=decided_by,
        )
        signed = receipt.sign(link.signer)
        try:
            link.stub.SendReceipt(
                pb.ReceiptRequest(receipt=signed.body, signature=signed.signature), timeout=30
            )
        except grpc.RpcError as exc:
            _log.warning("receipt not delivered", run_id=manifest.run_id, error=_describe(exc))

    def request_reload(self) -> None:
        """Re-read the site policy soon (safe from a signal handler: only sets a flag)."""
        self._reload.set()

    def _reload_policy(self) -> None:
        """Swap in the policy file's current content, or keep the old one if it is invalid.

        Runs already accepted are decided again at their next message, under the new
        policy (and with a new receipt naming it). ClientApp processes already running
        keep the resource limits they started with.
        """
        path = self.config.policy_path
        if path is None:
            _log.warning("SIGHUP: no --policy file to reload")
            self._enforced = self._enforce(None)  # the host mods, around fresh credentials
            return
        old = self._policy.policy_hash if self._policy else ""
        try:
            policy = load_policy(path)
            if policy.execution.network is Network.NONE and self._isolation_error is not None:
                raise self._isolation_error  # probed at start: a threaded process cannot
            enforced = self._enforce(policy)
        except (PolicyError, LimitError) as exc:
            _log.error("site policy NOT reloaded; the previous one stays", error=str(exc))
            self._record_reload(old, old, error=str(exc))
            return
        self._enforced = enforced
        self._admission.configure(policy)
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            with run.lock:
                run.standing.reconsider()
        _log.warning("site policy reloaded", previous=old, policy_hash=policy.policy_hash)
        self._record_reload(old, policy.policy_hash)

    def _switch_identity(self) -> None:
        """Move to the certificate and keys on disk if they changed and the SuperLink
        accepts them; otherwise keep the ones in use (logged). Never raises.

        The new files are checked (one node identity, valid, the same node name), a
        second channel says Hello with them (which is what retires a certificate the
        admin staged with ``greenhouse node renew``), and only then is it swapped in:
        the Subscribe stream on the old channel is cancelled and the node reconnects
        on the new one. Calls still on the old channel have a minute to finish.
        """
        if self.config.unsafe_insecure or not self._site_files.identity_changed():
            return
        digests = self._site_files.digests()
        old = self._link
        try:
            link = self._secure_link(self.config)
        except (CertError, ValueError) as exc:
            _log.error(
                "SIGHUP: the node's new certificate or keys NOT used; the previous ones stay",
                error=str(exc),
            )
            return
        if link.fingerprint == old.fingerprint:  # rewritten, same certificate: same keys
            link.channel.close()
            self._site_files.adopt_identity(digests)
            _log.info("SIGHUP: the node's certificate is unchanged", serial=old.serial)
            return
        if link.name != old.name:
            link.channel.close()
            _log.error(
                "SIGHUP: the new certificate names another node; the previous one stays",
                name=link.name,
                node=old.name,
            )
            return
        try:
            hello = link.stub.Hello(pb.HelloRequest(version=VERSION), timeout=30)
        except grpc.RpcError as exc:
            link.channel.close()
            _log.error(
                "SIGHUP: the SuperLink refused the new certificate; the previous one stays "
                "(the federation admin stages it with: greenhouse node renew)",
                error=_describe(exc),
            )
            return
        self._link = link
        self._site_files.adopt_identity(digests)
        self._secagg = self._secagg_credentials(self.config)
        self._retired.append(old)
        retire = threading.Timer(RETIRE_AFTER_S, old.channel.close)
        retire.daemon = True
        retire.start()
        _log.warning(
            "SIGHUP: node certificate switched",
            previous_serial=old.serial,
            serial=link.serial,
            node_id=hello.node_id,
        )
        if self._site_audit is not None:
            try:
                self._site_audit.identity_switched(old.fingerprint, link.fingerprint)
            except Exception:
                _log.exception("certificate switch not written to the site audit log")
        subscription = self._subscription
        if subscription is not None:
            subscription.cancel()  # run() reconnects, on the new link

    def _record_reload(self, old: str, new: str, *, error: str = "") -> None:
        if self._site_audit is None:  # before the first Hello: the start-up log says it
            return
        try:
            self._site_audit.policy_reloaded(old, new, error=error)
        except Exception:
            _log.exception("policy reload not written to the site audit log")

    def _watch_approvals(self) -> None:
        """Housekeeping: apply a requested reload; sign the site log's tree head when due;
        resume parked messages once the site administrator has decided (polls the
        approval book)."""
        while not self._stopping.wait(APPROVAL_POLL_S):
            self._sign_site_log_if_due()
            if self._reload.is_set():
                self._reload.clear()
                self._switch_identity()
                self._secagg = self._site_files.reload(self._secagg)
                self._reload_policy()
            with self._runs_lock:
                waiting = [run for run in self._runs.values() if run.parked]
            for run in waiting:
                try:
                    approval = self._admission.approvals.get(run.run_id)
                except ApplianceError as exc:
                    _log.error("approval book unreadable", error=str(exc))
                    continue
                if approval is not None and approval.decided:
                    self._workers.submit(self._resume, run)

    def _sign_site_log_if_due(self) -> None:
        site = self._site_audit
        if site is None:
            return
        try:
            site.sign_if_due(self.config.audit_interval_s)
        except Exception:  # the entries stay; the next tick (or the stop) signs them
            _log.exception("site audit tree head not signed")

    def _resume(self, run: _Run) -> None:
        with run.lock:
            parked, run.parked = run.parked, []
        site = self._site_audit
        assert site is not None
        for pulled in parked:
            try:
                self._process(pulled, site, resumed=True)
            except grpc.RpcError as exc:
                _log.warning("message not handled", run_id=run.run_id, error=_describe(exc))
            except Exception:
                _log.exception("message not handled", run_id=run.run_id)

    def _call(
        self, process: ClientAppProcess, message: Message, run: _Run, context: pb.RunContext
    ) -> Message:
        """The ClientApp's answer, through the SuperNode's own mods (SecAgg+, DP)."""
        wall_s = self.config.clientapp_timeout_s
        if self._policy is not None:
            wall_s = min(wall_s, float(self._policy.execution.wall_seconds))

        def clientapp(msg: Message, _ctx: Context) -> Message:
            return process.handle(msg, timeout_s=wall_s)

        if run.host_context is None:
            run.host_context = Context(
                run_id=context.run_id,
                node_id=self.node_id,
                node_config=dict(self.config.node_config),
                run_config=json.loads(context.run_config_json or "{}"),
            )
        try:
            return wrap_with_mods(self._enforced.mods, clientapp)(message, run.host_context)
        except Exception as exc:
            _log.exception("a node mod failed", message_type=message.metadata.message_type)
            reason = f"node mod failed: {type(exc).__name__}: {exc}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    def _egress(
        self, request: Message, reply: Message, record_epsilon_cap: float | None
    ) -> tuple[Message, bytes | memoryview, bytes]:
        """What may leave: the checked reply, its frame and the frame's SHA-256 (or a
        refusal in its place)."""
        policy = self._policy
        if policy is None:
            if reply.has_error():
                return reply, b"", hashlib.sha256(b"").digest()
            return reply, *encode_record_dict_hashed(reply.content)
        try:
            approved = verify_egress(
                policy,
                reply,
                request=request,
                host_secagg=self._host_secagg,
                record_epsilon_cap=record_epsilon_cap,
            )
        except EgressRefused as exc:
            self.metrics.refused(exc.key)
            _log.warning(
                "egress refused",
                key=exc.key,
                violations=[f"{v.key}: {v.reason}" for v in exc.report.violations],
            )
            assert self._site_audit is not None
            self._site_audit.refused(request, node_id=self.node_id, reason=str(exc))
            approved = verify_egress(
                policy, refusal_reply(request, exc), request=request, host_secagg=self._host_secagg
            )
        sha256 = approved.report.content_sha256 or hashlib.sha256(b"").hexdigest()
        return approved.message, approved.frame, bytes.fromhex(sha256)

    def _push(
        self, request: Message, reply: Message, record_epsilon_cap: float | None = None
    ) -> None:
        reply, frame, frame_sha256 = self._egress(request, reply, record_epsilon_cap)
        assert self._site_audit is not None
        # Before a byte leaves: no egress.reply entry, no send (fail closed).
        self._site_audit.egress(reply, node_id=self.node_id, frame=frame, sha256=frame_sha256)
        metadata = encode_metadata(reply.metadata)
        error = reply.error if reply.has_error() else Error(ErrorCode.UNKNOWN, "")
        digest = reply_digest(
            metadata,
            is_error=reply.has_error(),
            error_code=error.code,
            error_reason=error.reason,
            content_sha256=frame_sha256 if frame else b"",
        )
        link = self._link  # the key that signs and the channel it is checked on, as one
        signature = (
            b""
            if link.signer is None
            else link.signer.sign(
                kind=EnvelopeKind.REPLY, method=REPLY_SIGNATURE_METHOD, body=digest
            ).to_bytes()
        )
        head = pb.ReplyHead(
            metadata=metadata,
            is_error=reply.has_error(),
            error_code=error.code,
            error_reason=error.reason,
            content_size=len(frame),
            signature=signature,
        )

        def chunks() -> Iterator[pb.ReplyChunk | bytes]:
            yield pb.ReplyChunk(head=head)
            yield from serialized_data_chunks(frame)

        if len(frame) <= WHOLE_REPLY_BYTES:  # one unary call: no stream to set up
            link.stub.PushWholeReply(pb.WholeReply(head=head, content=bytes(frame)))
        else:
            link.stub.PushReply(chunks())
        self.metrics.handled(reply, len(frame))

    # -- runs ----------------------------------------------------------------------------

    def _run(self, context: pb.RunContext) -> _Run:
        with self._runs_lock:
            run = self._runs.get(context.run_id)
            if run is None:
                directory = self.config.data_dir.resolve() / "runs" / str(context.run_id)
                run = self._runs[context.run_id] = _Run(context.run_id, directory)
            return run

    def _start_clientapp(self, run: _Run, context: pb.RunContext) -> ClientAppProcess:
        data = bytearray()
        sha256 = ""
        for chunk in self._stub.GetBundle(pb.GetBundleRequest(run_id=run.run_id)):
            if chunk.HasField("head"):
                sha256 = chunk.head.sha256
                if chunk.head.size > DEFAULT_MAX_BUNDLE_BYTES:
                    raise ValueError(f"bundle of {chunk.head.size} bytes is over the limit")
            else:
                data += chunk.data
                if len(data) > DEFAULT_MAX_BUNDLE_BYTES:
                    raise ValueError("bundle is larger than the limit")
        if sha256 != context.bundle_sha256:
            raise ValueError(f"bundle {sha256} is not the run's bundle {context.bundle_sha256}")
        if run.directory.exists():
            shutil.rmtree(run.directory)
        run.directory.mkdir(mode=0o700, parents=True)
        app_dir = extract_bundle(
            bytes(data), run.directory / "app", expected_sha256=context.bundle_sha256
        )
        _log.info("bundle verified", run_id=run.run_id, sha256=sha256)
        self.metrics.received("bundle", len(data))
        return ClientAppProcess(
            app_dir,
            run_id=run.run_id,
            node_id=self.node_id,
            node_config=dict(self.config.node_config),
            run_config=json.loads(context.run_config_json or "{}"),
            work_dir=run.directory / "work",
            max_message_bytes=self.config.max_message_bytes,
            error_detail=self.config.error_detail,
            **self._limits(run),
        )

    def _limits(self, run: _Run) -> dict[str, Any]:
        """Resource limits of ``[execution]`` for a ClientApp process (none without a policy),
        and, where namespaces allow, the node's keys and data directory hidden from it."""
        policy = self._policy
        if policy is None:
            return {}
        cpu_seconds = policy.execution.cpu_seconds
        limits = resource_limits(policy)
        if self._isolation_error is None:
            cfg = self.config
            secrets = [p for p in (cfg.key, cfg.signing_key) if p is not None]
            keep = [run.directory, policy.execution.data_path]
            limits = dataclasses.replace(
                limits,
                hide=(*(str(p.absolute()) for p in secrets), str(cfg.data_dir.resolve())),
                keep=tuple(str(Path(p).resolve()) for p in keep if p),
            )
        return {
            "limits": limits,
            "before_message": lambda pid: grant_cpu_seconds(pid, cpu_seconds),
        }

    def _end_run(self, run_id: int) -> None:
        with self._runs_lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run.parked:
            _log.info("run ended before approval", run_id=run_id, waiting=len(run.parked))
        self._admission.ended(run_id, run.standing, waiting=bool(run.parked))
        with run.lock:
            if run.process is not None:
                run.process.stop()
        shutil.rmtree(run.directory, ignore_errors=True)
        _log.info("run ended", run_id=run_id)


def _expired(message: Message) -> bool:
    meta = message.metadata
    return meta.created_at + meta.ttl < time.time()


class _StreamEnded(grpc.RpcError):
    """The Subscribe stream ended without an error: reconnect."""


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, ApplianceError | ValueError | OSError):
        return str(exc)
    return repr(exc)

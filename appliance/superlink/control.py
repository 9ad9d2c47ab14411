"""Control API servicer: users submit, watch and stop runs; admins enrol nodes.

Roles come from the caller's certificate (checked by the auth interceptor's method
table); this servicer adds ownership: a data scientist sees and stops only the runs
they submitted, while auditors and federation admins may read every run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import grpc

import audit
from appliance.bundle import DEFAULT_MAX_BUNDLE_BYTES, BundleError
from appliance.logs import get_logger
from appliance.proto import control_pb2 as pb
from appliance.proto import control_pb2_grpc
from appliance.state import Node, Run, RunPrivacy, RunStatus, State, StoredReceipt
from appliance.superlink.audit_trail import actor_of
from appliance.superlink.privacy import PrivacyTracker
from appliance.superlink.runs import BUNDLE_SIGNATURE, RunLauncher
from appliance.supernode.publisher import PublisherError, parse_bundle_signature
from certs.grpc_auth import identity_from_context
from certs.identity import Identity
from certs.roles import Role
from dp.errors import DPError

__all__ = ["ControlServicer", "NodeCertificateCheck"]

_log = get_logger("appliance.superlink.control")
#: Verifies a node certificate (PEM) against the federation CA; returns its identity.
NodeCertificateCheck = Callable[[bytes], Identity]
_READ_ALL = frozenset({Role.AUDITOR, Role.FEDERATION_ADMIN})
_LOG_FOLLOW_INTERVAL_S = 0.2


def _receipt_info(receipt: StoredReceipt) -> pb.ReceiptInfo:
    return pb.ReceiptInfo(
        node=receipt.node_name, decision=receipt.decision,
        manifest_sha256=receipt.manifest_sha256, policy_sha256=receipt.policy_sha256,
        reason=receipt.reason, decided_by=receipt.decided_by, signed_at=receipt.signed_at,
        receipt=receipt.body, signature=receipt.signature,
    )  # fmt: skip


def _privacy_info(privacy: RunPrivacy | None) -> pb.RunPrivacyInfo | None:
    if privacy is None:
        return None
    return pb.RunPrivacyInfo(
        plan_json=privacy.plan_json, unit=privacy.unit, delta=privacy.delta,
        planned_epsilon=privacy.planned_epsilon, spent_epsilon=privacy.spent_epsilon,
        rounds_done=privacy.rounds_done,
    )  # fmt: skip


def _run_info(
    run: Run, receipts: Sequence[StoredReceipt] = (), privacy: RunPrivacy | None = None
) -> pb.RunInfo:
    return pb.RunInfo(
        run_id=run.run_id,
        owner=run.owner,
        status=run.status.value,
        reason=run.reason or "",
        bundle_sha256=run.bundle_sha256,
        created_at=run.created_at,
        started_at=run.started_at or 0.0,
        finished_at=run.finished_at or 0.0,
        run_config_json=run.run_config_json,
        receipts=[_receipt_info(r) for r in receipts],
        privacy=_privacy_info(privacy),
    )


def _node_info(node: Node) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=node.node_id,
        name=node.name,
        cert_fingerprint=node.cert_fingerprint,
        signing_key_fingerprint=node.signing_key_fingerprint,
        online=node.online,
        last_seen_at=node.last_seen_at or 0.0,
        enrolled_at=node.enrolled_at,
        renewal_cert_fingerprint=node.renewal_cert_fingerprint or "",
    )


def _parse_run_config(text: str) -> dict[str, bool | int | float | str]:
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"run config is not JSON: {exc}") from None
    if not isinstance(config, dict) or not all(
        isinstance(k, str) and isinstance(v, bool | int | float | str) for k, v in config.items()
    ):
        raise ValueError("run config must be a JSON object of bool, int, float or string values")
    return config


def _checked_signature(data: bytes, bundle_sha256: str) -> str:
    """The publisher signature file's text, if it is well-formed and for this bundle.

    The SuperLink cannot know which publishers a site trusts (sites check that);
    it refuses garbage and a signature for another bundle up front.

    Raises:
        BundleError: malformed, or not over this bundle.
    """
    try:
        signature = parse_bundle_signature(data)
    except PublisherError as exc:
        raise BundleError(f"the bundle signature is refused: {exc}") from None
    if signature.bundle_sha256 != bundle_sha256:
        raise BundleError(
            f"the bundle signature is for sha256:{signature.bundle_sha256}, "
            f"not this bundle (sha256:{bundle_sha256})"
        )
    return data.decode("utf-8")


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Serves the Control API to users."""

    def __init__(
        self,
        state: State,
        launcher: RunLauncher,
        *,
        check_node_certificate: NodeCertificateCheck,
        audit_log: audit.AuditLog,
        privacy: PrivacyTracker,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    ) -> None:
        self._state = state
        self._privacy = privacy
        self._launcher = launcher
        self._check_node_certificate = check_node_certificate
        self._audit_source = audit.DatabaseSource(audit_log.engine, name="the SuperLink")
        self._max_bundle_bytes = max_bundle_bytes

    def _visible_run(self, run_id: int, context: grpc.ServicerContext) -> tuple[Identity, Run]:
        identity = identity_from_context(context)
        run = self._state.get_run(run_id)
        if identity.role not in _READ_ALL and run.owner != identity.name:
            # Same answer as for a missing run: do not reveal other users' run ids.
            context.abort(grpc.StatusCode.NOT_FOUND, f"run {run_id} not found")
        return identity, run

    def SubmitRun(
        self, request_iterator: Iterator[pb.SubmitRunChunk], context: grpc.ServicerContext
    ) -> pb.SubmitRunResponse:
        identity = identity_from_context(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("head"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a submission must start with its head")
        head = first.head
        try:
            run_config = _parse_run_config(head.run_config_json)
            plan = self._privacy.check(run_config)
        except (ValueError, DPError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"run refused: {exc}")
        bundle = self._state.put_bundle(
            (chunk.data for chunk in request_iterator), max_bytes=self._max_bundle_bytes
        )
        if bundle.sha256 != head.bundle_sha256:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bundle arrived with SHA-256 {bundle.sha256}, "
                f"the head declared {head.bundle_sha256}",
            )
        options: dict[str, object] = {"app_name": head.app_name, "app_version": head.app_version}
        if plan is not None:
            options["dp_plan"] = plan.describe()
        if head.bundle_signature:
            options[BUNDLE_SIGNATURE] = _checked_signature(head.bundle_signature, bundle.sha256)
        run = self._state.create_run(
            identity.name, bundle.sha256, run_config, options, actor=actor_of(identity)
        )
        _log.info("run submitted", run_id=run.run_id, owner=identity.name, bundle=bundle.sha256)
        try:
            if plan is not None:
                self._privacy.started(run.run_id, plan)
            self._launcher.start(run.run_id)
        except Exception as exc:
            self._state.transition_run(run.run_id, RunStatus.FAILED, f"could not start: {exc}")
            raise
        return pb.SubmitRunResponse(run_id=run.run_id)

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        identity = identity_from_context(context)
        if request.run_id:
            runs = [self._visible_run(request.run_id, context)[1]]
        else:
            runs = self._state.list_runs(None if identity.role in _READ_ALL else identity.name)
        ids = [run.run_id for run in runs]
        receipts, privacy = self._state.receipts_by_run(ids), self._state.run_privacy(ids)
        return pb.ListRunsResponse(
            runs=[_run_info(r, receipts.get(r.run_id, ()), privacy.get(r.run_id)) for r in runs]
        )

    def StreamLogs(
        self, request: pb.StreamLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogLine]:
        self._visible_run(request.run_id, context)
        after = request.after_seq
        while context.is_active():
            lines = self._state.read_log(request.run_id, after_seq=after, limit=1000)
            for line in lines:
                yield pb.LogLine(
                    seq=line.seq,
                    created_at=line.created_at,
                    stream=line.stream.value,
                    text=line.text,
                )
                after = line.seq
            if lines:
                continue
            if not request.follow or self._state.get_run(request.run_id).status.is_terminal:
                if not self._state.read_log(request.run_id, after_seq=after, limit=1):
                    return
                continue
            time.sleep(_LOG_FOLLOW_INTERVAL_S)

    def StopRun(
        self, request: pb.StopRunRequest, context: grpc.ServicerContext
    ) -> pb.StopRunResponse:
        identity, run = self._visible_run(request.run_id, context)
        if run.owner != identity.name and identity.role is not Role.FEDERATION_ADMIN:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "only the run's owner or a federation admin may stop it",
            )
        if run.status.is_terminal:
            return pb.StopRunResponse(status=run.status.value)
        reason = f"stopped by {identity.name}"
        if not self._launcher.stop(run.run_id, reason, actor=actor_of(identity)):
            self._state.transition_run(
                run.run_id, RunStatus.STOPPED, reason, actor=actor_of(identity)
            )
        return pb.StopRunResponse(status=RunStatus.STOPPED.value)

    def AddNode(self, request: pb.AddNodeRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        admin = identity_from_context(context)
        node_identity = self._check_node_certificate(request.certificate_pem)
        enrol = self._state.renew_node if request.renew else self._state.enrol_node
        node = enrol(
            node_identity.name,
            node_identity.certificate_fingerprint,
            node_identity.signing_key_fingerprint or "",
            admin.name,
            actor=actor_of(admin),
        )
        if request.renew:
            _log.info("node renewal staged", node=node.name, by=admin.name)
        else:
            _log.info("node enrolled", node=node.name, by=admin.name)
        return _node_info(node)

    def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: grpc.ServicerContext
    ) -> pb.RemoveNodeResponse:
        admin = identity_from_context(context)
        self._state.remove_node(request.name, actor=actor_of(admin))
        _log.info("node removed", node=request.name, by=admin.name)
        return pb.RemoveNodeResponse()

    def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.ServicerContext
    ) -> pb.ListArtifactsResponse:
        self._visible_run(request.run_id, context)
        return pb.ListArtifactsResponse(
            artifacts=[
                pb.ArtifactInfo(name=a.name, sha256=a.sha256, size=a.size, created_at=a.created_at)
                for a in self._state.list_artifacts(request.run_id)
            ]
        )

    def GetArtifact(
        self, request: pb.GetArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ArtifactData]:
        self._visible_run(request.run_id, context)
        artifact = self._state.get_artifact(request.run_id, request.name)
        for chunk in self._state.blobs.open_chunks(artifact.sha256):
            yield pb.ArtifactData(data=chunk)

    def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.ServicerContext
    ) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[_node_info(n) for n in self._state.list_nodes()])

    def ListAudit(
        self, request: pb.ListAuditRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AuditLine]:
        try:
            since = datetime.fromisoformat(request.since) if request.since else None
            if since is not None and since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            query = audit.EntryQuery(
                run_id=request.run_id or None,
                actions=frozenset(audit.Action(a) for a in request.actions),
                since=since,
            )
        except (ValueError, audit.AuditError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad audit query: {exc}")
        for entry in self._audit_source.entries(query):
            yield pb.AuditLine(line=audit.encode_entry(entry).decode("utf-8"))

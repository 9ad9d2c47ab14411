"""Fleet API servicer: enrolled SuperNodes pull work and push signed replies.

The auth interceptor (``certs.grpc_auth``) has already verified the caller's
certificate, role, enrolment and request signature; this servicer maps the
verified identity to its node record and confines the node to its own messages.
A node is online exactly while its ``Subscribe`` stream is open. A small message
(at most :data:`DELIVER_INLINE_BYTES` of content) goes whole on that stream, marked
delivered as it is sent; a larger one is announced and pulled in chunks.

A reply is admitted only after: its metadata names this node as source and the
server as destination; its content arrived within the size limit and is a valid
record-dict frame (checked in place from the blob file, never held whole in
memory); and its signature — a ``certs`` envelope of kind REPLY over the reply
digest — verifies with the signing key bound in the node's certificate and is
fresh. The signature is stored with the reply, so it stays attributable.
"""

from __future__ import annotations

import mmap
import queue
from collections.abc import Callable, Iterable, Iterator

import grpc

from appliance.logs import get_logger
from appliance.message import SERVER_NODE_ID, Metadata
from appliance.proto import fleet_pb2 as pb
from appliance.proto import fleet_pb2_grpc
from appliance.receipts import RECEIPT_SIGNATURE_METHOD, Decision, Receipt, RunManifest
from appliance.state import (
    BlobRef,
    Enrolment,
    LogStream,
    State,
    StateError,
    StoredMessage,
    StoredReceipt,
)
from appliance.superlink.audit_trail import SuperLinkAudit, actor_of
from appliance.superlink.hub import Hub, MessageNotice
from appliance.superlink.runs import BUNDLE_SIGNATURE
from appliance.transport import (
    REPLY_SIGNATURE_METHOD,
    ChunkPart,
    data_only,
    head_of,
    parse_chunk,
    reply_digest,
    serialize_part,
    serialized_data_chunks,
    witness_key_name,
)
from appliance.wire import decode_metadata, decode_record_dict, encode_metadata
from audit import AuditError, parse_verifier_key
from certs.grpc_auth import identity_from_context
from certs.identity import Identity
from certs.signing import EnvelopeKind, RequestVerifier, SignedEnvelope

__all__ = ["FleetServicer", "add_fleet_to_server"]

_log = get_logger("appliance.superlink.fleet")
#: Run contexts kept in memory (a run's context never changes; the memo is cleared when full).
_RUN_CONTEXTS = 1024
#: Largest content delivered whole on a node's Subscribe stream instead of pulled.
DELIVER_INLINE_BYTES = 64 * 1024

#: Called with a node id when its subscription ends (the SuperLink starts its grace timer).
DisconnectHook = Callable[[int], None]
#: Re-checks, during a long-lived stream, that an identity is still admitted (CRL,
#: enrolment); returns the reason it no longer is, or None.
AdmissionCheck = Callable[[Identity], str | None]


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """Serves the Fleet API to SuperNodes."""

    def __init__(
        self,
        state: State,
        hub: Hub,
        *,
        verifier: RequestVerifier,
        keepalive_s: float,
        max_message_bytes: int,
        on_disconnect: DisconnectHook,
        still_admitted: AdmissionCheck,
        audit: SuperLinkAudit,
        unsafe_unsigned_replies: bool = False,
    ) -> None:
        self._state = state
        self._hub = hub
        self._verifier = verifier
        self._keepalive_s = keepalive_s
        self._max_message_bytes = max_message_bytes
        self._on_disconnect = on_disconnect
        self._still_admitted = still_admitted
        self._audit = audit
        self._unsafe_unsigned_replies = unsafe_unsigned_replies
        self._run_contexts: dict[int, pb.RunContext] = {}
        # node id -> the tree size it last asked a proof from or cosigned
        self._witnessed: dict[int, int] = {}

    def _caller(self, context: grpc.ServicerContext) -> tuple[Identity, Enrolment]:
        identity = identity_from_context(context)
        node = self._state.enrolment(identity.certificate_fingerprint)
        if node is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"node {identity.name!r} is not enrolled"
            )
        return identity, node  # type: ignore[return-value]

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloResponse:
        identity, node = self._caller(context)
        if node.renewal:  # the node switched to its renewed certificate: retire the old one
            self._state.complete_renewal(
                node.node_id, node.cert_fingerprint, actor=actor_of(identity)
            )
            _log.warning("node renewal completed", node=node.name, node_id=node.node_id)
        self._state.touch_node(node.node_id)
        return pb.HelloResponse(
            node_id=node.node_id,
            node_name=node.name,
            keepalive_s=self._keepalive_s,
            audit_vkey=self._audit.verifier_key.encode(),
        )

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FleetEvent]:
        identity, node = self._caller(context)
        inbox = self._hub.subscribe(node.node_id)
        self._state.set_node_online(node.node_id, True, actor=actor_of(identity))
        _log.info("node connected", node=node.name, node_id=node.node_id)

        def disconnect() -> None:
            if self._hub.unsubscribe(inbox):
                self._state.set_node_online(node.node_id, False)
                _log.info("node disconnected", node=node.name, node_id=node.node_id)
                self._on_disconnect(node.node_id)

        context.add_callback(disconnect)
        try:
            for waiting in self._state.queued_for_node(node.node_id, limit=10_000):
                yield pb.FleetEvent(
                    message=pb.MessageAvailable(
                        message_id=waiting.message_id, run_id=waiting.run_id
                    )
                )
            while context.is_active() and not inbox.closed.is_set():
                try:
                    item = inbox.events.get(timeout=self._keepalive_s)
                except queue.Empty:
                    self._state.touch_node(node.node_id)
                    item = pb.FleetEvent(keepalive=pb.Keepalive())
                if inbox.closed.is_set():
                    break
                refusal = self._still_admitted(identity)
                if refusal is not None:
                    _log.warning("node no longer admitted", node=node.name, reason=refusal)
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                yield self._event(item, node.node_id) if isinstance(item, MessageNotice) else item
        finally:
            disconnect()

    def _event(self, notice: MessageNotice, node_id: int) -> pb.FleetEvent:
        """A small message delivered whole, or the notice that a message waits."""
        if notice.content_size <= DELIVER_INLINE_BYTES:
            try:
                stored = self._state.mark_delivered(notice.message_id, node_id)
                content = (
                    self._state.blobs.read_bytes(stored.content.sha256)
                    if stored.content is not None
                    else b""
                )
                head = self._head(stored, node_id, self._witnessed.get(node_id, 0))
                return pb.FleetEvent(delivery=pb.MessageDelivery(head=head, content=content))
            except (StateError, OSError) as exc:  # the node pulls it and hears why there
                _log.info("message announced, not delivered", error=str(exc))
        return pb.FleetEvent(
            message=pb.MessageAvailable(message_id=notice.message_id, run_id=notice.run_id)
        )

    def PullMessage(
        self, request: pb.PullMessageRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.MessageChunk | bytes]:
        _, node = self._caller(context)
        stored = self._state.mark_delivered(request.message_id, node.node_id)
        self._witnessed[node.node_id] = request.witness_size
        yield pb.MessageChunk(head=self._head(stored, node.node_id, request.witness_size))
        if stored.content is not None:
            for window in self._state.blobs.mapped_chunks(stored.content.sha256):
                yield from serialized_data_chunks(window)

    def _head(self, stored: StoredMessage, node_id: int, witness_size: int) -> pb.MessageHead:
        """A delivered message's head, with the latest tree head and the proof to it."""
        head = pb.MessageHead(
            metadata=encode_metadata(stored.metadata()),
            content_size=stored.content.size if stored.content else 0,
            run=self._run_context(stored.run_id),
            audit_proof_from=witness_size,
        )
        tree_head = self._audit.latest()
        if tree_head is not None:
            head.audit_checkpoint = tree_head.note
            if 0 < witness_size <= tree_head.size:
                head.audit_consistency.extend(self._audit.consistency(witness_size, tree_head.size))
        return head

    def _run_context(self, run_id: int) -> pb.RunContext:
        """What a node needs to know of a run: fixed at submission, so read once."""
        context = self._run_contexts.get(run_id)
        if context is None:
            run = self._state.get_run(run_id)
            context = pb.RunContext(
                run_id=run.run_id,
                bundle_sha256=run.bundle_sha256,
                run_config_json=run.run_config_json,
                bundle_signature=str(run.options.get(BUNDLE_SIGNATURE, "")).encode("utf-8"),
            )
            if len(self._run_contexts) >= _RUN_CONTEXTS:
                self._run_contexts.clear()
            self._run_contexts[run_id] = context
        return context

    def PushReply(
        self, request_iterator: Iterator[ChunkPart], context: grpc.ServicerContext
    ) -> pb.PushReplyResponse:
        """A reply streamed as its head, then data (parts from :func:`parse_chunk`)."""
        identity, node = self._caller(context)
        head = head_of(request_iterator, pb.ReplyHead)
        return self._admit_reply(identity, node, head, data_only(request_iterator), context)

    def PushWholeReply(
        self, request: pb.WholeReply, context: grpc.ServicerContext
    ) -> pb.PushReplyResponse:
        identity, node = self._caller(context)
        if not request.HasField("head"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a reply needs its head")
        return self._admit_reply(identity, node, request.head, (request.content,), context)

    def _admit_reply(
        self,
        identity: Identity,
        node: Enrolment,
        head: pb.ReplyHead,
        data: Iterable[bytes | memoryview],
        context: grpc.ServicerContext,
    ) -> pb.PushReplyResponse:
        """Check, store and signal one reply (see the module's docstring)."""
        meta = decode_metadata(head.metadata)
        if meta.src_node_id != node.node_id or meta.dst_node_id != SERVER_NODE_ID:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node.node_id} may only send replies from itself to the server",
            )
        content: BlobRef | None = None
        if not head.is_error:
            if head.content_size > self._max_message_bytes:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"reply of {head.content_size} bytes exceeds the limit of "
                    f"{self._max_message_bytes}",
                )
            content = self._state.blobs.put_stream(
                data,
                max_bytes=head.content_size,
                durable=False,  # a reply body: a restart fails its run anyway
                hold=True,  # until the reply's row points at it
            )
        try:
            stored = self._check_and_store(identity, head, meta, content, context)
        finally:
            if content is not None:
                self._state.blobs.release(content.sha256)
        self._hub.replies(stored.run_id).bump()
        return pb.PushReplyResponse(message_id=stored.message_id)

    def _check_and_store(
        self,
        identity: Identity,
        head: pb.ReplyHead,
        meta: Metadata,
        content: BlobRef | None,
        context: grpc.ServicerContext,
    ) -> StoredMessage:
        content_sha256 = b""
        if content is not None:
            if content.size != head.content_size:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"reply content is {content.size} bytes, its head declared {head.content_size}",
                )
            self._check_frame(content)
            content_sha256 = bytes.fromhex(content.sha256)
        digest = reply_digest(
            head.metadata,
            is_error=head.is_error,
            error_code=head.error_code,
            error_reason=head.error_reason,
            content_sha256=content_sha256,
        )
        if not (self._unsafe_unsigned_replies and not head.signature):
            if identity.signing_key is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "no signing key bound to this node")
            self._verifier.verify(
                SignedEnvelope.parse(head.signature),
                kind=EnvelopeKind.REPLY,
                method=REPLY_SIGNATURE_METHOD,
                body=digest,
                signing_key=identity.signing_key,
            )
        error = (head.error_code, head.error_reason) if head.is_error else None
        return self._state.store_reply(
            meta, content, error, head.signature, actor=actor_of(identity)
        )

    def _check_frame(self, content: BlobRef) -> None:
        """Decode the stored reply in place (copy-on-write map): a bad frame raises WireError."""
        if content.size == 0:
            decode_record_dict(b"")
        path = self._state.blobs.directory / content.sha256
        with path.open("rb") as file:
            view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        # No explicit close: decoded arrays may still export the map while an error
        # unwinds; it is unmapped when the last reference goes.
        decode_record_dict(memoryview(view))

    def Cosign(self, request: pb.CosignRequest, context: grpc.ServicerContext) -> pb.CosignResponse:
        """Store a site's witness cosignature (verified against the stored tree head)."""
        _, node = self._caller(context)
        expected = witness_key_name(node.name)
        try:
            name = parse_verifier_key(request.witness_vkey).name
        except AuditError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cosignature refused: {exc}")
        if name != expected:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node.name!r} may cosign only as witness {expected!r}, not {name!r}",
            )
        try:
            witness = self._audit.add_cosignature(
                request.tree_size, request.signature_line, request.witness_vkey
            )
        except AuditError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cosignature refused: {exc}")
        self._witnessed[node.node_id] = request.tree_size
        _log.info("tree head cosigned", node=node.name, witness=witness, size=request.tree_size)
        return pb.CosignResponse()

    def SendReceipt(
        self, request: pb.ReceiptRequest, context: grpc.ServicerContext
    ) -> pb.ReceiptResponse:
        """Verify and keep a site's signed decision about a run; tell the run's log."""
        identity, node = self._caller(context)
        receipt = Receipt.from_bytes(request.receipt)
        if identity.signing_key is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no signing key bound to this node")
        envelope = SignedEnvelope.parse(request.signature)
        self._verifier.verify(  # fresh and never seen: an old receipt cannot be replayed
            envelope,
            kind=EnvelopeKind.RECEIPT,
            method=RECEIPT_SIGNATURE_METHOD,
            body=request.receipt,
            signing_key=identity.signing_key,
        )
        if receipt.node != node.name:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {node.name!r} may send receipts only in its own name, not {receipt.node!r}",
            )
        run = self._state.get_run(receipt.run_id)
        manifest = RunManifest(
            run_id=run.run_id, bundle_sha256=run.bundle_sha256, run_config_json=run.run_config_json
        )
        if receipt.manifest_sha256 != manifest.sha256:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"receipt names manifest {receipt.manifest_sha256[:16]}..., but run "
                f"{run.run_id}'s manifest is {manifest.sha256[:16]}...",
            )
        stored = StoredReceipt(
            run_id=run.run_id, node_id=node.node_id, node_name=node.name,
            decision=receipt.decision.value, manifest_sha256=receipt.manifest_sha256,
            policy_sha256=receipt.policy_sha256, reason=receipt.reason,
            decided_by=receipt.decided_by, signed_at=envelope.timestamp_ms / 1000,
            received_at=0.0, body=request.receipt, signature=request.signature,
        )  # fmt: skip
        self._state.put_receipt(stored, actor=actor_of(identity))
        self._state.append_log(run.run_id, LogStream.SYSTEM, _receipt_line(receipt))
        _log.info("receipt", run_id=run.run_id, node=node.name, decision=receipt.decision.value)
        return pb.ReceiptResponse()

    def GetBundle(
        self, request: pb.GetBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BundleChunk]:
        self._caller(context)
        run = self._state.get_run(request.run_id)
        if run.status.is_terminal:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} is {run.status.value}"
            )
        bundle = self._state.get_bundle(run.bundle_sha256)
        yield pb.BundleChunk(head=pb.BundleHead(sha256=bundle.sha256, size=bundle.size))
        for chunk in self._state.open_bundle(bundle.sha256):
            yield pb.BundleChunk(data=chunk)


class _Registration:
    """Stands in for a server to take the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def add_fleet_to_server(servicer: FleetServicer, server: grpc.Server) -> None:
    """Serve the Fleet API, its bulk streams through the chunk codec of
    :mod:`appliance.transport` (the same bytes on the wire, fewer copies)."""
    registration = _Registration()
    fleet_pb2_grpc.add_FleetServicer_to_server(servicer, registration)
    handlers = registration.handlers
    handlers["PullMessage"] = handlers["PullMessage"]._replace(response_serializer=serialize_part)
    handlers["PushReply"] = handlers["PushReply"]._replace(
        request_deserializer=parse_chunk(pb.ReplyChunk)
    )
    service = pb.DESCRIPTOR.services_by_name["Fleet"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _receipt_line(receipt: Receipt) -> str:
    """What the data scientist reads in ``greenhouse log`` about a site's decision."""
    if receipt.decision is Decision.PENDING:
        return f"waiting for approval from {receipt.node}"
    by = f" ({receipt.decided_by})" if receipt.decided_by else ""
    if receipt.decision is Decision.ACCEPTED:
        return f"{receipt.node} accepted the run{by}"
    return f"{receipt.node} refused the run{by}: {receipt.reason}"

"""AppIo API servicer: what a run's ServerApp subprocess may do, and nothing more.

Every call is authenticated by the run's secret token (``gh-run-token`` metadata)
and confined to that run: messages it pushes are stamped with its run id and the
server as source; it can only receive replies of its own run. Replies stream back
the moment they are stored (the run's :class:`ReplySignal` wakes the stream), one
at a time. A body goes as an open blob file over the run's body socket when the
ServerApp asks for that (see :mod:`appliance.superlink.body_fds`), otherwise read
from the blob store in chunks.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from appliance.message import SERVER_NODE_ID, Metadata
from appliance.proto import appio_pb2 as pb
from appliance.proto import appio_pb2_grpc
from appliance.state import BlobRef, State, StoredMessage
from appliance.strategy.checkpoint import METRICS, check_artifact_name
from appliance.superlink.appio_grid import TOKEN_HEADER
from appliance.superlink.body_fds import BodySender
from appliance.superlink.hub import Hub
from appliance.superlink.privacy import PrivacyTracker
from appliance.superlink.runs import RunLauncher
from appliance.wire import decode_metadata, encode_metadata

__all__ = ["AppIoServicer"]

#: Longest single wait inside a Receive stream before re-checking the caller.
_WAIT_SLICE_S = 1.0
#: Most replies a Receive stream sends before marking them delivered.
_MARK_BATCH = 256
#: Largest metrics document read for round progress (bigger ones are only stored).
_MAX_METRICS_BYTES = 4 * 2**20


class AppIoServicer(appio_pb2_grpc.AppIoServicer):
    """Serves the AppIo API to ServerApp subprocesses."""

    def __init__(
        self,
        state: State,
        hub: Hub,
        launcher: RunLauncher,
        *,
        max_message_bytes: int,
        on_offline_destination: Callable[[int], None],
        privacy: PrivacyTracker,
    ) -> None:
        self._state = state
        self._privacy = privacy
        self._hub = hub
        self._launcher = launcher
        self._on_offline_destination = on_offline_destination
        self._max_message_bytes = max_message_bytes
        self._rounds_lock = threading.Lock()
        self._rounds_audited: dict[int, int] = {}  # run id -> last round.completed
        # Contents uploaded by a run and not yet named by its messages: held in the
        # blob store (see BlobStore.delete_unreferenced) until named or the run ends.
        self._uploads_lock = threading.Lock()
        self._uploads: dict[int, set[str]] = {}

    def _run_id(self, context: grpc.ServicerContext) -> int:
        token = dict(context.invocation_metadata()).get(TOKEN_HEADER)
        run_id = self._launcher.run_for_token(token) if isinstance(token, str) else None
        if run_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown run token")
        return run_id  # type: ignore[return-value]

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        run_id = self._run_id(context)
        run = self._state.get_run(run_id)
        self._launcher.mark_running(run_id)
        return pb.GetRunResponse(
            run_id=run.run_id, run_config_json=run.run_config_json, bundle_sha256=run.bundle_sha256
        )

    def GetNodes(
        self, request: pb.GetNodesRequest, context: grpc.ServicerContext
    ) -> pb.GetNodesResponse:
        self._run_id(context)
        return pb.GetNodesResponse(node_ids=self._state.online_node_ids())

    def PushContent(
        self, request_iterator: Iterator[pb.ContentChunk], context: grpc.ServicerContext
    ) -> pb.PushContentResponse:
        run_id = self._run_id(context)
        blob = self._state.blobs.put_stream(
            (chunk.data for chunk in request_iterator),
            max_bytes=self._max_message_bytes,
            durable=False,  # a message body: a restart fails its run anyway
            hold=True,
        )
        with self._uploads_lock:
            uploads = self._uploads.setdefault(run_id, set())
            held_already = blob.sha256 in uploads
            uploads.add(blob.sha256)
        if held_already:  # one hold per run and content
            self._state.blobs.release(blob.sha256)
        return pb.PushContentResponse(content_ref=blob.sha256, size=blob.size)

    def forget_run(self, run_id: int) -> None:
        """Release the holds of an ended run's unnamed uploads."""
        with self._uploads_lock:
            uploads = self._uploads.pop(run_id, set())
        for sha256 in uploads:
            self._state.blobs.release(sha256)

    def PushMessages(
        self, request: pb.PushMessagesRequest, context: grpc.ServicerContext
    ) -> pb.PushMessagesResponse:
        run_id = self._run_id(context)
        inline: list[str] = []  # held until the messages naming them are stored
        try:
            stored = self._queue(run_id, request, inline, context)
        finally:
            for sha256 in inline:
                self._state.blobs.release(sha256)
        named = {m.content.sha256 for m in stored if m.content is not None}
        with self._uploads_lock:
            uploads = self._uploads.get(run_id, set())
            released = uploads & named
            uploads -= released
        for sha256 in released:
            self._state.blobs.release(sha256)
        for message in stored:
            if self._hub.is_connected(message.dst_node_id):
                self._hub.notify_message(
                    message.dst_node_id,
                    message.message_id,
                    run_id,
                    content_size=message.content.size if message.content else 0,
                )
            else:  # answered for the node if it does not come back within the grace period
                self._on_offline_destination(message.dst_node_id)
        return pb.PushMessagesResponse(message_ids=[m.message_id for m in stored])

    def _queue(
        self,
        run_id: int,
        request: pb.PushMessagesRequest,
        inline: list[str],
        context: grpc.ServicerContext,
    ) -> list[StoredMessage]:
        items: list[tuple[Metadata, BlobRef | None]] = []
        sizes: dict[str, int] = {}
        for outgoing in request.messages:
            meta = decode_metadata(outgoing.metadata)
            if meta.run_id != run_id or meta.src_node_id != SERVER_NODE_ID:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"message {meta.message_id} is not a request of run {run_id}",
                )
            content = None
            if outgoing.content_ref and outgoing.content:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"message {meta.message_id} has both a content reference and inline content",
                )
            if ref := outgoing.content_ref:
                if ref not in sizes:
                    sizes[ref] = self._state.blobs.size(ref)
                content = BlobRef(sha256=ref, size=sizes[ref])
            elif outgoing.content:
                content = self._state.blobs.put_stream(
                    [outgoing.content],
                    max_bytes=self._max_message_bytes,
                    durable=False,
                    hold=True,
                )
                inline.append(content.sha256)
            items.append((meta, content))
        return self._state.queue_messages(items)  # one transaction: all or none

    def Receive(
        self, request: pb.ReceiveRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReceivedChunk]:
        run_id = self._run_id(context)
        remaining = set(request.message_ids)
        deadline = None if request.timeout_s < 0 else time.monotonic() + request.timeout_s
        signal = self._hub.replies(run_id)
        bodies = self._launcher.body_sender(run_id) if request.bodies_by_fd else None
        # Replies that went out whole, marked delivered in one transaction when the
        # stream ends or a wait passes a slice (``remaining`` keeps them from going twice).
        streamed: list[str] = []
        try:
            while remaining and context.is_active():
                version = signal.version
                for reply in self._state.replies_for(run_id, remaining):
                    yield from self._stream_reply(reply, bodies)
                    streamed.append(reply.message_id)
                    remaining.discard(reply.reply_to_message_id)
                if not remaining:
                    return
                wait = (
                    _WAIT_SLICE_S
                    if deadline is None
                    else min(deadline - time.monotonic(), _WAIT_SLICE_S)
                )
                if wait <= 0:
                    return
                woken = signal.wait_past(version, wait) != version
                if streamed and (len(streamed) >= _MARK_BATCH or not woken):
                    self._state.mark_replies_delivered(streamed)
                    streamed.clear()
        finally:
            if streamed:
                self._state.mark_replies_delivered(streamed)

    def _stream_reply(
        self, reply: StoredMessage, bodies: BodySender | None
    ) -> Iterator[pb.ReceivedChunk]:
        head = pb.ReplyHead(metadata=encode_metadata(reply.metadata()))
        if reply.error_code is not None:
            head.is_error = True
            head.error_code = reply.error_code
            head.error_reason = reply.error_reason or ""
            yield pb.ReceivedChunk(head=head)
            return
        head.content_size = reply.content.size if reply.content else 0
        if bodies is not None and reply.content is not None:
            fd = self._state.blobs.open_fd(reply.content.sha256)
            try:
                head.body_ticket = bodies.send(fd) or 0
            finally:
                os.close(fd)
        yield pb.ReceivedChunk(head=head)
        if reply.content is not None and not head.body_ticket:
            for chunk in self._state.blobs.open_chunks(reply.content.sha256):
                yield pb.ReceivedChunk(data=chunk)

    def PutArtifact(
        self, request_iterator: Iterator[pb.ArtifactChunk], context: grpc.ServicerContext
    ) -> pb.PutArtifactResponse:
        run_id = self._run_id(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "name":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an artifact starts with its name")
        name = check_artifact_name(first.name)
        blob = self._state.blobs.put_stream(
            (chunk.data for chunk in request_iterator),
            max_bytes=self._max_message_bytes,
            hold=True,
        )
        try:
            self._state.put_artifact(run_id, name, blob)
        finally:
            self._state.blobs.release(blob.sha256)
        if name == METRICS and blob.size <= _MAX_METRICS_BYTES:
            self._audit_rounds(run_id, blob)
        return pb.PutArtifactResponse(sha256=blob.sha256, size=blob.size)

    def _audit_rounds(self, run_id: int, blob: BlobRef) -> None:
        """Record ``round.completed`` for each round the run's metrics newly list.

        The strategy rewrites ``metrics.json`` after every round; the round
        numbers come from it, and who took part from the SuperLink's own
        record of replies (``State.record_round``), not from the ServerApp.
        """
        try:
            document = json.loads(b"".join(self._state.blobs.open_chunks(blob.sha256)))
            rounds = sorted(
                {
                    r["round"]
                    for r in document.get("rounds", [])
                    if isinstance(r, dict) and type(r.get("round")) is int and r["round"] > 0
                }
            )
        except (ValueError, AttributeError, TypeError):
            return  # not a metrics document this SuperLink understands: stored only
        with self._rounds_lock:
            done = self._rounds_audited.get(run_id, 0)
            new = [r for r in rounds if r > done]
            if new:
                self._rounds_audited[run_id] = new[-1]
        for server_round in new:
            self._state.record_round(run_id, str(server_round))
        if new:
            run_config = json.loads(self._state.get_run(run_id).run_config_json or "{}")
            self._privacy.rounds_done(run_id, run_config, new[-1])

    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.FinishResponse:
        run_id = self._run_id(context)
        self._launcher.report(run_id, failed=request.failed, reason=request.reason)
        return pb.FinishResponse()

"""The Grid a ServerApp subprocess uses: the SuperLink's AppIo API over a local channel.

Content shared by several messages (FedAvg sends one model to every node) is
encoded and uploaded once, then referenced by each message, so pushing a round costs
one model upload, not one per node. Small contents (SecAgg+'s per-node key shares)
travel inline in the PushMessages call instead: no upload call each.

Replies are yielded as the SuperLink streams them, each decoded from one buffer: the
ServerApp holds one reply at a time. Given the run's body socket, the grid asks for
bodies as open files and reads each with one call (see :mod:`appliance.superlink.body_fds`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import grpc

from appliance.errors import GridError
from appliance.grid import Grid
from appliance.message import SERVER_NODE_ID, Error, Message
from appliance.proto import appio_pb2 as pb
from appliance.proto.appio_pb2_grpc import AppIoStub
from appliance.records import RecordDict
from appliance.superlink.body_fds import BodyReceiver, map_body
from appliance.transport import Assembler, TransportError, iter_chunks
from appliance.wire import decode_metadata, decode_record_dict, encode_metadata, encode_record_dict

__all__ = ["TOKEN_HEADER", "AppIoGrid"]

TOKEN_HEADER = "gh-run-token"  # noqa: S105 -- a header name, not a secret
#: Largest content frame sent inline, and most inline bytes in one PushMessages call.
INLINE_CONTENT_BYTES = 64 * 1024
INLINE_BATCH_BYTES = 2 * 1024 * 1024


class _ArtifactSink:
    """A strategy ``CheckpointSink`` that stores each file with the run on the SuperLink."""

    def __init__(self, stub: AppIoStub, auth: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._auth = auth

    def put(self, name: str, data: bytes) -> None:
        chunks = [pb.ArtifactChunk(name=name)]
        chunks += [pb.ArtifactChunk(data=chunk) for chunk in iter_chunks(data)]
        self._stub.PutArtifact(iter(chunks), metadata=self._auth)


class AppIoGrid(Grid):
    """A :class:`Grid` backed by the SuperLink's AppIo API."""

    def __init__(
        self,
        channel: grpc.Channel,
        token: str,
        *,
        max_reply_bytes: int,
        bodies: BodyReceiver | None = None,
    ) -> None:
        self._stub = AppIoStub(channel)
        self._auth = ((TOKEN_HEADER, token),)
        self._max_reply_bytes = max_reply_bytes
        self._bodies = bodies
        run = self._stub.GetRun(pb.GetRunRequest(), metadata=self._auth)
        self._run_id = run.run_id
        self.run_config_json = run.run_config_json

    @property
    def run_id(self) -> int:
        return self._run_id

    @property
    def checkpoint_sink(self) -> _ArtifactSink:
        """Where strategies save checkpoints, the final model and metrics: the SuperLink."""
        return _ArtifactSink(self._stub, self._auth)

    def get_node_ids(self) -> list[int]:
        return list(self._stub.GetNodes(pb.GetNodesRequest(), metadata=self._auth).node_ids)

    def _upload(self, frame: bytes) -> str:
        chunks = (pb.ContentChunk(data=chunk) for chunk in iter_chunks(frame))
        return str(self._stub.PushContent(chunks, metadata=self._auth).content_ref)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        outgoing: list[pb.OutgoingMessage] = []
        encoded: dict[int, tuple[str, bytes]] = {}  # content id -> (reference, inline frame)
        keep_alive: list[RecordDict] = []  # ids stay unique while the objects live
        inline_bytes = 0
        for message in messages:
            meta = message.metadata
            if message.has_error() or meta.reply_to_message_id:
                raise GridError("a ServerApp can only push new messages, not replies")
            if meta.run_id not in (0, self._run_id):
                raise GridError(
                    f"message is for run {meta.run_id}, this grid serves run {self._run_id}"
                )
            content = message.content
            if id(content) not in encoded:
                frame = encode_record_dict(content)
                small = len(frame) <= INLINE_CONTENT_BYTES
                if small and inline_bytes + len(frame) <= INLINE_BATCH_BYTES:
                    encoded[id(content)] = ("", frame)
                    inline_bytes += len(frame)
                else:
                    encoded[id(content)] = (self._upload(frame), b"")
                keep_alive.append(content)
            ref, inline = encoded[id(content)]
            stamped = message.with_metadata(run_id=self._run_id, src_node_id=SERVER_NODE_ID)
            outgoing.append(
                pb.OutgoingMessage(
                    metadata=encode_metadata(stamped.metadata), content_ref=ref, content=inline
                )
            )
        if not outgoing:
            return []
        response = self._stub.PushMessages(
            pb.PushMessagesRequest(messages=outgoing), metadata=self._auth
        )
        return list(response.message_ids)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return list(self.receive(message_ids, timeout=0.0))

    def receive(
        self, message_ids: Iterable[str], *, timeout: float | None = None
    ) -> Iterator[Message]:
        ids = list(message_ids)
        if not ids:
            return
        request = pb.ReceiveRequest(
            message_ids=ids,
            timeout_s=-1.0 if timeout is None else timeout,
            bodies_by_fd=self._bodies is not None,
        )
        stream = self._stub.Receive(request, metadata=self._auth)
        head: pb.ReplyHead | None = None
        assembler: Assembler | None = None
        for chunk in stream:
            if chunk.HasField("head"):
                if head is not None:
                    yield self._finish(head, assembler)
                head = chunk.head
                assembler = (
                    None
                    if head.is_error or head.body_ticket
                    else Assembler(head.content_size, self._max_reply_bytes)
                )
            elif assembler is not None:
                assembler.add(chunk.data)
            else:
                raise GridError("the SuperLink sent reply data where none was due")
        if head is not None:
            yield self._finish(head, assembler)

    def _finish(self, head: pb.ReplyHead, assembler: Assembler | None) -> Message:
        metadata = decode_metadata(head.metadata)
        if head.is_error:
            return Message.from_parts(metadata, Error(head.error_code, head.error_reason))
        if assembler is not None:
            return Message.from_parts(metadata, decode_record_dict(assembler.finish()))
        if self._bodies is None:
            raise GridError("the SuperLink sent a reply body as a file this grid did not ask for")
        fd = self._bodies.take(head.body_ticket)
        if head.content_size > self._max_reply_bytes:
            os.close(fd)
            raise TransportError(
                f"body of {head.content_size} bytes exceeds the limit of {self._max_reply_bytes}"
            )
        body = map_body(fd, head.content_size)
        return Message.from_parts(metadata, decode_record_dict(body))

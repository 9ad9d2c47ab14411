"""Reply bodies from the AppIo servicer to an AppIoGrid: as open files, or streamed.

A real gRPC server on 127.0.0.1 serves :class:`AppIoServicer` over a real SQLite
state; a stand-in launcher holds the run's token and a real :class:`BodySender`.
"""

import hashlib
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from appliance.errors import GridError
from appliance.message import Error, Metadata
from appliance.proto import appio_pb2 as pb
from appliance.proto.appio_pb2_grpc import AppIoStub, add_AppIoServicer_to_server
from appliance.records import ArrayRecord, MetricRecord, RecordDict
from appliance.state import RunStatus, State, StoredMessage
from appliance.superlink.appio import AppIoServicer
from appliance.superlink.appio_grid import TOKEN_HEADER, AppIoGrid
from appliance.superlink.body_fds import BodyReceiver, BodySender, body_socket_pair, map_body
from appliance.superlink.hub import Hub
from appliance.superlink.privacy import PrivacyTracker
from appliance.transport import TransportError
from appliance.wire import decode_record_dict, encode_record_dict

TOKEN = "run-token-for-tests"
MAX_BYTES = 16 * 1024 * 1024


class CountingSender(BodySender):
    def __init__(self, sock):
        super().__init__(sock)
        self.attempts = 0
        self.sent: list[int] = []

    def send(self, fd):
        self.attempts += 1
        ticket = super().send(fd)
        if ticket is not None:
            self.sent.append(ticket)
        return ticket


class CountingReceiver(BodyReceiver):
    def __init__(self, sock):
        super().__init__(sock)
        self.taken: list[int] = []

    def take(self, ticket, timeout_s=30.0):
        fd = super().take(ticket, timeout_s)
        self.taken.append(ticket)
        return fd


class StandInLauncher:
    """What AppIoServicer asks of a RunLauncher, for one run."""

    def __init__(self, run_id: int, sender: BodySender) -> None:
        self.run_id = run_id
        self.sender = sender
        self.marked: list[int] = []
        self.reports: list[tuple[int, bool, str]] = []

    def run_for_token(self, token: str) -> int | None:
        return self.run_id if token == TOKEN else None

    def mark_running(self, run_id: int) -> None:
        self.marked.append(run_id)

    def body_sender(self, run_id: int) -> BodySender | None:
        return self.sender if run_id == self.run_id else None

    def report(self, run_id: int, *, failed: bool, reason: str) -> None:
        self.reports.append((run_id, failed, reason))


@dataclass
class World:
    state: State
    run_id: int
    node_ids: list[int]
    sender: CountingSender
    receiver: CountingReceiver
    launcher: StandInLauncher
    cleanups: list = field(default_factory=list)

    def serve(self, servicer_cls: type[AppIoServicer] = AppIoServicer) -> grpc.Channel:
        privacy = PrivacyTracker(self.state)
        self.cleanups.append(privacy.close)
        servicer = servicer_cls(
            self.state,
            Hub(),
            self.launcher,  # type: ignore[arg-type]
            max_message_bytes=MAX_BYTES,
            on_offline_destination=lambda node_id: None,
            privacy=privacy,
        )
        server = grpc.server(futures.ThreadPoolExecutor(4))
        add_AppIoServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.cleanups.append(lambda: server.stop(None).wait(5))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.cleanups.append(channel.close)
        return channel

    def reply(
        self, records: RecordDict | None, node: int = 0, error: tuple[int, str] | None = None
    ) -> tuple[str, StoredMessage]:
        """Queue a request to ``node_ids[node]``, deliver it, store its reply."""
        node_id = self.node_ids[node]
        request = Metadata(
            run_id=self.run_id,
            message_id=uuid.uuid4().hex,
            src_node_id=0,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id="round-1",
            message_type="train",
            ttl=600.0,
            created_at=time.time(),
        )
        request_body = self.state.blobs.put_bytes(b"request body")
        self.state.queue_messages([(request, request_body)])
        self.state.mark_delivered(request.message_id, node_id)
        reply = Metadata(
            run_id=self.run_id,
            message_id=uuid.uuid4().hex,
            src_node_id=node_id,
            dst_node_id=0,
            reply_to_message_id=request.message_id,
            group_id="round-1",
            message_type="train",
            ttl=600.0,
            created_at=time.time(),
        )
        content = (
            None if records is None else self.state.blobs.put_bytes(encode_record_dict(records))
        )
        stored = self.state.store_reply(reply, content, error, None)
        return request.message_id, stored


@pytest.fixture
def world(tmp_path):
    state = State.open(f"sqlite:///{tmp_path / 's.db'}", data_dir=tmp_path / "data")
    parent, child = body_socket_pair()
    sender, receiver = CountingSender(parent), CountingReceiver(child)
    cleanups: list = []
    try:
        node_ids = [
            state.enrol_node(name, _fp(f"cert:{name}"), _fp(f"key:{name}"), "admin").node_id
            for name in ("hospital-a", "hospital-b")
        ]
        bundle = state.put_bundle([b"bundle bytes"], max_bytes=1024)
        run = state.create_run("alice", bundle.sha256, {"lr": 0.1}, {"num-rounds": 1})
        state.transition_run(run.run_id, RunStatus.STARTING)
        state.transition_run(run.run_id, RunStatus.RUNNING)
        launcher = StandInLauncher(run.run_id, sender)
        yield World(state, run.run_id, node_ids, sender, receiver, launcher, cleanups)
    finally:
        for cleanup in reversed(cleanups):  # channels, then servers, then trackers
            cleanup()
        receiver.close()
        sender.close()
        state.close()


def _fp(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def sample(seed: int = 0, n: int = 400_000) -> RecordDict:
    """A reply of about 1.6 MB: more than one streamed chunk."""
    weights = np.arange(n, dtype=np.float32) + seed
    return RecordDict(
        {
            "params": ArrayRecord({"w": weights, "b": np.array([seed, -1], dtype=np.int64)}),
            "metrics": MetricRecord({"num-examples": 100 + seed}),
        }
    )


def _grid(channel, bodies=None, max_reply_bytes=MAX_BYTES):
    return AppIoGrid(channel, TOKEN, max_reply_bytes=max_reply_bytes, bodies=bodies)


def test_a_body_arrives_as_an_open_file(world):
    channel = world.serve()
    request_id, stored = world.reply(sample(1))
    grid = _grid(channel, bodies=world.receiver)
    assert grid.run_id == world.run_id
    assert world.launcher.marked == [world.run_id]
    [message] = list(grid.receive([request_id], timeout=5))
    assert message.content == sample(1)
    assert message.metadata == stored.metadata()
    assert len(world.sender.sent) == 1  # sent as a file...
    assert world.receiver.taken == world.sender.sent  # ...and claimed by its ticket
    assert world.state.replies_for(world.run_id, [request_id]) == []  # marked delivered


def test_the_head_names_the_ticket_and_no_data_follows(world):
    channel = world.serve()
    request_id, stored = world.reply(sample(2))
    stub = AppIoStub(channel)
    request = pb.ReceiveRequest(message_ids=[request_id], timeout_s=5, bodies_by_fd=True)
    chunks = list(stub.Receive(request, metadata=((TOKEN_HEADER, TOKEN),)))
    assert [c.WhichOneof("part") for c in chunks] == ["head"]
    head = chunks[0].head
    assert world.sender.sent == [head.body_ticket]
    assert head.content_size == stored.content.size
    body = map_body(world.receiver.take(head.body_ticket, timeout_s=5), head.content_size)
    assert hashlib.sha256(body).hexdigest() == stored.content.sha256
    assert decode_record_dict(body) == sample(2)
    # Delivered: the stored copy is gone, the descriptor it went by still read it.
    assert not world.state.blobs.exists(stored.content.sha256)


def test_without_a_receiver_the_body_streams(world):
    channel = world.serve()
    request_id, stored = world.reply(sample(3))
    [message] = list(_grid(channel).receive([request_id], timeout=5))
    assert message.content == sample(3)
    assert message.metadata == stored.metadata()
    assert world.sender.attempts == 0
    assert world.receiver.taken == []


def test_a_closed_body_socket_falls_back_to_streaming(world):
    channel = world.serve()
    request_id, _ = world.reply(sample(4))
    world.receiver.close()  # the ServerApp's end is gone: send() returns None
    [message] = list(_grid(channel, bodies=world.receiver).receive([request_id], timeout=5))
    assert message.content == sample(4)
    assert world.sender.attempts == 1
    assert world.sender.sent == []
    assert world.receiver.taken == []


def test_a_full_body_socket_falls_back_to_streaming(world, tmp_path):
    channel = world.serve()
    filler = tmp_path / "filler"
    filler.write_bytes(b"f")
    with open(filler, "rb") as file:
        for _ in range(100_000):
            if world.sender.send(file.fileno()) is None:
                break
        else:
            pytest.fail("the body socket never filled up")
    queued = len(world.sender.sent)
    request_id, _ = world.reply(sample(5))
    [message] = list(_grid(channel, bodies=world.receiver).receive([request_id], timeout=5))
    assert message.content == sample(5)
    assert len(world.sender.sent) == queued  # the reply's descriptor did not fit
    assert world.receiver.taken == []


def test_several_replies_and_an_error_by_file(world):
    channel = world.serve()
    first, _ = world.reply(sample(6), node=0)
    failed, _ = world.reply(None, node=1, error=(3, "ClientApp raised"))
    grid = _grid(channel, bodies=world.receiver)
    got = {m.metadata.reply_to_message_id: m for m in grid.receive([first, failed], timeout=5)}
    assert set(got) == {first, failed}
    assert got[first].content == sample(6)
    assert got[failed].has_error()
    assert got[failed].error == Error(3, "ClientApp raised")
    assert len(world.sender.sent) == 1  # an error has no body to send
    assert world.receiver.taken == world.sender.sent


def test_a_body_over_the_limit_is_refused_on_the_file_path(world):
    channel = world.serve()
    request_id, stored = world.reply(sample(7))
    grid = _grid(channel, bodies=world.receiver, max_reply_bytes=stored.content.size - 1)
    with pytest.raises(TransportError, match=f"body of {stored.content.size} bytes exceeds"):
        list(grid.receive([request_id], timeout=5))
    assert len(world.sender.sent) == 1  # it went by file, and was refused before reading
    assert world.receiver.taken == world.sender.sent  # claimed and closed, not left queued


class _FilesUnasked(AppIoServicer):
    """Sends bodies as files even to a grid that did not ask for them."""

    def Receive(self, request, context):
        request.bodies_by_fd = True
        return super().Receive(request, context)


def test_a_file_the_grid_did_not_ask_for_is_refused(world):
    channel = world.serve(_FilesUnasked)
    request_id, _ = world.reply(sample(8))
    with pytest.raises(GridError, match="did not ask for"):
        list(_grid(channel).receive([request_id], timeout=5))
    assert len(world.sender.sent) == 1


class _DataAfterTicket(AppIoServicer):
    """Sends data chunks after a head that named a file."""

    def Receive(self, request, context):
        for chunk in super().Receive(request, context):
            yield chunk
            if chunk.HasField("head") and chunk.head.body_ticket:
                yield pb.ReceivedChunk(data=b"unexpected")


def test_data_after_a_ticketed_head_is_refused(world):
    channel = world.serve(_DataAfterTicket)
    request_id, _ = world.reply(sample(9))
    with pytest.raises(GridError, match="reply data where none was due"):
        list(_grid(channel, bodies=world.receiver).receive([request_id], timeout=5))
    assert len(world.sender.sent) == 1

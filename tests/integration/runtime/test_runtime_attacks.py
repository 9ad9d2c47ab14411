"""Bad peers with valid certificates: the SuperLink refuses them and keeps serving."""

from __future__ import annotations

import contextlib
import io

import grpc
import pytest
from cryptography import x509
from runtime_harness import Federation, start, wait_for

from appliance.cli import main as cli_main
from appliance.message import Message
from appliance.proto import fleet_pb2 as pb
from appliance.proto.fleet_pb2_grpc import FleetStub
from appliance.records import RecordDict
from appliance.wire import encode_metadata
from certs import SigningInterceptor, client_credentials, load_signing_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _node_channel(fed: Federation, name: str) -> grpc.Channel:
    credentials = client_credentials(
        ca_certificate=fed.pki.ca, certificate=fed.pki.cert(name), key=fed.pki.key(name)
    )
    channel = grpc.secure_channel(f"127.0.0.1:{fed.fleet_port}", credentials)
    return grpc.intercept_channel(
        channel, SigningInterceptor(load_signing_key(fed.pki.signing_key(name)))
    )


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _stream(stub: FleetStub, head: pb.ReplyHead, data: list[bytes] = ()) -> pb.PushReplyResponse:
    chunks = [pb.ReplyChunk(head=head), *(pb.ReplyChunk(data=d) for d in data)]
    return stub.PushReply(iter(chunks))


def _whole(stub: FleetStub, head: pb.ReplyHead, data: list[bytes] = ()) -> pb.PushReplyResponse:
    return stub.PushWholeReply(pb.WholeReply(head=head, content=b"".join(data)))


@pytest.mark.parametrize("_push", [_stream, _whole], ids=["streamed", "whole"])
def test_garbage_and_oversized_requests_are_refused_and_serving_goes_on(
    federation: Federation, _push
):
    start(federation, 1)
    channel = _node_channel(federation, "n1")
    stub = FleetStub(channel)
    garbage = channel.unary_unary("/greenhouse.fleet.v1.Fleet/Hello")  # raw bytes in and out
    code, detail = _code(lambda: garbage(b"\xff\x00garbage\x13\x37"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, detail

    unknown = channel.unary_unary("/greenhouse.fleet.v1.Fleet/DropTables")
    code, detail = _code(lambda: unknown(b""))
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED), detail

    code, detail = _code(lambda: _push(stub, pb.ReplyHead(metadata=b"not metadata")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata" in detail.lower()

    node_id = stub.Hello(pb.HelloRequest()).node_id
    request = Message(RecordDict(), dst_node_id=node_id, message_type="train").with_metadata(
        run_id=7
    )
    reply_meta = encode_metadata(Message(RecordDict(), reply_to=request).metadata)
    huge = pb.ReplyHead(metadata=reply_meta, content_size=64 * 2**30)
    code, detail = _code(lambda: _push(stub, huge))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, detail

    lying = pb.ReplyHead(metadata=reply_meta, content_size=10)
    code, detail = _code(lambda: _push(stub, lying, [b"x" * 4096]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, detail

    not_a_frame = pb.ReplyHead(metadata=reply_meta, content_size=16)
    code, detail = _code(lambda: _push(stub, not_a_frame, [b"y" * 16]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, detail

    if _push is _stream:  # the chunk codec: a second head, and a chunk cut short
        second_head = pb.ReplyHead(metadata=reply_meta, content_size=16)
        code, detail = _code(
            lambda: stub.PushReply(
                iter([pb.ReplyChunk(head=second_head), pb.ReplyChunk(head=second_head)])
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, detail
        assert "one head" in detail
        raw_push = channel.stream_unary("/greenhouse.fleet.v1.Fleet/PushReply")  # raw bytes
        head_bytes = pb.ReplyChunk(head=second_head).SerializeToString()
        code, detail = _code(lambda: raw_push(iter([head_bytes, b"\x12\x10cut short"])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, detail
        assert "could not be decoded" in detail

    unsigned = pb.ReplyHead(metadata=reply_meta, is_error=True, error_code=1, error_reason="x")
    code, detail = _code(lambda: _push(stub, unsigned))
    assert code == grpc.StatusCode.UNAUTHENTICATED, detail

    impersonation = encode_metadata(
        Message(RecordDict(), reply_to=request.with_metadata(dst_node_id=node_id + 1)).metadata
    )
    code, detail = _code(lambda: _push(stub, pb.ReplyHead(metadata=impersonation, is_error=True)))
    assert code == grpc.StatusCode.PERMISSION_DENIED, detail

    # The SuperLink is still serving, and the honest node is still online.
    assert stub.Hello(pb.HelloRequest()).node_id == node_id
    assert "n1" in federation.online()
    channel.close()


def test_revoked_node_is_cut_off_and_refused(federation: Federation):
    start(federation, 2)
    serial = format(
        x509.load_pem_x509_certificate(federation.pki.cert("n2").read_bytes()).serial_number, "x"
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert (
            cli_main(
                [
                    "ca",
                    "revoke",
                    serial,
                    "--dir",
                    str(federation.pki.ca_dir),
                    "--reason",
                    "key-compromise",
                ]
            )
            == 0
        )
    # The PKI is per module: this revocation does not leak into other test modules.
    wait_for(lambda: "n2" not in federation.online(), 20, "the revoked node to be cut off")
    channel = _node_channel(federation, "n2")
    code, detail = _code(lambda: FleetStub(channel).Hello(pb.HelloRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in detail
    channel.close()
    assert "n1" in federation.online()

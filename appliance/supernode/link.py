"""The SuperNode's connection to the SuperLink: channel, stub and signer as one value.

A SIGHUP that finds a renewed certificate builds a second :class:`Link` next to the
one in use and swaps it in only once the SuperLink has accepted it (a Hello). A
thread that reads the SuperNode's link once therefore signs with the key of the
channel it calls on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from appliance.logs import get_logger
from appliance.proto import fleet_pb2 as pb
from appliance.proto.fleet_pb2_grpc import FleetStub
from appliance.transport import parse_chunk, serialize_part
from certs import SigningInterceptor, load_certificate, node_credentials
from certs.roles import Role
from certs.signing import EnvelopeSigner
from certs.unsafe_dev import UnsafeIdentityHeader
from certs.verify import expiry_warning

__all__ = ["Link", "fleet_stub", "insecure_link", "secure_link"]

_log = get_logger("appliance.supernode")

_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 2**20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def fleet_stub(channel: grpc.Channel) -> FleetStub:
    """The generated stub, its bulk streams through the chunk codec of
    :mod:`appliance.transport`: ``PullMessage`` yields the head, then data as views of
    the received bytes; ``PushReply`` takes serialized data chunks after the head."""
    stub = FleetStub(channel)
    service = "/" + pb.DESCRIPTOR.services_by_name["Fleet"].full_name
    stub.PullMessage = channel.unary_stream(
        f"{service}/PullMessage",
        request_serializer=pb.PullMessageRequest.SerializeToString,
        response_deserializer=parse_chunk(pb.MessageChunk),
        _registered_method=True,
    )
    stub.PushReply = channel.stream_unary(
        f"{service}/PushReply",
        request_serializer=serialize_part,
        response_deserializer=pb.PushReplyResponse.FromString,
        _registered_method=True,
    )
    return stub


@dataclass(frozen=True)
class Link:
    """One channel to the SuperLink, its stub and the key that signs on it."""

    channel: grpc.Channel  # the raw channel: closing it ends every call on it
    stub: FleetStub
    signer: EnvelopeSigner | None  # None: insecure development mode
    name: str  # the node name its certificate (or the insecure claim) carries
    fingerprint: str = ""  # SHA-256 of the certificate ("" when insecure)
    serial: str = ""


def secure_link(
    superlink: str,
    *,
    ca_certificate: Path | None,
    certificate: Path | None,
    key: Path | None,
    signing_key: Path | None,
) -> Link:
    """An mTLS link signing every request, after checking the three files agree.

    Raises:
        ValueError: a file is not given.
        CertError: the certificate would be refused or a key does not match it.
    """
    if ca_certificate is None or certificate is None or key is None or signing_key is None:
        raise ValueError("a SuperNode needs --ca, --cert, --key and --signing-key")
    now = datetime.now(UTC)
    warning = expiry_warning(load_certificate(certificate), now)
    if warning:
        _log.warning("node certificate expiring", detail=warning)
    node = node_credentials(
        ca_certificate=ca_certificate,
        certificate=certificate,
        key=key,
        signing_key=signing_key,
        now=now,
    )
    raw = grpc.secure_channel(superlink, node.channel_credentials, options=_OPTIONS)
    channel = grpc.intercept_channel(raw, SigningInterceptor(node.signing_key))
    return Link(
        channel=raw,
        stub=fleet_stub(channel),
        signer=EnvelopeSigner(node.signing_key),
        name=node.identity.name,
        fingerprint=node.identity.certificate_fingerprint,
        serial=node.identity.serial_hex,
    )


def insecure_link(superlink: str, name: str) -> Link:
    """DEVELOPMENT ONLY: plain TCP, the node claims ``name``, replies unsigned."""
    _log.warning("INSECURE MODE: plain TCP, claimed identity, unsigned replies")
    raw = grpc.insecure_channel(superlink, options=_OPTIONS)
    channel = grpc.intercept_channel(raw, UnsafeIdentityHeader(Role.NODE, name))
    return Link(channel=raw, stub=fleet_stub(channel), signer=None, name=name)

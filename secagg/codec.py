"""SecAgg+ messages to and from :class:`~appliance.message.Message` content.

The only place where SecAgg+ protocol values become records and back. Decoding
validates every field (presence, type, size) and builds the frozen messages of
:mod:`secagg.messages`, raising :class:`~secagg.errors.MalformedMessage` on any
problem; the sender of a client message is always the routing sender of the reply
(``metadata.src_node_id``), never a value from the content.

Layout. Each stage has its own message type (:data:`MESSAGE_TYPES`), so an app
without the SecAgg+ mod answers "unknown message type" instead of training and
sending a plaintext update. Protocol fields travel in the ConfigRecord ``"secagg"``;
node-id lists as packed big-endian uint64 bytes; the masked input in the
ArrayRecord ``"secagg-masked"`` (one uint32 or uint64 array named ``"vector"``).
The SETUP message also carries the strategy's own records (model and config).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, RecordDict
from secagg.errors import MalformedMessage, ParameterError
from secagg.messages import (
    AdvertisedKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from secagg.params import RoundConfig
from secagg.primitives.shamir import element_from_bytes, element_to_bytes

__all__ = [
    "MASKED_RECORD",
    "MESSAGE_TYPES",
    "PROTOCOL_RECORD",
    "STAGE_OF_TYPE",
    "TrainSpec",
    "decode_reply",
    "decode_request",
    "decode_setup",
    "encode_reply",
    "encode_request",
    "encode_setup",
]

#: The message type of each stage (server request and client reply share it).
MESSAGE_TYPES: dict[Stage, str] = {
    Stage.SETUP: "train.secagg-setup",
    Stage.SHARE_KEYS: "train.secagg-share-keys",
    Stage.MASKED_INPUT: "train.secagg-masked-input",
    Stage.CONSISTENCY: "train.secagg-consistency",
    Stage.UNMASK: "train.secagg-unmask",
}
STAGE_OF_TYPE: dict[str, Stage] = {v: k for k, v in MESSAGE_TYPES.items()}
PROTOCOL_RECORD = "secagg"
MASKED_RECORD = "secagg-masked"
_ID = struct.Struct(">Q")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSpec:
    """Where the model, weight and metrics are in the strategy's train messages and replies."""

    arrays_key: str = "arrays"
    weighted_by_key: str = "num-examples"
    metric_keys: tuple[str, ...] = ()


def _pack_ids(ids: Iterable[int]) -> bytes:
    return b"".join(_ID.pack(node) for node in ids)


def _fail(stage: Stage, node: int | None, what: str) -> MalformedMessage:
    return MalformedMessage(f"SecAgg+ {stage.value} message: {what}", node_id=node, stage=stage)


class _Reader:
    """Typed access to one message's protocol record; every failure is MalformedMessage."""

    def __init__(self, content: RecordDict, stage: Stage, node: int | None) -> None:
        self.stage, self.node = stage, node
        record = content.get(PROTOCOL_RECORD)
        if not isinstance(record, ConfigRecord):
            raise _fail(stage, node, f"no ConfigRecord {PROTOCOL_RECORD!r}")
        self.record = record
        if self.get("stage", str) != stage.value:
            raise _fail(stage, node, "the stage field does not match the message type")

    def get(self, key: str, kind: type[_T]) -> _T:
        value = self.record.get(key)
        if kind is int and isinstance(value, bool):
            value = None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise _fail(self.stage, self.node, f"field {key!r} missing or not {kind.__name__}")
        return value

    def blobs(self, key: str) -> list[bytes]:
        value = self.record.get(key)
        if not isinstance(value, list) or any(not isinstance(v, bytes) for v in value):
            raise _fail(self.stage, self.node, f"field {key!r} missing or not a list of bytes")
        return value

    def ids(self, key: str) -> tuple[int, ...]:
        data = self.get(key, bytes)
        if len(data) % _ID.size:
            raise _fail(self.stage, self.node, f"field {key!r} is not packed node ids")
        return tuple(node for (node,) in _ID.iter_unpack(data))

    def elements(self, key: str) -> list[int]:
        try:
            return [element_from_bytes(b) for b in self.blobs(key)]
        except ValueError as exc:
            raise _fail(self.stage, self.node, f"field {key!r}: {exc}") from None

    def build(self, factory: Callable[..., _T], **fields: Any) -> _T:
        try:
            return factory(**fields)
        except MalformedMessage:
            raise
        except (TypeError, ValueError) as exc:
            raise _fail(self.stage, self.node, str(exc)) from None


def _record(stage: Stage, **fields: Any) -> ConfigRecord:
    return ConfigRecord({"stage": stage.value, **fields})


# --- SETUP -----------------------------------------------------------------------------


def encode_setup(request: SetupRequest, spec: TrainSpec, train_content: RecordDict) -> RecordDict:
    """The SETUP content: the strategy's train records plus the round config and spec."""
    c = request.config
    content = RecordDict(train_content)
    content[PROTOCOL_RECORD] = _record(
        Stage.SETUP,
        **{
            "round-id": c.round_id,
            "dropout-fraction": float(c.dropout_fraction),
            "corrupted-fraction": float(c.corrupted_fraction),
            "neighbours": c.neighbours,
            "threshold": c.threshold,
            "num-values": c.num_values,
            "num-metrics": c.num_metrics,
            "clip-range": float(c.clip_range),
            "metric-range": float(c.metric_range),
            "quantization-bits": c.quantization_bits,
            "max-weight": c.max_weight,
            "min-participants": c.min_participants,
            "invited": c.invited,
            "arrays-key": spec.arrays_key,
            "weighted-by-key": spec.weighted_by_key,
            "metric-keys": list(spec.metric_keys),
            **_integer_fields(c),
        },
    )
    return content


def _integer_fields(config: RoundConfig) -> dict[str, Any]:
    """The integer-input fields, present only in such rounds (older peers never see them)."""
    if not config.integer_inputs:
        return {}
    return {
        "integer-scale": float(config.integer_scale),
        "integer-modulus-bits": config.integer_modulus_bits,
    }


def _read_integer_fields(r: _Reader) -> dict[str, Any]:
    present = [k for k in ("integer-scale", "integer-modulus-bits") if k in r.record]
    if not present:
        return {}
    return {
        "integer_scale": r.get("integer-scale", float),
        "integer_modulus_bits": r.get("integer-modulus-bits", int),
    }


def decode_setup(message: Message) -> tuple[SetupRequest, TrainSpec, RecordDict]:
    """The SETUP request, the train spec, and the strategy's train content (without ours).

    Raises:
        MalformedMessage: a field is missing, mistyped or out of range.
    """
    r = _Reader(message.content, Stage.SETUP, None)
    metric_keys = r.record.get("metric-keys")
    if not isinstance(metric_keys, list) or any(not isinstance(k, str) for k in metric_keys):
        raise _fail(Stage.SETUP, None, "field 'metric-keys' is not a list of str")
    try:
        config = RoundConfig(
            round_id=r.get("round-id", bytes),
            dropout_fraction=r.get("dropout-fraction", float),
            corrupted_fraction=r.get("corrupted-fraction", float),
            neighbours=r.get("neighbours", int),
            threshold=r.get("threshold", int),
            num_values=r.get("num-values", int),
            num_metrics=r.get("num-metrics", int),
            clip_range=r.get("clip-range", float),
            metric_range=r.get("metric-range", float),
            quantization_bits=r.get("quantization-bits", int),
            max_weight=r.get("max-weight", int),
            min_participants=r.get("min-participants", int),
            invited=r.get("invited", int),
            **_read_integer_fields(r),
        )
    except ParameterError as exc:
        raise _fail(Stage.SETUP, None, str(exc)) from None
    if len(metric_keys) != config.num_metrics:
        raise _fail(Stage.SETUP, None, "metric-keys does not match num-metrics")
    spec = TrainSpec(
        arrays_key=r.get("arrays-key", str),
        weighted_by_key=r.get("weighted-by-key", str),
        metric_keys=tuple(metric_keys),
    )
    request = r.build(SetupRequest, receiver=message.metadata.dst_node_id, config=config)
    train = RecordDict({k: v for k, v in message.content.items() if k != PROTOCOL_RECORD})
    return request, spec, train


# --- server -> client ------------------------------------------------------------------


def encode_request(request: ServerMessage) -> RecordDict:
    """Content for a SHARE_KEYS, MASKED_INPUT, CONSISTENCY or UNMASK request."""
    if isinstance(request, ShareKeysRequest):
        roster = request.roster
        record = _record(
            Stage.SHARE_KEYS,
            **{
                "round-id": request.round_id,
                "roster-ids": _pack_ids(e.node_id for e in roster),
                "roster-cipher-keys": [e.cipher_public_key for e in roster],
                "roster-mask-keys": [e.mask_public_key for e in roster],
                "roster-commitments": [e.self_mask_commitment for e in roster],
                "roster-credentials": [e.credential for e in roster],
                "roster-signatures": [e.signature for e in roster],
                "neighbours": _pack_ids(sorted(request.neighbours)),
                "threshold": request.threshold,
            },
        )
    elif isinstance(request, MaskedInputRequest):
        record = _record(
            Stage.MASKED_INPUT,
            **{
                "round-id": request.round_id,
                "share-senders": _pack_ids(s.sender for s in request.shares),
                "share-ciphertexts": [s.ciphertext for s in request.shares],
            },
        )
    elif isinstance(request, ConsistencyRequest):
        record = _record(
            Stage.CONSISTENCY,
            **{"round-id": request.round_id, "survivors": _pack_ids(sorted(request.survivors))},
        )
    elif isinstance(request, UnmaskRequest):
        record = _record(
            Stage.UNMASK,
            **{
                "round-id": request.round_id,
                "survivors": _pack_ids(sorted(request.survivors)),
                "signers": _pack_ids(node for node, _ in request.signatures),
                "signatures": [sig for _, sig in request.signatures],
            },
        )
    else:
        raise TypeError(f"use encode_setup for {type(request).__name__}")
    return RecordDict({PROTOCOL_RECORD: record})


def _zip(r: _Reader, *columns: Sequence[Any]) -> list[tuple[Any, ...]]:
    if len({len(c) for c in columns}) != 1:
        raise _fail(r.stage, r.node, "list fields have different lengths")
    return list(zip(*columns, strict=True))


def _node_set(r: _Reader, key: str) -> frozenset[int]:
    ids = r.ids(key)
    if len(set(ids)) != len(ids):
        raise _fail(r.stage, r.node, f"field {key!r} repeats a node")
    return frozenset(ids)


def decode_request(message: Message) -> ServerMessage:
    """The request a non-SETUP stage message carries, addressed to its destination node.

    Raises:
        MalformedMessage: unknown type, or a missing, mistyped or out-of-range field.
    """
    stage = STAGE_OF_TYPE.get(message.metadata.message_type)
    if stage is None or stage is Stage.SETUP:
        raise _fail(Stage.SETUP, None, f"{message.metadata.message_type!r} is not a stage request")
    r = _Reader(message.content, stage, None)
    receiver = message.metadata.dst_node_id
    round_id = r.get("round-id", bytes)
    if stage is Stage.SHARE_KEYS:
        rows = _zip(
            r,
            r.ids("roster-ids"),
            r.blobs("roster-cipher-keys"),
            r.blobs("roster-mask-keys"),
            r.blobs("roster-commitments"),
            r.blobs("roster-credentials"),
            r.blobs("roster-signatures"),
        )
        roster = tuple(
            r.build(
                AdvertisedKeys,
                round_id=round_id,
                node_id=node,
                cipher_public_key=cipher,
                mask_public_key=mask,
                self_mask_commitment=commitment,
                credential=credential,
                signature=signature,
            )
            for node, cipher, mask, commitment, credential, signature in rows
        )
        return r.build(
            ShareKeysRequest,
            receiver=receiver,
            round_id=round_id,
            roster=roster,
            neighbours=_node_set(r, "neighbours"),
            threshold=r.get("threshold", int),
        )
    if stage is Stage.MASKED_INPUT:
        rows = _zip(r, r.ids("share-senders"), r.blobs("share-ciphertexts"))
        shares = tuple(
            r.build(EncryptedShare, round_id=round_id, sender=s, receiver=receiver, ciphertext=c)
            for s, c in rows
        )
        return r.build(MaskedInputRequest, receiver=receiver, round_id=round_id, shares=shares)
    survivors = _node_set(r, "survivors")
    if stage is Stage.CONSISTENCY:
        return r.build(
            ConsistencyRequest, receiver=receiver, round_id=round_id, survivors=survivors
        )
    signatures = tuple(_zip(r, r.ids("signers"), r.blobs("signatures")))
    return r.build(
        UnmaskRequest,
        receiver=receiver,
        round_id=round_id,
        survivors=survivors,
        signatures=signatures,
    )


# --- client -> server ------------------------------------------------------------------


def encode_reply(reply: ClientMessage) -> RecordDict:
    """Content for a client's reply at any stage."""
    if isinstance(reply, AdvertisedKeys):
        record = _record(
            Stage.SETUP,
            **{
                "round-id": reply.round_id,
                "cipher-key": reply.cipher_public_key,
                "mask-key": reply.mask_public_key,
                "commitment": reply.self_mask_commitment,
                "credential": reply.credential,
                "signature": reply.signature,
            },
        )
    elif isinstance(reply, ShareKeysReply):
        record = _record(
            Stage.SHARE_KEYS,
            **{
                "round-id": reply.round_id,
                "share-receivers": _pack_ids(s.receiver for s in reply.shares),
                "share-ciphertexts": [s.ciphertext for s in reply.shares],
            },
        )
    elif isinstance(reply, MaskedInput):
        record = _record(Stage.MASKED_INPUT, **{"round-id": reply.round_id})
        masked = ArrayRecord({"vector": reply.vector})
        return RecordDict({PROTOCOL_RECORD: record, MASKED_RECORD: masked})
    elif isinstance(reply, ConsistencySignature):
        record = _record(
            Stage.CONSISTENCY, **{"round-id": reply.round_id, "signature": reply.signature}
        )
    else:
        record = _record(
            Stage.UNMASK,
            **{
                "round-id": reply.round_id,
                "seed-owners": _pack_ids(o for o, _ in reply.self_mask_shares),
                "seed-shares": [element_to_bytes(v) for _, v in reply.self_mask_shares],
                "key-owners": _pack_ids(o for o, _ in reply.key_shares),
                "key-shares": [element_to_bytes(v) for _, v in reply.key_shares],
            },
        )
    return RecordDict({PROTOCOL_RECORD: record})


def decode_reply(stage: Stage, message: Message) -> ClientMessage:
    """The client message in a reply to a ``stage`` request; the sender is the routing sender.

    Raises:
        MalformedMessage: wrong message type, or a missing, mistyped or out-of-range field.
    """
    sender = message.metadata.src_node_id
    if message.metadata.message_type != MESSAGE_TYPES[stage]:
        raise _fail(stage, sender, f"reply has type {message.metadata.message_type!r}")
    r = _Reader(message.content, stage, sender)
    round_id = r.get("round-id", bytes)
    if stage is Stage.SETUP:
        return r.build(
            AdvertisedKeys,
            round_id=round_id,
            node_id=sender,
            cipher_public_key=r.get("cipher-key", bytes),
            mask_public_key=r.get("mask-key", bytes),
            self_mask_commitment=r.get("commitment", bytes),
            credential=r.get("credential", bytes),
            signature=r.get("signature", bytes),
        )
    if stage is Stage.SHARE_KEYS:
        rows = _zip(r, r.ids("share-receivers"), r.blobs("share-ciphertexts"))
        shares = tuple(
            r.build(EncryptedShare, round_id=round_id, sender=sender, receiver=v, ciphertext=c)
            for v, c in rows
        )
        return r.build(ShareKeysReply, round_id=round_id, sender=sender, shares=shares)
    if stage is Stage.MASKED_INPUT:
        masked = message.content.get(MASKED_RECORD)
        if not isinstance(masked, ArrayRecord) or list(masked) != ["vector"]:
            raise _fail(stage, sender, f"no ArrayRecord {MASKED_RECORD!r} with one 'vector'")
        vector: np.ndarray[Any, Any] = masked["vector"]
        vector.flags.writeable = False  # decoded for us alone: freeze instead of copying
        return r.build(MaskedInput, round_id=round_id, sender=sender, vector=vector)
    if stage is Stage.CONSISTENCY:
        return r.build(
            ConsistencySignature,
            round_id=round_id,
            sender=sender,
            signature=r.get("signature", bytes),
        )
    return r.build(
        UnmaskReply,
        round_id=round_id,
        sender=sender,
        self_mask_shares=tuple(_zip(r, r.ids("seed-owners"), r.elements("seed-shares"))),
        key_shares=tuple(_zip(r, r.ids("key-owners"), r.elements("key-shares"))),
    )

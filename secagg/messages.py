"""SecAgg+ protocol messages: frozen value objects, validated on construction.

One class per message and direction; the stage a message belongs to is fixed by
its class (:data:`STAGE_OF`). Construction checks sizes, ranges and internal
consistency and raises :class:`~secagg.errors.MalformedMessage`; whether a message
fits the *round* (right sender, expected peers) is judged by the state machines.

Stages (Bonawitz et al. 2017, section 4; Bell et al. 2020, section 3)::

    SETUP        server -> SetupRequest          client -> AdvertisedKeys
    SHARE_KEYS   server -> ShareKeysRequest      client -> ShareKeysReply
    MASKED_INPUT server -> MaskedInputRequest    client -> MaskedInput
    CONSISTENCY  server -> ConsistencyRequest    client -> ConsistencySignature
    UNMASK       server -> UnmaskRequest         client -> UnmaskReply
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from secagg.crypto import KEY_BYTES, SEALED_SHARE_BYTES, SIGNATURE_BYTES, advertise_payload
from secagg.errors import MalformedMessage
from secagg.identity import MAX_CREDENTIAL_BYTES
from secagg.params import MAX_PARTICIPANTS, ROUND_ID_BYTES, RoundConfig
from secagg.primitives.shamir import PRIME

__all__ = [
    "STAGE_OF",
    "AdvertisedKeys",
    "ClientMessage",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShare",
    "MaskedInput",
    "MaskedInputRequest",
    "ServerMessage",
    "SetupRequest",
    "ShareKeysReply",
    "ShareKeysRequest",
    "Stage",
    "UnmaskReply",
    "UnmaskRequest",
    "roster_digest",
]

_MAX_NODE_ID = 2**64 - 1


class Stage(enum.StrEnum):
    """The stages of a SecAgg+ round, in order."""

    SETUP = "setup"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"


def _node(stage: Stage, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_NODE_ID:
        raise MalformedMessage(f"{name} must be a node id in 1..2^64-1", stage=stage)


def _bytes(stage: Stage, name: str, value: object, size: int, sender: int | None = None) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        found = len(value) if isinstance(value, bytes) else type(value).__name__
        raise MalformedMessage(
            f"{name} must be {size} bytes, got {found}", node_id=sender, stage=stage
        )


def _round(stage: Stage, value: object, sender: int | None = None) -> None:
    _bytes(stage, "round_id", value, ROUND_ID_BYTES, sender)


def _node_set(stage: Stage, name: str, value: object, sender: int | None = None) -> None:
    if not isinstance(value, frozenset) or not value or len(value) > MAX_PARTICIPANTS:
        raise MalformedMessage(
            f"{name} must be a non-empty frozenset of at most {MAX_PARTICIPANTS} ids",
            node_id=sender,
            stage=stage,
        )
    for node in value:
        _node(stage, name, node)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupRequest:
    """Server -> client: join the round described by ``config`` and advertise keys."""

    receiver: int
    config: RoundConfig

    def __post_init__(self) -> None:
        _node(Stage.SETUP, "receiver", self.receiver)
        if not isinstance(self.config, RoundConfig):
            raise MalformedMessage("config must be a RoundConfig", stage=Stage.SETUP)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertisedKeys:
    """Client -> server (and relayed to peers): a node's signed public keys for one round."""

    round_id: bytes = field(repr=False)
    node_id: int
    cipher_public_key: bytes = field(repr=False)
    mask_public_key: bytes = field(repr=False)
    self_mask_commitment: bytes = field(repr=False)
    credential: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        stage = Stage.SETUP
        _node(stage, "node_id", self.node_id)
        _round(stage, self.round_id, self.node_id)
        for name in ("cipher_public_key", "mask_public_key", "self_mask_commitment"):
            _bytes(stage, name, getattr(self, name), KEY_BYTES, self.node_id)
        _bytes(stage, "signature", self.signature, SIGNATURE_BYTES, self.node_id)
        if not isinstance(self.credential, bytes) or len(self.credential) > MAX_CREDENTIAL_BYTES:
            raise MalformedMessage(
                f"credential must be at most {MAX_CREDENTIAL_BYTES} bytes",
                node_id=self.node_id,
                stage=stage,
            )
        if self.cipher_public_key == self.mask_public_key:
            raise MalformedMessage(
                "the encryption and masking keys must differ", node_id=self.node_id, stage=stage
            )

    def signed_payload(self, config_digest: bytes) -> bytes:
        """The bytes :attr:`signature` must sign under the node's key."""
        return advertise_payload(
            config_digest=config_digest,
            node_id=self.node_id,
            cipher_public_key=self.cipher_public_key,
            mask_public_key=self.mask_public_key,
            commitment=self.self_mask_commitment,
        )


def roster_digest(roster: tuple[AdvertisedKeys, ...]) -> bytes:
    """SHA-256 over the roster (ids, keys, commitments, signatures), in id order."""
    h = hashlib.sha256(b"greenhouse/secagg/roster/v1\x00")
    for entry in roster:
        h.update(entry.node_id.to_bytes(8, "big"))
        h.update(entry.cipher_public_key + entry.mask_public_key)
        h.update(entry.self_mask_commitment + entry.signature)
    return h.digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareKeysRequest:
    """Server -> client: the participants' signed keys; the neighbours and threshold it claims."""

    receiver: int
    round_id: bytes = field(repr=False)
    roster: tuple[AdvertisedKeys, ...]
    neighbours: frozenset[int]
    threshold: int

    def __post_init__(self) -> None:
        stage = Stage.SHARE_KEYS
        _node(stage, "receiver", self.receiver)
        _round(stage, self.round_id)
        if not isinstance(self.roster, tuple) or not 3 <= len(self.roster) <= MAX_PARTICIPANTS:
            raise MalformedMessage(
                f"roster must be a tuple of 3..{MAX_PARTICIPANTS} entries", stage=stage
            )
        ids = [entry.node_id for entry in self.roster]
        if any(not isinstance(e, AdvertisedKeys) for e in self.roster) or ids != sorted(set(ids)):
            raise MalformedMessage(
                "roster must be AdvertisedKeys sorted by distinct id", stage=stage
            )
        if any(entry.round_id != self.round_id for entry in self.roster):
            raise MalformedMessage("a roster entry is for another round", stage=stage)
        if self.receiver not in ids:
            raise MalformedMessage("the receiver is not in the roster", stage=stage)
        _node_set(stage, "neighbours", self.neighbours)
        if not self.neighbours <= set(ids) - {self.receiver}:
            raise MalformedMessage("neighbours must be other roster members", stage=stage)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise MalformedMessage("threshold must be an integer", stage=stage)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedShare:
    """A node's two seed shares, sealed for one neighbour (SecAgg+ stage SHARE_KEYS)."""

    round_id: bytes = field(repr=False)
    sender: int
    receiver: int
    ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        stage = Stage.SHARE_KEYS
        _round(stage, self.round_id)
        _node(stage, "sender", self.sender)
        _node(stage, "receiver", self.receiver)
        if self.sender == self.receiver:
            raise MalformedMessage(
                f"node {self.sender} sent a share to itself", node_id=self.sender, stage=stage
            )
        _bytes(stage, "ciphertext", self.ciphertext, SEALED_SHARE_BYTES, self.sender)


def _shares(
    stage: Stage, shares: object, round_id: bytes, *, sender: int | None, receiver: int | None
) -> None:
    if not isinstance(shares, tuple) or len(shares) > MAX_PARTICIPANTS:
        raise MalformedMessage("shares must be a tuple", node_id=sender, stage=stage)
    seen: set[int] = set()
    for share in shares:
        if not isinstance(share, EncryptedShare) or share.round_id != round_id:
            raise MalformedMessage("a share is not an EncryptedShare of this round", stage=stage)
        if sender is not None and share.sender != sender:
            raise MalformedMessage("a share names another sender", node_id=sender, stage=stage)
        if receiver is not None and share.receiver != receiver:
            raise MalformedMessage("a share names another receiver", stage=stage)
        peer = share.receiver if sender is not None else share.sender
        if peer in seen:
            raise MalformedMessage(f"two shares for peer {peer}", node_id=sender, stage=stage)
        seen.add(peer)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareKeysReply:
    """Client -> server: one sealed share per neighbour."""

    round_id: bytes = field(repr=False)
    sender: int
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _node(Stage.SHARE_KEYS, "sender", self.sender)
        _round(Stage.SHARE_KEYS, self.round_id, self.sender)
        _shares(Stage.SHARE_KEYS, self.shares, self.round_id, sender=self.sender, receiver=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedInputRequest:
    """Server -> client: the shares its neighbours sealed for it; send the masked input."""

    receiver: int
    round_id: bytes = field(repr=False)
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _node(Stage.MASKED_INPUT, "receiver", self.receiver)
        _round(Stage.MASKED_INPUT, self.round_id)
        _shares(Stage.MASKED_INPUT, self.shares, self.round_id, sender=None, receiver=self.receiver)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedInput:
    """Client -> server: the masked, quantized, weighted input (uint32 or uint64)."""

    round_id: bytes = field(repr=False)
    sender: int
    vector: npt.NDArray[Any] = field(repr=False)

    def __post_init__(self) -> None:
        stage = Stage.MASKED_INPUT
        _node(stage, "sender", self.sender)
        _round(stage, self.round_id, self.sender)
        vector = self.vector
        if not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise MalformedMessage("vector must be a 1-D array", node_id=self.sender, stage=stage)
        if vector.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise MalformedMessage(
                f"vector must be uint32 or uint64, got {vector.dtype.name}",
                node_id=self.sender,
                stage=stage,
            )
        if vector.flags.writeable:
            vector = vector.copy()
            vector.flags.writeable = False
            object.__setattr__(self, "vector", vector)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyRequest:
    """Server -> client: the survivors (those whose masked input arrived); sign them."""

    receiver: int
    round_id: bytes = field(repr=False)
    survivors: frozenset[int]

    def __post_init__(self) -> None:
        _node(Stage.CONSISTENCY, "receiver", self.receiver)
        _round(Stage.CONSISTENCY, self.round_id)
        _node_set(Stage.CONSISTENCY, "survivors", self.survivors)
        if self.receiver not in self.survivors:
            raise MalformedMessage(
                "the receiver is not among the survivors", stage=Stage.CONSISTENCY
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencySignature:
    """Client -> server: a signature over the round, roster and survivor set it was shown."""

    round_id: bytes = field(repr=False)
    sender: int
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _node(Stage.CONSISTENCY, "sender", self.sender)
        _round(Stage.CONSISTENCY, self.round_id, self.sender)
        _bytes(Stage.CONSISTENCY, "signature", self.signature, SIGNATURE_BYTES, self.sender)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskRequest:
    """Server -> client: the survivors again and every confirming signature; reveal shares."""

    receiver: int
    round_id: bytes = field(repr=False)
    survivors: frozenset[int]
    signatures: tuple[tuple[int, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        stage = Stage.UNMASK
        _node(stage, "receiver", self.receiver)
        _round(stage, self.round_id)
        _node_set(stage, "survivors", self.survivors)
        if not isinstance(self.signatures, tuple) or not self.signatures:
            raise MalformedMessage("signatures must be a non-empty tuple", stage=stage)
        signers = []
        for item in self.signatures:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise MalformedMessage("a signature entry is not (node, signature)", stage=stage)
            _node(stage, "signer", item[0])
            _bytes(stage, "signature", item[1], SIGNATURE_BYTES)
            signers.append(item[0])
        if signers != sorted(set(signers)) or not set(signers) <= self.survivors:
            raise MalformedMessage("signers must be distinct survivors, sorted", stage=stage)


def _revealed(stage: Stage, name: str, value: object, sender: int) -> set[int]:
    if not isinstance(value, tuple) or len(value) > MAX_PARTICIPANTS:
        raise MalformedMessage(f"{name} must be a tuple", node_id=sender, stage=stage)
    owners: set[int] = set()
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise MalformedMessage(f"{name} holds a non-pair", node_id=sender, stage=stage)
        owner, share = item
        _node(stage, f"{name} owner", owner)
        if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share < PRIME:
            raise MalformedMessage(f"{name} holds a non-element", node_id=sender, stage=stage)
        if owner in owners or owner == sender:
            raise MalformedMessage(f"{name} repeats owner {owner}", node_id=sender, stage=stage)
        owners.add(owner)
    return owners


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmaskReply:
    """Client -> server: self-mask seed shares of survivors, mask-key shares of the dropped."""

    round_id: bytes = field(repr=False)
    sender: int
    self_mask_shares: tuple[tuple[int, int], ...] = field(repr=False)
    key_shares: tuple[tuple[int, int], ...] = field(repr=False)

    def __post_init__(self) -> None:
        stage = Stage.UNMASK
        _node(stage, "sender", self.sender)
        _round(stage, self.round_id, self.sender)
        survivors = _revealed(stage, "self_mask_shares", self.self_mask_shares, self.sender)
        dropped = _revealed(stage, "key_shares", self.key_shares, self.sender)
        if survivors & dropped:
            raise MalformedMessage(
                "revealed both shares of one node", node_id=self.sender, stage=stage
            )


ServerMessage: TypeAlias = (
    SetupRequest | ShareKeysRequest | MaskedInputRequest | ConsistencyRequest | UnmaskRequest
)
ClientMessage: TypeAlias = (
    AdvertisedKeys | ShareKeysReply | MaskedInput | ConsistencySignature | UnmaskReply
)

#: The stage each message class belongs to.
STAGE_OF: dict[type, Stage] = {
    SetupRequest: Stage.SETUP,
    AdvertisedKeys: Stage.SETUP,
    ShareKeysRequest: Stage.SHARE_KEYS,
    ShareKeysReply: Stage.SHARE_KEYS,
    MaskedInputRequest: Stage.MASKED_INPUT,
    MaskedInput: Stage.MASKED_INPUT,
    ConsistencyRequest: Stage.CONSISTENCY,
    ConsistencySignature: Stage.CONSISTENCY,
    UnmaskRequest: Stage.UNMASK,
    UnmaskReply: Stage.UNMASK,
}

"""SecAgg+ server side for one round: a pure state machine (Bell et al. 2020, Alg. 1).

:class:`ServerRound` records client messages (:meth:`ServerRound.receive`) and
closes stages (:meth:`ServerRound.advance`), returning what to send next. It has no
I/O, clock or RNG. A message that breaks a rule raises
:class:`~secagg.errors.ProtocolViolation` naming the node and leaves the round
unchanged (verify, then admit); the shell treats that node as dropped.

Participant sets, as in Bonawitz et al. 2017:

- U1: nodes whose keys arrived (SETUP); the graph and parameters are derived from
  U1 only, so a node that failed before advertising is never a participant;
- U2: nodes whose shares arrived (SHARE_KEYS); each node masks only with
  neighbours in U2 (the shares it was forwarded tell it which);
- U3: nodes whose masked input arrived (MASKED_INPUT), summed as they arrive;
- U4: nodes that confirmed U3 (CONSISTENCY); U5: nodes that revealed shares.

Every set must keep :attr:`~secagg.params.RoundParams.min_survivors` nodes, else
:class:`~secagg.errors.TooManyDropouts`. Unmasking (:mod:`secagg.recovery`) never
returns a wrong sum: every reconstructed secret is checked against its public
commitment or public key first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import crypto
from secagg.errors import MalformedMessage, ProtocolViolation, RoundStateError, TooManyDropouts
from secagg.graph import neighbour_graph
from secagg.identity import KeyDirectory
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
    roster_digest,
)
from secagg.params import RoundConfig, RoundParams, derive_round_params
from secagg.recovery import Recovery

__all__ = ["ServerRound"]

_STAGE_MESSAGE: dict[Stage, type] = {
    Stage.SETUP: AdvertisedKeys,
    Stage.SHARE_KEYS: ShareKeysReply,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.CONSISTENCY: ConsistencySignature,
    Stage.UNMASK: UnmaskReply,
}


def _sender(message: ClientMessage) -> int:
    return message.node_id if isinstance(message, AdvertisedKeys) else message.sender


class ServerRound:
    """The server's side of one SecAgg+ round. No I/O, clock or global RNG.

    Args:
        config: the round's configuration (its ``round_id`` must be fresh and random).
        invited: the nodes asked to join.
        key_directory: if given, advertised keys and confirmations are verified here
            too, so a node with a bad signature is dropped early instead of making
            its neighbours abort. Clients verify regardless.
    """

    def __init__(
        self,
        config: RoundConfig,
        invited: Iterable[int],
        *,
        key_directory: KeyDirectory | None = None,
    ) -> None:
        self.config = config
        self.invited = frozenset(invited)
        if len(self.invited) != config.invited:
            raise RoundStateError(
                f"config says {config.invited} nodes are invited, got {len(self.invited)}"
            )
        self._directory = key_directory
        self._stage = Stage.SETUP
        self._expected: frozenset[int] = self.invited
        self._received: dict[int, Any] = {}
        self._params: RoundParams | None = None
        self._roster: dict[int, AdvertisedKeys] = {}
        self._graph: dict[int, frozenset[int]] = {}
        self._verify_keys: dict[int, bytes] = {}
        self._mask_peers: dict[int, frozenset[int]] = {}
        self._shares_to: dict[int, list[EncryptedShare]] = {}
        self._survivors: frozenset[int] = frozenset()
        self._sum: npt.NDArray[Any] | None = None
        self._result: npt.NDArray[Any] | None = None

    def __repr__(self) -> str:
        """Stage and counts only."""
        return f"ServerRound(stage={self._stage.value}, expected={len(self._expected)})"

    @property
    def stage(self) -> Stage:
        """The stage whose replies are being collected."""
        return self._stage

    @property
    def params(self) -> RoundParams:
        """The parameters (known once U1 is fixed)."""
        if self._params is None:
            raise RoundStateError("parameters are known only after the SETUP stage closed")
        return self._params

    @property
    def expected(self) -> frozenset[int]:
        """Nodes asked for a reply in the current stage."""
        return self._expected

    def missing(self) -> frozenset[int]:
        """Nodes asked in the current stage that have not replied (yet)."""
        return self._expected - self._received.keys()

    @property
    def survivors(self) -> frozenset[int]:
        """U3: the nodes whose inputs are in the sum (empty before CONSISTENCY)."""
        return self._survivors

    def start(self) -> tuple[SetupRequest, ...]:
        """The SETUP requests, one per invited node."""
        if self._stage is not Stage.SETUP or self._received:
            raise RoundStateError("start() is only valid before any reply")
        return tuple(
            SetupRequest(receiver=node, config=self.config) for node in sorted(self.invited)
        )

    # --- receiving -------------------------------------------------------------------

    def receive(self, message: ClientMessage) -> None:
        """Record one client message of the current stage.

        Raises:
            ProtocolViolation: the message breaks a rule (node and stage named); the
                round is unchanged.
            RoundStateError: the round is finished.
        """
        stage = self._stage
        if stage is Stage.DONE:
            raise RoundStateError("the round is finished")
        sender = _sender(message)
        expected_type = _STAGE_MESSAGE[stage]
        if not isinstance(message, expected_type):
            raise ProtocolViolation(
                f"node {sender} sent a {type(message).__name__} during {stage.value}",
                node_id=sender,
                stage=stage,
            )
        if sender not in self._expected:
            raise ProtocolViolation(
                f"node {sender} is not expected in {stage.value}", node_id=sender, stage=stage
            )
        if sender in self._received:
            raise ProtocolViolation(
                f"node {sender} replied twice in {stage.value}", node_id=sender, stage=stage
            )
        if message.round_id != self.config.round_id:
            raise ProtocolViolation("message is for another round", node_id=sender, stage=stage)
        admit = getattr(self, f"_admit_{stage.name.lower()}")
        admit(message)
        self._received[sender] = message if stage is not Stage.MASKED_INPUT else True

    def _admit_setup(self, message: AdvertisedKeys) -> None:
        if self._directory is None:
            return
        node = message.node_id
        try:
            verify_key = self._directory(node, message.credential)
        except Exception as exc:
            raise ProtocolViolation(
                f"credential of node {node} refused: {type(exc).__name__}",
                node_id=node,
                stage=Stage.SETUP,
            ) from None
        if not crypto.signature_is_valid(
            verify_key, message.signed_payload(self.config.digest()), message.signature
        ):
            raise ProtocolViolation(
                f"keys advertised by node {node} are not signed by its key",
                node_id=node,
                stage=Stage.SETUP,
            )
        self._verify_keys[node] = verify_key

    def _admit_share_keys(self, message: ShareKeysReply) -> None:
        receivers = frozenset(share.receiver for share in message.shares)
        if receivers != self._graph[message.sender]:
            raise ProtocolViolation(
                f"node {message.sender} sealed shares for {len(receivers)} nodes, not exactly "
                f"its {len(self._graph[message.sender])} neighbours",
                node_id=message.sender,
                stage=Stage.SHARE_KEYS,
            )

    def _admit_masked_input(self, message: MaskedInput) -> None:
        params = self.params
        vector = message.vector
        if vector.dtype != params.dtype or vector.size != self.config.vector_length:
            raise MalformedMessage(
                f"masked input is {vector.dtype.name}[{vector.size}], expected "
                f"{params.dtype.name}[{self.config.vector_length}]",
                node_id=message.sender,
                stage=Stage.MASKED_INPUT,
            )
        if self._sum is None:
            self._sum = np.zeros(self.config.vector_length, dtype=params.dtype)
        np.add(self._sum, vector, out=self._sum)  # wraps: arithmetic modulo 2^bits

    def _admit_consistency(self, message: ConsistencySignature) -> None:
        if self._directory is None:
            return
        payload = crypto.consistency_payload(
            self.config.round_id, roster_digest(self._roster_tuple()), self._survivors
        )
        if not crypto.signature_is_valid(
            self._verify_keys[message.sender], payload, message.signature
        ):
            raise ProtocolViolation(
                f"confirmation of node {message.sender} does not verify",
                node_id=message.sender,
                stage=Stage.CONSISTENCY,
            )

    def _admit_unmask(self, message: UnmaskReply) -> None:
        held = self._mask_peers[message.sender]
        seed_owners = frozenset(owner for owner, _ in message.self_mask_shares)
        key_owners = frozenset(owner for owner, _ in message.key_shares)
        if seed_owners != held & self._survivors or key_owners != held - self._survivors:
            raise ProtocolViolation(
                f"node {message.sender} revealed shares for the wrong peers",
                node_id=message.sender,
                stage=Stage.UNMASK,
            )

    # --- advancing -------------------------------------------------------------------

    def _close(self, what: str) -> frozenset[int]:
        arrived = frozenset(self._received)
        if self._params is not None and len(arrived) < self._params.min_survivors:
            raise TooManyDropouts(
                f"{len(arrived)} of {self._params.n} participants {what}; the round needs at "
                f"least {self._params.min_survivors} (tolerates {self._params.max_dropouts} "
                "dropouts)"
            )
        return arrived

    def _roster_tuple(self) -> tuple[AdvertisedKeys, ...]:
        return tuple(self._roster[node] for node in sorted(self._roster))

    def advance(self) -> tuple[ServerMessage, ...]:
        """Close the current stage; return the next stage's requests (none when done).

        Raises:
            TooManyDropouts: too few nodes replied to the stage just closed, or a
                survivor's secret cannot be reconstructed.
            ParameterError: the participants admit no safe parameters.
            ProtocolViolation: a reconstructed secret does not match its commitment.
            RoundStateError: the round is already finished.
        """
        stage = self._stage
        if stage is Stage.DONE:
            raise RoundStateError("the round is finished")
        step = getattr(self, f"_advance_{stage.name.lower()}")
        requests: tuple[ServerMessage, ...] = step()
        self._received = {}
        return requests

    def _advance_setup(self) -> tuple[ServerMessage, ...]:
        arrived = self._close("advertised keys")
        if len(arrived) < self.config.min_participants:
            raise TooManyDropouts(
                f"{len(arrived)} of {len(self.invited)} invited nodes advertised keys; the "
                f"round needs at least {self.config.min_participants}"
            )
        params = derive_round_params(self.config, len(arrived))
        self._params = params
        self._roster = {node: self._received[node] for node in arrived}
        self._graph = dict(
            neighbour_graph(sorted(arrived), self.config.round_id, params.graph.neighbours)
        )
        roster = self._roster_tuple()
        self._stage, self._expected = Stage.SHARE_KEYS, arrived
        return tuple(
            ShareKeysRequest(
                receiver=node,
                round_id=self.config.round_id,
                roster=roster,
                neighbours=self._graph[node],
                threshold=params.threshold,
            )
            for node in sorted(arrived)
        )

    def _advance_share_keys(self) -> tuple[ServerMessage, ...]:
        arrived = self._close("shared keys")
        for node in arrived:
            message: ShareKeysReply = self._received[node]
            for share in message.shares:
                if share.receiver in arrived:
                    self._shares_to.setdefault(share.receiver, []).append(share)
        self._mask_peers = {node: self._graph[node] & arrived for node in arrived}
        self._stage, self._expected = Stage.MASKED_INPUT, arrived
        requests = tuple(
            MaskedInputRequest(
                receiver=node,
                round_id=self.config.round_id,
                shares=tuple(sorted(self._shares_to.get(node, []), key=lambda s: s.sender)),
            )
            for node in sorted(arrived)
        )
        self._shares_to = {}
        return requests

    def _advance_masked_input(self) -> tuple[ServerMessage, ...]:
        arrived = self._close("sent masked inputs")
        self._survivors = arrived
        self._stage, self._expected = Stage.CONSISTENCY, arrived
        return tuple(
            ConsistencyRequest(receiver=node, round_id=self.config.round_id, survivors=arrived)
            for node in sorted(arrived)
        )

    def _advance_consistency(self) -> tuple[ServerMessage, ...]:
        arrived = self._close("confirmed the survivors")
        signatures = tuple((node, self._received[node].signature) for node in sorted(arrived))
        self._stage, self._expected = Stage.UNMASK, arrived
        return tuple(
            UnmaskRequest(
                receiver=node,
                round_id=self.config.round_id,
                survivors=self._survivors,
                signatures=signatures,
            )
            for node in sorted(arrived)
        )

    def _advance_unmask(self) -> tuple[ServerMessage, ...]:
        arrived = self._close("revealed shares")
        assert self._sum is not None
        recovery = Recovery(
            params=self.params,
            roster=self._roster,
            mask_peers=self._mask_peers,
            survivors=self._survivors,
        )
        for node in sorted(arrived):
            recovery.add(self._received[node])
        recovery.unmask(self._sum)
        self._result, self._sum = self._sum, None
        self._stage, self._expected = Stage.DONE, frozenset()
        return ()

    def result(self) -> npt.NDArray[Any]:
        """The unmasked sum modulo 2^bits: ``sum(weight * q)`` per element, then ``sum(weight)``.

        Raises:
            RoundStateError: the round has not finished.
        """
        if self._result is None:
            raise RoundStateError("the round has not finished unmasking")
        return self._result

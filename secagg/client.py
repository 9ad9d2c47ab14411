"""SecAgg+ client side for one round: a pure state machine (Bell et al. 2020, Alg. 2).

:class:`ClientRound` takes the server's stage requests in order and returns its
replies. It has no I/O, clock or global RNG (randomness is injected). It trusts
nothing the server says that it can check itself:

- the roster: admitted only through :func:`secagg.roster.verify_roster` (keys signed
  by the CA-bound key of each participant, no key twice, its own entry unaltered);
- the neighbour list and threshold: recomputed from (participants, round id,
  config) and compared with the server's claim;
- the survivor sets: at least ``min_survivors`` at every stage, and every survivor's
  signature on the same roster and survivor set (Bonawitz et al.'s consistency
  round) before any share is revealed; for each peer it reveals the self-mask share
  *or* the mask-key share, never both.

Secrets (private keys, seeds, the quantized input) live only in private attributes,
are never in ``repr``, and are dropped when the round ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg import crypto
from secagg.errors import (
    ParameterError,
    PolicyRefused,
    ProtocolViolation,
    RoundStateError,
    TooManyDropouts,
)
from secagg.graph import neighbour_graph
from secagg.identity import NodeCredentials
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
from secagg.params import RoundConfig, RoundParams, derive_round_params
from secagg.primitives import prg, shamir
from secagg.quantize import Quantizer, encode_integers
from secagg.roster import VerifiedRoster, verify_roster

__all__ = ["ClientRound", "check_setup_policy"]

SERVER = 0  # the node id ProtocolViolation uses for the server


def check_setup_policy(
    config: RoundConfig, *, min_cohort: int, min_corrupted_fraction: float
) -> None:
    """Refuse a round this site's policy does not allow, before any work is done.

    Raises:
        PolicyRefused: fewer nodes invited than ``min_cohort``, or the round assumes a
            smaller corrupted fraction than the site does.
    """
    if config.invited < min_cohort:
        raise PolicyRefused(
            f"round invites {config.invited} nodes; this site requires at least "
            f"{min_cohort} SecAgg+ participants"
        )
    if config.corrupted_fraction < min_corrupted_fraction:
        raise PolicyRefused(
            f"round tolerates a corrupted fraction of {config.corrupted_fraction}; this "
            f"site requires at least {min_corrupted_fraction}"
        )


def _server_fault(stage: Stage, message: str) -> ProtocolViolation:
    return ProtocolViolation(message, node_id=SERVER, stage=stage)


class ClientRound:
    """One node's side of one SecAgg+ round.

    Args:
        node_id: this node's id (from its context).
        credentials: its signer, credential and the CA-bound key directory.
        rng: cryptographically secure random bytes (``os.urandom`` in production).
        min_cohort: the site's minimum number of participants (0: no policy).
        min_corrupted_fraction: the site refuses rounds that assume fewer colluders.
    """

    def __init__(
        self,
        *,
        node_id: int,
        credentials: NodeCredentials,
        rng: crypto.Rng,
        min_cohort: int = 0,
        min_corrupted_fraction: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self._credentials = credentials
        self._rng = rng
        self._min_cohort = min_cohort
        self._min_corrupted_fraction = min_corrupted_fraction
        self._stage = Stage.SETUP
        self._request: SetupRequest | None = None
        self._advertised: AdvertisedKeys | None = None
        self._params: RoundParams | None = None
        # Secrets: never logged, never in repr, dropped at the end of the round.
        self._cipher_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._mask_secret = 0
        self._self_mask_seed = 0
        self._input: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] | None = None
        self._weight = 0
        self._held: dict[int, tuple[int, int]] = {}
        # Public state fixed at SHARE_KEYS.
        self._roster: VerifiedRoster | None = None
        self._neighbours: frozenset[int] = frozenset()
        self._mask_peers: frozenset[int] = frozenset()
        self._survivors: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        """Node and stage only."""
        return f"ClientRound(node={self.node_id}, stage={self._stage.value})"

    @property
    def stage(self) -> Stage:
        """The stage whose request this round expects next."""
        return self._stage

    @property
    def params(self) -> RoundParams:
        """The round's parameters (known from SHARE_KEYS on)."""
        if self._params is None:
            raise RoundStateError("parameters are known only after the SHARE_KEYS request")
        return self._params

    def _expect(self, stage: Stage, request: ServerMessage) -> None:
        if self._stage is not stage:
            raise RoundStateError(
                f"got a {stage.value} request while expecting {self._stage.value}"
            )
        if request.receiver != self.node_id:
            raise _server_fault(stage, f"request is for node {request.receiver}")
        if stage is not Stage.SETUP and request.round_id != self._round_id:  # type: ignore[union-attr]
            raise _server_fault(stage, "request is for another round")

    @property
    def _verified(self) -> VerifiedRoster:
        if self._roster is None:
            raise RoundStateError("the roster is known only after the SHARE_KEYS request")
        return self._roster

    @property
    def _round_id(self) -> bytes:
        assert self._request is not None
        return self._request.config.round_id

    def handle(self, request: ServerMessage) -> ClientMessage:
        """Answer any stage request except SETUP (which needs the input): dispatches on type."""
        if isinstance(request, ShareKeysRequest):
            return self.share_keys(request)
        if isinstance(request, MaskedInputRequest):
            return self.mask(request)
        if isinstance(request, ConsistencyRequest):
            return self.confirm(request)
        if isinstance(request, UnmaskRequest):
            return self.unmask(request)
        raise RoundStateError(f"use advertise() for {type(request).__name__}")

    # --- SETUP -----------------------------------------------------------------------

    def advertise(
        self, request: SetupRequest, values: npt.NDArray[Any], weight: int
    ) -> AdvertisedKeys:
        """Join the round with ``values`` (array elements then metrics) and ``weight``.

        The input is quantized now and kept in memory until it is masked. In a round
        with integer inputs, ``values`` are the client's own centred integers
        (``num_values`` of them) and ``weight`` must be 1.

        Raises:
            PolicyRefused: fewer nodes invited than the site's minimum cohort, or the
                round assumes fewer corrupted clients than the site does.
            ParameterError: the input does not fit the round (length, NaN, weight).
            RoundStateError: called twice.
        """
        self._expect(Stage.SETUP, request)
        config = request.config
        check_setup_policy(
            config,
            min_cohort=self._min_cohort,
            min_corrupted_fraction=self._min_corrupted_fraction,
        )
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise ParameterError(f"the weight must be an integer, got {type(weight).__name__}")
        if not 1 <= int(weight) <= config.max_weight:
            raise ParameterError(f"weight {weight} is outside 1..{config.max_weight}")
        if config.integer_inputs:  # max_weight is 1: the weight counts the contributor
            self._input = encode_integers(values, config)
        else:
            quantizer = Quantizer.for_config(config)
            self._input = quantizer.quantize(values, crypto.rounding_key(self._rng))
        self._weight = int(weight)
        self._cipher_key = crypto.private_key(shamir.random_element(self._rng))
        self._mask_secret = shamir.random_element(self._rng)
        self._mask_key = crypto.private_key(self._mask_secret)
        self._self_mask_seed = shamir.random_element(self._rng)
        cipher_pk = self._cipher_key.public_key().public_bytes_raw()
        mask_pk = self._mask_key.public_key().public_bytes_raw()
        commitment = crypto.self_mask_commitment(
            self._self_mask_seed, config.round_id, self.node_id
        )
        payload = crypto.advertise_payload(
            config_digest=config.digest(),
            node_id=self.node_id,
            cipher_public_key=cipher_pk,
            mask_public_key=mask_pk,
            commitment=commitment,
        )
        self._request = request
        self._advertised = AdvertisedKeys(
            round_id=config.round_id,
            node_id=self.node_id,
            cipher_public_key=cipher_pk,
            mask_public_key=mask_pk,
            self_mask_commitment=commitment,
            credential=self._credentials.credential,
            signature=self._credentials.signer.sign(payload),
        )
        self._stage = Stage.SHARE_KEYS
        return self._advertised

    # --- SHARE_KEYS ------------------------------------------------------------------

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Check the roster, neighbours and threshold; seal seed shares for each neighbour.

        Raises:
            ProtocolViolation: a forged or duplicated key, an altered own entry, or a
                neighbour list / threshold other than the round's (``node_id`` 0).
            PolicyRefused: fewer participants than the site's minimum cohort.
            RoundStateError: called out of order.
        """
        stage = Stage.SHARE_KEYS
        self._expect(stage, request)
        assert self._request is not None
        n = len(request.roster)
        if n < self._min_cohort:
            raise PolicyRefused(
                f"round has {n} participants; this site requires at least {self._min_cohort}"
            )
        try:
            params = derive_round_params(self._request.config, n)
        except ParameterError as exc:
            raise _server_fault(stage, f"the roster admits no safe parameters: {exc}") from None
        assert self._advertised is not None
        roster = verify_roster(
            request.roster,
            own=self._advertised,
            config_digest=self._request.config.digest(),
            key_directory=self._credentials.key_directory,
        )
        graph = neighbour_graph(roster.ids, self._round_id, params.graph.neighbours)
        mine = graph[self.node_id]
        if request.neighbours != mine:
            raise _server_fault(
                stage,
                f"server names {len(request.neighbours)} neighbours, "
                f"{len(request.neighbours - mine)} of them not this node's in the round's "
                f"graph ({len(mine)} neighbours)",
            )
        if request.threshold != params.threshold:
            raise _server_fault(
                stage,
                f"server claims threshold {request.threshold}, the round's parameters give "
                f"{params.threshold}",
            )
        self._params = params
        self._roster = roster
        self._neighbours = mine
        return ShareKeysReply(
            round_id=self._round_id, sender=self.node_id, shares=self._seal_shares(stage)
        )

    def _seal_shares(self, stage: Stage) -> tuple[EncryptedShare, ...]:
        xs = sorted(self._neighbours)
        t = self.params.threshold
        seed_shares = shamir.split(self._self_mask_seed, t, xs, self._rng)
        key_shares = shamir.split(self._mask_secret, t, xs, self._rng)
        sealed = []
        for peer, seed_share, key_share in zip(xs, seed_shares, key_shares, strict=True):
            shared = self._agree(self._cipher_key, peer, "cipher_public_key", stage)
            ciphertext = crypto.seal_share(
                shared,
                round_id=self._round_id,
                sender=self.node_id,
                receiver=peer,
                self_mask_share=seed_share,
                key_share=key_share,
                rng=self._rng,
            )
            sealed.append(
                EncryptedShare(
                    round_id=self._round_id,
                    sender=self.node_id,
                    receiver=peer,
                    ciphertext=ciphertext,
                )
            )
        self._stage = Stage.MASKED_INPUT
        return tuple(sealed)

    def _agree(
        self, private: X25519PrivateKey | None, peer: int, key_name: str, stage: Stage
    ) -> bytes:
        if private is None:
            raise RoundStateError("the round's keys were already forgotten")
        try:
            return crypto.agree(private, getattr(self._verified.entries[peer], key_name))
        except ValueError:
            raise ProtocolViolation(
                f"node {peer} advertised an unusable public key", node_id=peer, stage=stage
            ) from None

    # --- MASKED_INPUT ----------------------------------------------------------------

    def mask(self, request: MaskedInputRequest) -> MaskedInput:
        """Open the neighbours' shares and return the masked input; forget the plaintext.

        Raises:
            ProtocolViolation: a share from a non-neighbour, or one that does not open.
            TooManyDropouts: too few neighbours shared keys for this input to be unmasked.
            RoundStateError: called out of order.
        """
        stage = Stage.MASKED_INPUT
        self._expect(stage, request)
        params = self.params
        senders = frozenset(share.sender for share in request.shares)
        if not senders <= self._neighbours:
            raise _server_fault(stage, "server forwarded shares from non-neighbours")
        missing = len(self._neighbours) - len(senders)
        if len(senders) < params.threshold or missing > params.max_dropouts:
            raise TooManyDropouts(
                f"{missing} of this node's {len(self._neighbours)} neighbours dropped before "
                f"sharing keys; the round tolerates {params.max_dropouts} (threshold "
                f"{params.threshold})"
            )
        held: dict[int, tuple[int, int]] = {}
        for share in request.shares:
            shared = self._agree(self._cipher_key, share.sender, "cipher_public_key", stage)
            try:
                held[share.sender] = crypto.open_share(
                    shared,
                    share.ciphertext,
                    round_id=self._round_id,
                    sender=share.sender,
                    receiver=self.node_id,
                )
            except ValueError as exc:
                raise ProtocolViolation(
                    f"share from node {share.sender}: {exc}", node_id=share.sender, stage=stage
                ) from None
        self._held, self._mask_peers = held, senders
        vector = self._masked_vector(stage)
        vector.flags.writeable = False
        self._stage = Stage.CONSISTENCY
        return MaskedInput(round_id=self._round_id, sender=self.node_id, vector=vector)

    def _masked_vector(self, stage: Stage) -> npt.NDArray[Any]:
        params = self.params
        assert self._input is not None
        dtype = params.dtype
        vector = np.empty(params.config.vector_length, dtype=dtype)
        np.multiply(self._input, dtype.type(self._weight), out=vector[:-1], dtype=dtype)
        vector[-1] = self._weight
        self._input = None  # the plaintext is not needed any more
        prg.add_mask(
            vector, crypto.self_mask_key(self._self_mask_seed, self._round_id, self.node_id)
        )
        for peer in sorted(self._mask_peers):
            shared = self._agree(self._mask_key, peer, "mask_public_key", stage)
            key = crypto.pair_mask_key(shared, self._round_id, self.node_id, peer)
            prg.add_mask(vector, key, subtract=peer < self.node_id)
        return vector

    # --- CONSISTENCY -----------------------------------------------------------------

    def _check_survivors(self, stage: Stage, survivors: frozenset[int]) -> None:
        params = self.params
        if not survivors <= self._verified.entries.keys():
            raise _server_fault(stage, "survivor set names nodes outside the roster")
        if len(survivors) < self._min_cohort:
            raise PolicyRefused(
                f"only {len(survivors)} survivors; this site requires at least {self._min_cohort}"
            )
        if len(survivors) < params.min_survivors:
            raise TooManyDropouts(
                f"server reports {len(survivors)} of {params.n} participants; the round "
                f"needs at least {params.min_survivors} to reveal shares safely"
            )

    def confirm(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Sign the roster and the survivor set the server reports.

        Raises:
            TooManyDropouts: fewer survivors than the round needs.
            PolicyRefused: fewer survivors than the site's minimum cohort.
            ProtocolViolation: survivors outside the roster.
        """
        stage = Stage.CONSISTENCY
        self._expect(stage, request)
        self._check_survivors(stage, request.survivors)
        self._survivors = request.survivors
        payload = crypto.consistency_payload(
            self._round_id, self._verified.digest, request.survivors
        )
        self._stage = Stage.UNMASK
        return ConsistencySignature(
            round_id=self._round_id,
            sender=self.node_id,
            signature=self._credentials.signer.sign(payload),
        )

    # --- UNMASK ----------------------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Verify every survivor confirmed the same sets; reveal one share per peer.

        Raises:
            ProtocolViolation: the survivor set changed, or a confirming signature does
                not verify over this node's roster and survivor set (inconsistent views).
            TooManyDropouts: fewer confirmations than the round needs.
        """
        stage = Stage.UNMASK
        self._expect(stage, request)
        if request.survivors != self._survivors:
            raise _server_fault(stage, "survivor set differs from the one this node confirmed")
        signers = frozenset(node for node, _ in request.signatures)
        if self.node_id not in signers:
            raise _server_fault(stage, "this node's own confirmation is missing")
        if len(signers) < self.params.min_survivors:
            raise TooManyDropouts(
                f"{len(signers)} survivors confirmed; the round needs {self.params.min_survivors}"
            )
        payload = crypto.consistency_payload(self._round_id, self._verified.digest, self._survivors)
        for node, signature in request.signatures:
            if not crypto.signature_is_valid(self._verified.verify_keys[node], payload, signature):
                raise ProtocolViolation(
                    f"node {node} did not confirm the same participants and survivors: the "
                    "server showed nodes inconsistent views",
                    node_id=node,
                    stage=stage,
                )
        seed_shares = tuple(
            (peer, self._held[peer][0]) for peer in sorted(self._mask_peers & self._survivors)
        )
        key_shares = tuple(
            (peer, self._held[peer][1]) for peer in sorted(self._mask_peers - self._survivors)
        )
        self._forget()
        self._stage = Stage.DONE
        return UnmaskReply(
            round_id=self._round_id,
            sender=self.node_id,
            self_mask_shares=seed_shares,
            key_shares=key_shares,
        )

    def _forget(self) -> None:
        self._cipher_key = self._mask_key = None
        self._mask_secret = self._self_mask_seed = 0
        self._input = None
        self._held = {}

    def abort(self) -> None:
        """Forget every secret; the round cannot continue."""
        self._forget()
        self._stage = Stage.DONE

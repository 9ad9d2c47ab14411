"""Unmasking: removes the self masks of survivors and the pairwise masks of dropped nodes.

For each survivor ``u`` (in U3) the server reconstructs the self-mask seed ``b_u``
from ``t`` of its neighbours' shares and subtracts ``PRG(b_u)``; for each node ``u``
that shared keys but sent no input (U2 minus U3) it reconstructs the mask key
``s_u`` and removes ``PRG(s_uv)`` for every surviving neighbour ``v`` that masked
with it. Before use, each ``b_u`` is checked against the commitment ``u`` signed,
and each ``s_u`` against the public key ``u`` signed, so a bad share makes the
round fail loudly instead of producing a wrong sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from secagg import crypto
from secagg.errors import ProtocolViolation, TooManyDropouts
from secagg.messages import AdvertisedKeys, Stage, UnmaskReply
from secagg.params import RoundParams
from secagg.primitives import prg, shamir

__all__ = ["Recovery"]


@dataclass
class Recovery:
    """Collects revealed shares and unmasks the sum (used by :class:`~secagg.ServerRound`)."""

    params: RoundParams
    roster: Mapping[int, AdvertisedKeys]
    mask_peers: Mapping[int, frozenset[int]]
    survivors: frozenset[int]
    _seed_shares: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _key_shares: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)

    def add(self, reply: UnmaskReply) -> None:
        """Record the shares one node revealed (already checked by the server round)."""
        for owner, value in reply.self_mask_shares:
            self._seed_shares.setdefault(owner, []).append((reply.sender, value))
        for owner, value in reply.key_shares:
            self._key_shares.setdefault(owner, []).append((reply.sender, value))

    def _secret(self, owner: int, shares: dict[int, list[tuple[int, int]]], what: str) -> int:
        points = sorted(shares.get(owner, []))
        t = self.params.threshold
        if len(points) < t:
            raise TooManyDropouts(
                f"only {len(points)} neighbours of node {owner} revealed its {what} share; "
                f"the threshold is {t}"
            )
        return shamir.reconstruct(points[:t])

    def unmask(self, total: npt.NDArray[Any]) -> None:
        """Remove all masks from ``total`` in place.

        Raises:
            TooManyDropouts: fewer than ``t`` shares of a needed secret.
            ProtocolViolation: a reconstructed secret contradicts its signed commitment.
        """
        round_id = self.params.config.round_id
        dropped = sorted(set(self.mask_peers) - self.survivors)
        # Reconstruct and check every secret before touching the sum.
        seeds = {u: self._secret(u, self._seed_shares, "self-mask") for u in sorted(self.survivors)}
        keys = {u: self._secret(u, self._key_shares, "mask-key") for u in dropped}
        for u, seed in seeds.items():
            if (
                crypto.self_mask_commitment(seed, round_id, u)
                != self.roster[u].self_mask_commitment
            ):
                raise ProtocolViolation(
                    f"reconstructed self-mask seed of node {u} does not match its commitment: "
                    "one of its neighbours revealed a bad share",
                    node_id=None,
                    stage=Stage.UNMASK,
                )
        private = {u: crypto.private_key(key) for u, key in keys.items()}
        for u, key in private.items():
            if key.public_key().public_bytes_raw() != self.roster[u].mask_public_key:
                raise ProtocolViolation(
                    f"reconstructed mask key of node {u} does not match its public key: "
                    "one of its neighbours revealed a bad share",
                    node_id=None,
                    stage=Stage.UNMASK,
                )
        for u, seed in seeds.items():
            prg.add_mask(total, crypto.self_mask_key(seed, round_id, u), subtract=True)
        for u, key in private.items():
            for v in sorted(self.mask_peers[u] & self.survivors):
                shared = crypto.agree(key, self.roster[v].mask_public_key)
                pair_key = crypto.pair_mask_key(shared, round_id, u, v)
                # v added +PRG when v < u and -PRG otherwise; undo that.
                prg.add_mask(total, pair_key, subtract=v < u)

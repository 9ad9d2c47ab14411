"""In-process harness for SecAgg+: seeded randomness, a keyring, and a round driver.

``drive_round`` runs every stage of one round between a :class:`ServerRound` and
``n`` :class:`ClientRound` objects directly (no transport), dropping the chosen
nodes at the chosen stages, and records everything the server received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from secagg import (
    ClientRound,
    RoundConfig,
    ServerRound,
    SetupRequest,
    Stage,
    UnsafeLocalKeyring,
)


class SeededRng:
    """Deterministic bytes (SHA-256 in counter mode): reproducible tests, never production."""

    def __init__(self, seed: int) -> None:
        self._seed = seed.to_bytes(16, "big")
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            self._counter += 1
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
        return bytes(out[:size])


@dataclass
class Outcome:
    server: ServerRound
    clients: dict[int, ClientRound]
    values: dict[int, np.ndarray]
    weights: dict[int, int]
    transcript: list[object] = field(default_factory=list)
    total: np.ndarray | None = None


STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)
# Message -> Message hooks a test can install to play a malicious server or client.
Tamper = Callable[[Stage, list], list]


def make_config(n: int, d: int, *, seed: int = 0, **overrides) -> RoundConfig:
    settings = {
        "dropout_fraction": 0.2,
        "corrupted_fraction": 0.1,
        "num_values": d,
        "clip_range": 1.0,
        "quantization_bits": 16,
        "max_weight": 1000,
        "invited": n,
    }
    settings.update(overrides)
    return RoundConfig(round_id=SeededRng(seed + 10_000)(32), **settings)


def node_ids(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = set()
    while len(ids) < n:
        ids.add(int(rng.integers(1, 2**63)) * 2 - 1)  # up to 2^64 - 1: ids need not fit int64
    return sorted(ids)


def drive_round(
    config: RoundConfig,
    ids: list[int],
    *,
    drops: dict[Stage, set[int]] | None = None,
    seed: int = 0,
    keyring: UnsafeLocalKeyring | None = None,
    tamper_requests: Tamper | None = None,
    tamper_replies: Tamper | None = None,
    values: dict[int, np.ndarray] | None = None,
) -> Outcome:
    """Run one round; raises whatever the server or a client raises."""
    drops = drops or {}
    rng = SeededRng(seed)
    keyring = keyring or UnsafeLocalKeyring(rng)
    data = np.random.default_rng(seed)
    d = config.num_values + config.num_metrics
    if values is None:
        values = {i: data.uniform(-0.9, 0.9, size=d) for i in ids}
    weights = {i: int(data.integers(1, config.max_weight + 1)) for i in ids}
    clients = {i: ClientRound(node_id=i, credentials=keyring.credentials(i), rng=rng) for i in ids}
    server = ServerRound(config, ids, key_directory=None)
    outcome = Outcome(server, clients, values, weights)
    gone: set[int] = set()
    requests: list = list(server.start())
    for stage in STAGES:
        gone |= drops.get(stage, set())
        if tamper_requests is not None:
            requests = tamper_requests(stage, requests)
        replies = []
        for request in requests:
            if request.receiver in gone:
                continue
            client = clients[request.receiver]
            if isinstance(request, SetupRequest):
                reply = client.advertise(request, values[client.node_id], weights[client.node_id])
            else:
                reply = client.handle(request)
            replies.append(reply)
        if tamper_replies is not None:
            replies = tamper_replies(stage, replies)
        for reply in replies:
            outcome.transcript.append(reply)
            server.receive(reply)
        requests = list(server.advance())
    outcome.total = server.result()
    return outcome

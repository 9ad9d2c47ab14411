"""SecAgg+ cost in process: client time, server time and bytes per client.

For n in {10, 100} clients and vectors of 1M and 10M float32 values, with 0% and
10% of the clients dropping after sharing keys (the costliest point for the
server: their pairwise masks must be rebuilt), runs a whole round between the pure
state machines (:class:`secagg.ClientRound`, :class:`secagg.ServerRound`) and
prints, next to it, the plain weighted summation of the same vectors (what FedAvg
does without SecAgg+) measured in the same run.

- client time: mean per client, all stages (quantization, keys, shares, masking,
  confirmation, unmasking); "mask" is the masked-input stage alone;
- server time: all server work (checking, streaming sum, unmasking); "unmask" is
  closing the last stage (reconstructing seeds and keys, removing masks);
- bytes per client: wire-encoded records a client uploads (``appliance.wire``);
  the plain figure is the float32 update FedAvg uploads.

Parameters: dropout fraction 0.1, corrupted fraction 0.05 (n=10: k=4, t=3; n=100:
k=26, t=16), 16 bits, weights up to 100, so masked vectors travel as uint32. A last
line measures the masking stage of one client with k = 10 neighbours (the issue's
aim: < 0.2 s for 1M).

n=100 x 10M is skipped unless ``--full``: 100 in-process clients would hold 4 GB of
quantized inputs at once and take minutes on two cores. ``--quick`` uses 100k values.

    .venv/bin/python benchmarks/secagg.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

# Named like the package it measures: drop this folder from sys.path, use the repo root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402

from appliance.records import ArrayRecord, RecordDict  # noqa: E402
from appliance.wire import encode_record_dict  # noqa: E402
from secagg import (  # noqa: E402
    ClientRound,
    RoundConfig,
    ServerRound,
    SetupRequest,
    Stage,
    UnsafeLocalKeyring,
)
from secagg.codec import encode_reply  # noqa: E402

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)


def _values(seed: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.05, 0.05, size=d).astype(np.float32)


def _config(n: int, d: int, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {
        "round_id": os.urandom(32),
        "dropout_fraction": 0.1,
        "corrupted_fraction": 0.05,
        "num_values": d,
        "clip_range": 0.1,
        "quantization_bits": 16,
        "max_weight": 100,  # 100 x 100 x (2^16 - 1) < 2^32: uint32 masked vectors
        "invited": n,
    }
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def _reply_bytes(reply: object) -> int:
    return len(encode_record_dict(encode_reply(reply)))  # type: ignore[arg-type]


def secure_round(n: int, d: int, dropout: float, keyring: UnsafeLocalKeyring) -> dict[str, float]:
    config = _config(n, d)
    ids = list(range(1, n + 1))
    dropped = set(ids[: round(dropout * n)])
    clients = {
        i: ClientRound(node_id=i, credentials=keyring.credentials(i), rng=os.urandom) for i in ids
    }
    server = ServerRound(config, ids)
    client_s: dict[Stage, float] = defaultdict(float)
    server_s: dict[Stage, float] = defaultdict(float)
    upload = 0
    requests = list(server.start())
    for stage in STAGES:
        gone = dropped if stage is not Stage.SETUP and stage is not Stage.SHARE_KEYS else set()
        for request in requests:
            if request.receiver in gone:
                continue
            client = clients[request.receiver]
            if isinstance(request, SetupRequest):
                values, weight = _values(client.node_id, d), 1 + client.node_id % 100
                started = time.perf_counter()
                reply = client.advertise(request, values, weight)
            else:
                started = time.perf_counter()
                reply = client.handle(request)
            client_s[stage] += time.perf_counter() - started
            if client.node_id == ids[-1]:
                upload += _reply_bytes(reply)
            started = time.perf_counter()
            server.receive(reply)
            server_s[stage] += time.perf_counter() - started
            del reply
        started = time.perf_counter()
        requests = list(server.advance())
        server_s[stage] += time.perf_counter() - started
    survivors = n - len(dropped)
    total = server.result()
    assert int(total[-1]) == sum(1 + i % 100 for i in ids if i not in dropped)
    return {
        "client_total": sum(
            client_s[s] / (n if s in (Stage.SETUP, Stage.SHARE_KEYS) else survivors) for s in STAGES
        ),
        "client_mask": client_s[Stage.MASKED_INPUT] / survivors,
        "server_total": sum(server_s.values()),
        "server_unmask": server_s[Stage.UNMASK],
        "upload": upload,
        "k": server.params.graph.neighbours,
        "t": server.params.threshold,
    }


def plain_round(n: int, d: int, dropout: float) -> dict[str, float]:
    """What FedAvg does without SecAgg+: a running weighted sum of float32 updates."""
    survivors = list(range(1, n + 1))[round(dropout * n) :]
    vectors = [_values(i, d) for i in survivors[:4]]  # reuse a few: generation is not timed
    started = time.perf_counter()
    total = np.zeros(d, dtype=np.float64)
    for j, i in enumerate(survivors):
        np.add(
            total, np.multiply(vectors[j % len(vectors)], 1 + i % 100, dtype=np.float64), out=total
        )
    elapsed = time.perf_counter() - started
    upload = len(encode_record_dict(RecordDict({"arrays": ArrayRecord([vectors[0]])})))
    return {"server_total": elapsed, "upload": upload}


def mask_with_k(d: int, k: int, keyring: UnsafeLocalKeyring) -> float:
    """Seconds one client spends in the masked-input stage with exactly k neighbours."""
    n = 100
    config = _config(n, d, dropout_fraction=0.04, corrupted_fraction=0.0, neighbours=k)
    ids = list(range(1, n + 1))
    server = ServerRound(config, ids)
    clients = {
        i: ClientRound(node_id=i, credentials=keyring.credentials(i), rng=os.urandom) for i in ids
    }
    small = np.zeros(d, dtype=np.float32)
    replies = [clients[r.receiver].advertise(r, small, 1) for r in server.start()]
    for reply in replies:
        server.receive(reply)
    for request in server.advance():
        server.receive(clients[request.receiver].handle(request))
    request = next(r for r in server.advance() if r.receiver == 1)
    started = time.perf_counter()
    clients[1].handle(request)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="100k values only")
    group.add_argument("--full", action="store_true", help="include n=100 x 10M")
    args = parser.parse_args()
    sizes = (100_000,) if args.quick else (1_000_000, 10_000_000)
    keyring = UnsafeLocalKeyring()
    print(
        f"{'n':>4} {'values':>6} {'drop':>5} {'k':>3} {'t':>3} | {'client s':>8} {'mask s':>7} "
        f"| {'server s':>8} {'unmask s':>8} {'plain s':>8} | {'up MB':>7} {'plain MB':>8}"
    )
    for n in (10, 100):
        for d in sizes:
            if n == 100 and d >= 10_000_000 and not args.full:
                print(f"{n:>4} {d // 10**6:>5}M  skipped (4 GB of in-process client state; --full)")
                continue
            for dropout in (0.0, 0.1):
                s = secure_round(n, d, dropout, keyring)
                p = plain_round(n, d, dropout)
                label = f"{d // 1_000_000}M" if d >= 1_000_000 else f"{d // 1000}k"
                print(
                    f"{n:>4} {label:>6} {dropout:>5.0%} {s['k']:>3} {s['t']:>3} | "
                    f"{s['client_total']:>8.3f} {s['client_mask']:>7.3f} | "
                    f"{s['server_total']:>8.3f} {s['server_unmask']:>8.3f} "
                    f"{p['server_total']:>8.3f} | "
                    f"{s['upload'] / 1e6:>7.2f} {p['upload'] / 1e6:>8.2f}"
                )
    d = 100_000 if args.quick else 1_000_000
    seconds = min(mask_with_k(d, 10, keyring) for _ in range(3))
    print(f"client masking, k=10 neighbours, {d:,} values: {seconds:.3f} s (aim < 0.2 s for 1M)")


if __name__ == "__main__":
    main()

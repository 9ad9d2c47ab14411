"""The SecAgg+ neighbour graph (Bell et al. 2020, section 3): who masks with whom.

Each participant masks with, and gives its shares to, only its ``k`` neighbours.
The graph is a Harary graph ``H(k, n)`` (a ring where each node links to the ``k/2``
nearest on either side, which is k-connected) over a pseudo-random ordering of the
participants; ``k = n - 1`` gives the complete graph of the original SecAgg.

The ordering is a pure function of the round id and the sorted participant ids
(SHA-256), so every client recomputes its own neighbour list from public data and
refuses a server that claims another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

__all__ = ["neighbour_graph"]

_DOMAIN = b"greenhouse/secagg/graph/v1\x00"


def _position_key(round_id: bytes, node_id: int) -> bytes:
    return hashlib.sha256(_DOMAIN + round_id + node_id.to_bytes(8, "big")).digest()


def neighbour_graph(
    participants: Sequence[int], round_id: bytes, neighbours: int
) -> Mapping[int, frozenset[int]]:
    """Each participant's neighbours: an undirected graph, every node of degree ``neighbours``.

    Args:
        participants: distinct node ids (order does not matter).
        round_id: the round's public seed.
        neighbours: k; even and below ``n - 1``, or ``n - 1`` for the complete graph.

    Raises:
        ValueError: duplicate ids, fewer than 3 participants, or an unusable k.
    """
    ids = sorted(participants)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("participant ids must be distinct")
    if n < 3:
        raise ValueError(f"a neighbour graph needs at least 3 participants, got {n}")
    if neighbours == n - 1:
        everyone = frozenset(ids)
        return {node: everyone - {node} for node in ids}
    if not (2 <= neighbours < n - 1 and neighbours % 2 == 0):
        raise ValueError(f"k must be even in 2..{n - 2}, or {n - 1}; got {neighbours}")
    ring = sorted(ids, key=lambda node: _position_key(round_id, node))
    half = neighbours // 2
    graph: dict[int, frozenset[int]] = {}
    for position, node in enumerate(ring):
        graph[node] = frozenset(
            ring[(position + offset) % n] for offset in range(-half, half + 1) if offset
        )
    return graph

"""The hook through which a linear strategy aggregates training replies securely.

A :class:`SecureAggregation` (for example ``secagg.SecAggPlus``) takes over one
training round of a strategy: it receives the train messages the strategy
configured, runs its own protocol with those nodes through the :class:`Grid`
(so it works unchanged with the local runner and a deployment), and returns only
the weighted mean of the updates, never any node's update. Only *linear*
strategies can use it (``Strategy.is_linear``): the server learns a sum, so the
aggregate must be a function of the sum (FedAvg's weighted mean is).

This module is part of the leaf layer: it imports only records, messages and the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from appliance.grid import Grid
from appliance.message import Message
from appliance.records import ArrayRecord, MetricRecord

__all__ = ["SecureAggregation", "SecureRoundResult"]


@dataclass(frozen=True, slots=True)
class SecureRoundResult:
    """What a securely aggregated round produced.

    Attributes:
        arrays: the weighted mean of the contributors' arrays, shaped and typed like
            the reference, or ``None`` if the round failed.
        metrics: aggregated metrics: the summed weight under ``weighted_by_key`` and
            the weighted means of any metrics aggregated securely (``None`` on failure).
        contributors: how many nodes' updates are in the mean.
        failures: ``(node_id, reason)`` for every node that dropped out, and why.
        error: why the round failed as a whole (``None`` when it succeeded).
    """

    arrays: ArrayRecord | None
    metrics: MetricRecord | None
    contributors: int
    failures: tuple[tuple[int, str], ...] = ()
    error: str | None = None


@runtime_checkable
class SecureAggregation(Protocol):
    """Runs one training round so the server learns only the weighted mean of the updates."""

    def aggregate_round(
        self,
        grid: Grid,
        messages: Sequence[Message],
        *,
        reference: ArrayRecord,
        arrays_key: str,
        weighted_by_key: str,
        timeout: float,
    ) -> SecureRoundResult:
        """Send ``messages``' content to their nodes under the protocol; return the mean.

        Args:
            grid: the run's grid (every exchange goes through it).
            messages: the strategy's train messages (not yet pushed), all carrying
                ``reference`` under ``arrays_key``.
            reference: the model sent; updates are relative to it.
            arrays_key: where the model travels in train messages and replies.
            weighted_by_key: the reply metric that weights each update.
            timeout: seconds to wait for each protocol step.

        Returns:
            The mean and metrics, or a result with ``error`` set when the round failed
            (too many dropouts, a protocol violation); MUST NOT raise for those.
        """
        ...

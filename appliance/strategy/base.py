"""The Strategy contract and the round loop every strategy shares.

A strategy decides which nodes get which messages (``configure_*``) and how their
replies combine (``aggregate_*``). :meth:`Strategy.start` runs the rounds. Replies
reach ``aggregate_*`` as a :class:`Replies` stream while they arrive: error replies
are filtered out and recorded as failures, and an aggregator that finds a reply
unusable calls :meth:`Replies.reject`, so every failure is reported with its node
and reason, and nothing has to hold all replies in memory.

With ``start(..., secure_aggregation=...)`` a *linear* strategy (``is_linear``)
hands each training round to a :class:`~appliance.secure_aggregation.SecureAggregation`
(e.g. ``secagg.SecAggPlus``) through :meth:`Strategy.aggregate_train_secure`, so the
server sees only the aggregate; non-linear strategies refuse it.
"""

from __future__ import annotations

import abc
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from appliance.errors import StrategyError
from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord
from appliance.secure_aggregation import SecureAggregation

__all__ = ["EvaluateFn", "Failure", "Replies", "Result", "Strategy"]

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
_log = get_logger("appliance.strategy")


@dataclass(frozen=True, slots=True)
class Failure:
    """A node that did not contribute to a round step, and why."""

    node_id: int
    reason: str


class Replies(Iterable[Message]):
    """Replies to one round step, yielded as they arrive; errors become failures.

    Iterate once. After iteration, :attr:`failures` lists error replies, rejected
    replies and the nodes that did not answer before the timeout.
    """

    def __init__(self, grid: Grid, messages: Iterable[Message], timeout: float | None) -> None:
        self._messages = list(messages)
        self._expected = {m.metadata.message_id: m.metadata.dst_node_id for m in self._messages}
        self._grid = grid
        self._timeout = timeout
        self.failures: list[Failure] = []
        self.accepted = 0

    def __iter__(self) -> Iterator[Message]:
        ids = self._grid.push_messages(self._messages)
        pending = dict(self._expected)
        for reply in self._grid.receive(ids, timeout=self._timeout):
            node_id = pending.pop(reply.metadata.reply_to_message_id, None)
            if node_id is None:
                continue  # a duplicate or stray reply: never counted twice
            if reply.has_error():
                error = reply.error
                self.failures.append(Failure(node_id, f"error reply {error.code}: {error.reason}"))
                continue
            self.accepted += 1
            yield reply
        for node_id in pending.values():
            self.failures.append(Failure(node_id, "no reply before the timeout"))

    def reject(self, reply: Message, reason: str) -> None:
        """Record that ``reply`` was not used, and why."""
        self.accepted -= 1
        self.failures.append(Failure(reply.metadata.src_node_id, reason))


@dataclass
class Result:
    """What a strategy run produced: the final model and every round's metrics and failures."""

    arrays: ArrayRecord
    train_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_serverapp: dict[int, MetricRecord] = field(default_factory=dict)
    train_failures: dict[int, list[Failure]] = field(default_factory=dict)
    evaluate_failures: dict[int, list[Failure]] = field(default_factory=dict)


class Strategy(abc.ABC):
    """Base class of federated strategies (configure, aggregate, repeat).

    Attributes:
        is_linear: whether training aggregation is a function of the (weighted) sum
            of the updates, so it can run under secure aggregation. Subclasses that
            are linear set it and implement :meth:`aggregate_train_secure`.
    """

    is_linear: ClassVar[bool] = False

    @abc.abstractmethod
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The training messages for this round."""

    @abc.abstractmethod
    def aggregate_train(
        self, server_round: int, replies: Replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine training replies into new arrays (None keeps the old) and metrics."""

    @abc.abstractmethod
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The evaluation messages for this round (may be empty)."""

    @abc.abstractmethod
    def aggregate_evaluate(self, server_round: int, replies: Replies) -> MetricRecord | None:
        """Combine evaluation replies into metrics."""

    def aggregate_train_secure(
        self,
        server_round: int,
        messages: list[Message],
        grid: Grid,
        secure_aggregation: SecureAggregation,
        timeout: float,
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Failure]]:
        """Run this round's training under ``secure_aggregation`` (linear strategies only).

        Returns:
            New arrays (None keeps the old), metrics, and the failures of the round.

        Raises:
            StrategyError: the strategy does not support secure aggregation.
        """
        raise StrategyError(f"{type(self).__name__} does not support secure aggregation")

    def start(
        self,
        *,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600.0,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        secure_aggregation: SecureAggregation | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds of training and evaluation.

        Args:
            grid: the run's grid.
            initial_arrays: the starting model.
            num_rounds: how many rounds to run.
            timeout: seconds to wait for the replies of each step.
            train_config: sent with every training message (plus ``server-round``).
            evaluate_config: sent with every evaluation message (plus ``server-round``).
            evaluate_fn: server-side evaluation ``(round, arrays) -> metrics``, called
                before the first round (round 0) and after each round.
            secure_aggregation: if given (e.g. ``secagg.SecAggPlus(...)``), every
                training round goes through it and the server sees only the aggregate.

        Returns:
            The final arrays and the metrics and failures of every round.

        Raises:
            StrategyError: not enough nodes became available within ``timeout``, or
                ``secure_aggregation`` was given to a strategy that is not linear.
        """
        if num_rounds < 0:
            raise ValueError(f"num_rounds must be >= 0, got {num_rounds}")
        if secure_aggregation is not None:
            if not self.is_linear:
                raise StrategyError(
                    f"{type(self).__name__} is not linear: secure aggregation reveals only a "
                    "sum, which this strategy cannot aggregate from"
                )
            if not isinstance(secure_aggregation, SecureAggregation):
                raise StrategyError(
                    f"secure_aggregation must implement aggregate_round(), got "
                    f"{type(secure_aggregation).__name__}"
                )
        result = Result(arrays=initial_arrays)
        self._evaluate_centrally(evaluate_fn, 0, result)
        for server_round in range(1, num_rounds + 1):
            started = time.monotonic()
            config = ConfigRecord(train_config or {})
            config["server-round"] = server_round
            messages = self.configure_train(server_round, result.arrays, config, grid)
            if secure_aggregation is not None:
                arrays, metrics, failures = self.aggregate_train_secure(
                    server_round, messages, grid, secure_aggregation, timeout
                )
                trained = len(messages) - len(failures)
            else:
                replies = Replies(grid, messages, timeout)
                arrays, metrics = self.aggregate_train(server_round, replies)
                failures, trained = replies.failures, replies.accepted
            result.train_failures[server_round] = failures
            if arrays is not None:
                result.arrays = arrays
            if metrics is not None:
                result.train_metrics_clientapp[server_round] = metrics
            self._evaluate_federated(server_round, evaluate_config, grid, timeout, result)
            self._evaluate_centrally(evaluate_fn, server_round, result)
            _log.info(
                "round finished",
                round=f"{server_round}/{num_rounds}",
                trained=trained,
                failed=len(failures),
                updated=arrays is not None,
                seconds=round(time.monotonic() - started, 3),
            )
        return result

    def _evaluate_federated(
        self,
        server_round: int,
        evaluate_config: ConfigRecord | None,
        grid: Grid,
        timeout: float,
        result: Result,
    ) -> None:
        config = ConfigRecord(evaluate_config or {})
        config["server-round"] = server_round
        messages = self.configure_evaluate(server_round, result.arrays, config, grid)
        if not messages:
            return
        replies = Replies(grid, messages, timeout)
        metrics = self.aggregate_evaluate(server_round, replies)
        result.evaluate_failures[server_round] = replies.failures
        if metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = metrics

    @staticmethod
    def _evaluate_centrally(
        evaluate_fn: EvaluateFn | None, server_round: int, result: Result
    ) -> None:
        if evaluate_fn is None:
            return
        metrics = evaluate_fn(server_round, result.arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[server_round] = metrics


def sample_nodes(
    grid: Grid,
    *,
    fraction: float,
    min_nodes: int,
    min_available: int,
    rng: random.Random,
    wait_s: float,
) -> list[int]:
    """Wait (up to ``wait_s``) for ``min_available`` nodes, then sample ``fraction`` of them.

    At least ``min_nodes`` are sampled. Raises StrategyError when not enough nodes
    show up in time.
    """
    needed = max(min_available, min_nodes)
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        available = sorted(grid.get_node_ids())
        if len(available) >= needed:
            break
        if time.monotonic() >= deadline:
            raise StrategyError(
                f"{len(available)} node(s) available, the strategy needs at least {needed}"
            )
        time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, 1.0)
    count = max(int(len(available) * fraction), min_nodes)
    return sorted(rng.sample(available, min(count, len(available))))

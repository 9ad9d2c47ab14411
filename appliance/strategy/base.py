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
server sees only the aggregate. Non-linear strategies (robust aggregators that
need each site's update) are refused before the first round, with the reason, both
when the ServerApp asks for secure aggregation and when a site policy requires it
(a deployment grid names those sites in ``secure_aggregation_required_by``).

Every round's training cohort is recorded in ``Result.sampling`` (available, sampled,
fraction, seed: the sampling rate privacy accounting needs). With a
:class:`~appliance.strategy.checkpoint.CheckpointSink` (``checkpoint_sink=`` or the
grid's ``checkpoint_sink``) :meth:`Strategy.start` saves the global model every
``checkpoint_every`` rounds and at the end, and the per-round metrics as JSON.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from appliance.errors import StrategyError
from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord
from appliance.secure_aggregation import SecureAggregation
from appliance.strategy.checkpoint import Checkpointer, CheckpointSink
from appliance.strategy.sampling import UNRECORDED, SamplingRecord

__all__ = ["LINEAR_STRATEGIES", "EvaluateFn", "Failure", "Replies", "Result", "Strategy"]

#: The built-in strategies that can run under secure aggregation (named in refusals).
LINEAR_STRATEGIES = ("FedAvg", "FedProx", "FedAdagrad", "FedAdam", "FedYogi")

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
    """What a strategy run produced: the final model and every round's metrics and failures.

    ``sampling[round]`` says how that round's training cohort was chosen (available,
    sampled, fraction, seed), for privacy accounting.
    """

    arrays: ArrayRecord
    train_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_serverapp: dict[int, MetricRecord] = field(default_factory=dict)
    train_failures: dict[int, list[Failure]] = field(default_factory=dict)
    evaluate_failures: dict[int, list[Failure]] = field(default_factory=dict)
    sampling: dict[int, SamplingRecord] = field(default_factory=dict)


class Strategy(abc.ABC):
    """Base class of federated strategies (configure, aggregate, repeat).

    Attributes:
        is_linear: whether training aggregation is a function of the (weighted) sum
            of the updates, so it can run under secure aggregation. Subclasses that
            are linear set it and implement :meth:`aggregate_train_secure`.
        nonlinear_reason: for a strategy that is not linear, why it needs the
            individual updates (used in the refusal of secure aggregation).
    """

    is_linear: ClassVar[bool] = False
    nonlinear_reason: ClassVar[str] = (
        "its training aggregation is not a function of the sum of the updates"
    )

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
        raise StrategyError(self._not_linear_message())

    def train_sampling(self) -> SamplingRecord | None:
        """How the cohort of the latest :meth:`configure_train` was sampled (None: unknown).

        A wrapper strategy that keeps the wrapped one as ``.strategy`` (like the DP
        wrappers) reports the wrapped strategy's sampling.
        """
        inner = getattr(self, "strategy", None)
        return inner.train_sampling() if isinstance(inner, Strategy) else None

    def _not_linear_message(self) -> str:
        name = type(self).__name__
        return (
            f"{name} is not linear: {self.nonlinear_reason}, but secure aggregation (SecAgg+) "
            f"reveals only the sum of the sites' updates, so {name} cannot aggregate under "
            f"it. Use a linear strategy ({', '.join(LINEAR_STRATEGIES)}) with secure "
            f"aggregation, or {name} without it"
        )

    def check_secure_aggregation(
        self,
        secure_aggregation: SecureAggregation | None,
        *,
        required_by: Sequence[str] = (),
    ) -> None:
        """Refuse, before any round, a secure-aggregation setup this strategy cannot run.

        Args:
            secure_aggregation: what the ServerApp asked for (None: plaintext rounds).
            required_by: the sites whose policy requires secure aggregation.

        Raises:
            StrategyError: secure aggregation is asked for or required and the strategy
                is not linear; it is required but not asked for; or the object given
                is not a :class:`~appliance.secure_aggregation.SecureAggregation`.
        """
        sites = ", ".join(sorted(required_by))
        if required_by and not self.is_linear:
            raise StrategyError(
                f"the site policy of {sites} requires secure aggregation (SecAgg+). "
                + self._not_linear_message()
            )
        if required_by and secure_aggregation is None:
            raise StrategyError(
                f"the site policy of {sites} requires secure aggregation: pass "
                "secure_aggregation=secagg.SecAggPlus(...) to start()"
            )
        if secure_aggregation is None:
            return
        if not self.is_linear:
            raise StrategyError(self._not_linear_message())
        if not isinstance(secure_aggregation, SecureAggregation):
            raise StrategyError(
                f"secure_aggregation must implement aggregate_round(), got "
                f"{type(secure_aggregation).__name__}"
            )

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
        checkpoint_every: int | None = None,
        checkpoint_sink: CheckpointSink | None = None,
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
            checkpoint_every: save the global model after every N-th round (the final
                model and ``metrics.json`` are saved whenever there is a sink).
            checkpoint_sink: where checkpoints go (default: the grid's
                ``checkpoint_sink`` if the runtime provides one, else none).

        Returns:
            The final arrays and the metrics, failures and sampling of every round.

        Raises:
            StrategyError: not enough nodes became available within ``timeout``;
                secure aggregation was asked for or required by a site policy and the
                strategy is not linear; ``checkpoint_every`` was given without a sink.
            CheckpointError: a checkpoint could not be stored.
        """
        if num_rounds < 0:
            raise ValueError(f"num_rounds must be >= 0, got {num_rounds}")
        required_by = tuple(getattr(grid, "secure_aggregation_required_by", ()) or ())
        self.check_secure_aggregation(secure_aggregation, required_by=required_by)
        checkpointer = self._checkpointer(grid, checkpoint_every, checkpoint_sink)
        result = Result(arrays=initial_arrays)
        self._evaluate_centrally(evaluate_fn, 0, result)
        for server_round in range(1, num_rounds + 1):
            started = time.monotonic()
            trained, failed, updated = self._train_round(
                server_round, grid, train_config, timeout, secure_aggregation, result
            )
            self._evaluate_federated(server_round, evaluate_config, grid, timeout, result)
            self._evaluate_centrally(evaluate_fn, server_round, result)
            if checkpointer is not None:
                checkpointer.after_round(server_round, result)
            _log.info(
                "round finished",
                round=f"{server_round}/{num_rounds}",
                trained=trained,
                failed=failed,
                updated=updated,
                seconds=round(time.monotonic() - started, 3),
            )
        if checkpointer is not None:
            checkpointer.finish(result)
        return result

    def _checkpointer(
        self, grid: Grid, every: int | None, sink: CheckpointSink | None
    ) -> Checkpointer | None:
        if sink is None:
            sink = getattr(grid, "checkpoint_sink", None)
        if sink is None:
            if every is not None:
                raise StrategyError(
                    f"checkpoint_every={every} needs somewhere to write: pass "
                    "checkpoint_sink=DirectorySink(path) (a deployment's grid provides one)"
                )
            return None
        if not isinstance(sink, CheckpointSink):
            raise StrategyError(f"checkpoint_sink must implement put(), got {type(sink).__name__}")
        return Checkpointer(sink, every=every, strategy=type(self).__name__)

    def _train_round(
        self,
        server_round: int,
        grid: Grid,
        train_config: ConfigRecord | None,
        timeout: float,
        secure_aggregation: SecureAggregation | None,
        result: Result,
    ) -> tuple[int, int, bool]:
        """Configure, send and aggregate one training round; record it in ``result``."""
        config = ConfigRecord(train_config or {})
        config["server-round"] = server_round
        messages = self.configure_train(server_round, result.arrays, config, grid)
        result.sampling[server_round] = self._sampling_record(server_round, messages, grid)
        if secure_aggregation is not None:
            arrays, metrics, failures = self.aggregate_train_secure(
                server_round, messages, grid, secure_aggregation, timeout
            )
            # Failure(0, ...) is the round's own; count the nodes that contributed.
            dropped = {f.node_id for f in failures if f.node_id}
            trained = 0 if arrays is None else len(messages) - len(dropped)
        else:
            replies = Replies(grid, messages, timeout)
            arrays, metrics = self.aggregate_train(server_round, replies)
            failures, trained = replies.failures, replies.accepted
        result.train_failures[server_round] = failures
        if arrays is not None:
            result.arrays = arrays
        if metrics is not None:
            result.train_metrics_clientapp[server_round] = metrics
        return trained, len(failures), arrays is not None

    def _sampling_record(
        self, server_round: int, messages: list[Message], grid: Grid
    ) -> SamplingRecord:
        sampled = len({m.metadata.dst_node_id for m in messages})
        record = self.train_sampling()
        if record is None or record.server_round != server_round:
            return SamplingRecord(
                server_round=server_round,
                available=len(grid.get_node_ids()),
                sampled=sampled,
                fraction=None,
                min_nodes=None,
                seed=None,
                method=UNRECORDED,
            )
        return record.with_sampled(sampled)

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

"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"): the weighted mean of the sites' models.

Aggregation is incremental (a running weighted sum as replies arrive). A reply is
aggregated only if it carries exactly the model's arrays (same names, shapes,
dtypes, finite values) and a positive ``weighted_by_key`` metric; anything else is
reported as a failure of that node. If fewer than ``min_train_nodes`` replies are
usable, the round keeps the previous model and says so.

FedAvg is linear (``is_linear``): with ``start(..., secure_aggregation=...)`` each
training round is aggregated by the secure-aggregation protocol, which returns the
same weighted mean (within its quantization error) without revealing any update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from appliance.errors import StrategyError
from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message, MessageType
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from appliance.secure_aggregation import SecureAggregation
from appliance.strategy.aggregate import (
    InvalidUpdate,
    WeightedMean,
    weighted_metrics_mean,
    without_arrays,
)
from appliance.strategy.base import Failure, Replies, Strategy
from appliance.strategy.sampling import SamplingRecord, check_fraction, new_seed, sample_cohort

__all__ = ["FedAvg", "MetricsAggrFn"]

MetricsAggrFn = Callable[[Sequence[RecordDict], str], MetricRecord]
_log = get_logger("appliance.strategy.fedavg")


class FedAvg(Strategy):
    """Federated Averaging, weighted by each site's number of examples.

    Args:
        fraction_train: fraction of available nodes sampled for training.
        fraction_evaluate: fraction of available nodes sampled for evaluation (0 disables).
        min_train_nodes: at least this many nodes train, and at least this many usable
            replies are needed to update the model.
        min_evaluate_nodes: at least this many nodes evaluate.
        min_available_nodes: wait for this many nodes before sampling.
        weighted_by_key: the metric that weights each reply (e.g. ``num-examples``).
        arrayrecord_key: where the model travels in message content.
        configrecord_key: where the round's config travels in message content.
        train_metrics_aggr_fn: combines the training metrics (weighted mean by default).
        evaluate_metrics_aggr_fn: combines the evaluation metrics (weighted mean by default).
        seed: seeds node sampling, for reproducible runs (default: a random seed,
            recorded in ``Result.sampling`` so the cohorts can be recomputed).
        wait_for_nodes_s: how long to wait for ``min_available_nodes`` before failing.

    Raises:
        ValueError: a fraction is outside [0, 1] or a minimum is below 1.
    """

    is_linear = True

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        seed: int | None = None,
        wait_for_nodes_s: float = 600.0,
    ) -> None:
        check_fraction("fraction_train", fraction_train)
        check_fraction("fraction_evaluate", fraction_evaluate)
        for name, value in (
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
            ("min_available_nodes", min_available_nodes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or weighted_metrics_mean
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn or weighted_metrics_mean
        self.wait_for_nodes_s = wait_for_nodes_s
        self.seed = new_seed() if seed is None else int(seed)
        self._reference: ArrayRecord | None = None
        self._train_sampling: SamplingRecord | None = None

    def train_sampling(self) -> SamplingRecord | None:
        """How the cohort of the latest :meth:`configure_train` was drawn."""
        return self._train_sampling

    def _sample(self, grid: Grid, server_round: int, purpose: str) -> list[int]:
        train = purpose == "train"
        node_ids, record = sample_cohort(
            grid,
            server_round=server_round,
            fraction=self.fraction_train if train else self.fraction_evaluate,
            min_nodes=self.min_train_nodes if train else self.min_evaluate_nodes,
            min_available=self.min_available_nodes,
            seed=self.seed,
            purpose=purpose,
            wait_s=self.wait_for_nodes_s,
        )
        if train:
            self._train_sampling = record
        return node_ids

    def _messages(
        self,
        grid: Grid,
        message_type: MessageType,
        server_round: int,
        node_ids: list[int],
        content: RecordDict,
    ) -> list[Message]:
        return [
            grid.create_message(content, message_type.value, node_id, group_id=str(server_round))
            for node_id in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send the model and config to a sample of the available nodes."""
        if self.fraction_train == 0.0:
            return []
        node_ids = self._sample(grid, server_round, "train")
        self._reference = arrays
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._messages(grid, MessageType.TRAIN, server_round, node_ids, content)

    def _weight(self, reply: Message) -> tuple[ArrayRecord, RecordDict, float]:
        content = reply.content
        arrays = content.array_records
        if list(arrays) != [self.arrayrecord_key]:
            raise InvalidUpdate(
                f"reply must hold one ArrayRecord named {self.arrayrecord_key!r}, "
                f"found {list(arrays) or 'none'}"
            )
        metrics = content.metric_records
        weights = [m[self.weighted_by_key] for m in metrics.values() if self.weighted_by_key in m]
        if len(weights) != 1 or isinstance(weights[0], list):
            raise InvalidUpdate(f"reply must report one numeric {self.weighted_by_key!r} metric")
        return arrays[self.arrayrecord_key], content, float(weights[0])

    def aggregate_train(
        self, server_round: int, replies: Replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of the usable replies' arrays; weighted mean of their metrics."""
        if self._reference is None:
            raise RuntimeError("aggregate_train called before configure_train")
        mean = WeightedMean(self._reference)
        contents: list[RecordDict] = []
        for reply in replies:
            try:
                arrays, content, weight = self._weight(reply)
                mean.add(arrays, weight)
            except InvalidUpdate as exc:
                replies.reject(reply, str(exc))
                continue
            contents.append(without_arrays(content))
        if mean.count < self.min_train_nodes:
            _log.warning(
                "round keeps the previous model",
                round=server_round,
                usable_replies=mean.count,
                min_train_nodes=self.min_train_nodes,
            )
            return None, None
        return mean.result(), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_train_secure(
        self,
        server_round: int,
        messages: list[Message],
        grid: Grid,
        secure_aggregation: SecureAggregation,
        timeout: float,
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Failure]]:
        """The weighted mean computed by ``secure_aggregation``; keeps the model if it failed.

        Raises:
            StrategyError: a subclass declared itself not linear.
        """
        if not self.is_linear:
            raise StrategyError(self._not_linear_message())
        if not messages:
            return None, None, []
        if self._reference is None:
            raise RuntimeError("aggregate_train_secure called before configure_train")
        outcome = secure_aggregation.aggregate_round(
            grid,
            messages,
            reference=self._reference,
            arrays_key=self.arrayrecord_key,
            weighted_by_key=self.weighted_by_key,
            timeout=timeout,
        )
        failures = [Failure(node_id, reason) for node_id, reason in outcome.failures]
        if outcome.error is not None:  # the round as a whole: reported as the server's (0)
            failures.append(Failure(0, f"secure aggregation failed: {outcome.error}"))
        if outcome.arrays is None or outcome.contributors < self.min_train_nodes:
            _log.warning(
                "round keeps the previous model",
                round=server_round,
                contributors=outcome.contributors,
                min_train_nodes=self.min_train_nodes,
                error=outcome.error,
            )
            return None, None, failures
        return outcome.arrays, outcome.metrics, failures

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send the model and config to a sample of the nodes for evaluation."""
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = self._sample(grid, server_round, "evaluate")
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._messages(grid, MessageType.EVALUATE, server_round, node_ids, content)

    def aggregate_evaluate(self, server_round: int, replies: Replies) -> MetricRecord | None:
        """Weighted mean of the evaluation metrics."""
        contents: list[RecordDict] = []
        for reply in replies:
            metrics = reply.content.metric_records.values()
            weight = next(
                (m[self.weighted_by_key] for m in metrics if self.weighted_by_key in m), None
            )
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                replies.reject(
                    reply, f"reply must report a positive {self.weighted_by_key!r} metric"
                )
                continue
            contents.append(without_arrays(reply.content))
        if not contents:
            return None
        return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)

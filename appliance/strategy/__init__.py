"""Federated strategies: how a round is configured and how replies are combined.

Example:
    >>> from appliance.strategy import FedAvg
    >>> strategy = FedAvg(fraction_train=1.0, min_available_nodes=3)
    >>> # result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)
    >>> # ... or, so the server sees only the aggregate (linear strategies only):
    >>> # result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5,
    >>> #                         secure_aggregation=secagg.SecAggPlus(clip_range=0.5))
"""

from appliance.secure_aggregation import SecureAggregation, SecureRoundResult
from appliance.strategy.aggregate import InvalidUpdate, WeightedMean, weighted_metrics_mean
from appliance.strategy.base import EvaluateFn, Failure, Replies, Result, Strategy
from appliance.strategy.fedavg import FedAvg, MetricsAggrFn

__all__ = [
    "EvaluateFn",
    "Failure",
    "FedAvg",
    "InvalidUpdate",
    "MetricsAggrFn",
    "Replies",
    "Result",
    "SecureAggregation",
    "SecureRoundResult",
    "Strategy",
    "WeightedMean",
    "weighted_metrics_mean",
]

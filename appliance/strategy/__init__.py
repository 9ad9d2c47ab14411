"""Federated strategies: how a round is configured and how replies are combined.

Linear strategies (``is_linear``: FedAvg, FedProx, FedAdagrad, FedAdam, FedYogi)
combine the weighted sum of the updates and can run under secure aggregation;
robust ones (FedMedian, TrimmedMean, Krum, MultiKrum, Bulyan) need each update and
run in plaintext rounds only. ``docs/strategies.md`` compares them.

Example:
    >>> from appliance.strategy import DirectorySink, FedAdam, FedAvg, Krum
    >>> strategy = FedAvg(fraction_train=1.0, min_available_nodes=3, seed=7)
    >>> # result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)
    >>> # ... so the server sees only the aggregate (linear strategies only):
    >>> # result = FedAdam(eta=0.1).start(grid=grid, initial_arrays=arrays, num_rounds=5,
    >>> #                                 secure_aggregation=secagg.SecAggPlus(clip_range=0.5))
    >>> # ... robust to one Byzantine site, checkpointing every 2 rounds:
    >>> # result = Krum(num_malicious_nodes=1).start(grid=grid, initial_arrays=arrays,
    >>> #     num_rounds=10, checkpoint_every=2, checkpoint_sink=DirectorySink("out"))
    >>> # result.sampling[1].rate  -> the first round's sampling rate
"""

from appliance.secure_aggregation import SecureAggregation, SecureRoundResult
from appliance.strategy.aggregate import InvalidUpdate, WeightedMean, weighted_metrics_mean
from appliance.strategy.base import EvaluateFn, Failure, Replies, Result, Strategy
from appliance.strategy.checkpoint import (
    CheckpointError,
    CheckpointSink,
    DirectorySink,
    decode_npz,
    encode_npz,
)
from appliance.strategy.fedavg import FedAvg, MetricsAggrFn
from appliance.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from appliance.strategy.fedprox import FedProx
from appliance.strategy.robust import (
    Bulyan,
    FedMedian,
    Krum,
    MultiKrum,
    RobustStrategy,
    TrimmedMean,
)
from appliance.strategy.sampling import SamplingRecord

__all__ = [
    "Bulyan",
    "CheckpointError",
    "CheckpointSink",
    "DirectorySink",
    "EvaluateFn",
    "Failure",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "InvalidUpdate",
    "Krum",
    "MetricsAggrFn",
    "MultiKrum",
    "Replies",
    "Result",
    "RobustStrategy",
    "SamplingRecord",
    "SecureAggregation",
    "SecureRoundResult",
    "Strategy",
    "TrimmedMean",
    "WeightedMean",
    "decode_npz",
    "encode_npz",
    "weighted_metrics_mean",
]

"""Robust aggregation for plaintext rounds: FedMedian, TrimmedMean, Krum, MultiKrum, Bulyan.

These strategies configure rounds, sample and evaluate exactly like
:class:`~appliance.strategy.FedAvg` and validate every reply the same way (array
names, shapes, dtypes, finite values, a positive ``weighted_by_key`` metric; a bad
reply is a failure of its node). They differ in how the validated models combine:
by a rule from :mod:`appliance.strategy.robust_rules` that limits what ``f``
Byzantine sites can do to the global model.

What they cost and what they refuse:

- They need every site's individual update, so the ServerApp holds all of a
  round's accepted updates at once: memory is O(nodes x model), inherent to the
  rules (FedAvg streams in O(model)).
- They are not linear (``is_linear = False``): secure aggregation reveals only a sum,
  so ``start(..., secure_aggregation=...)`` is refused before the first round.
- Sites count equally: a site's reported example count is under the attacker's
  control, so it weights only the metrics, never the model.
- A configuration that cannot give the rule's guarantee is refused with a
  :class:`~appliance.errors.StrategyError` at construction (e.g. Krum needs
  ``n > 2f + 2``, Bulyan ``n >= 4f + 3``; ``min_train_nodes`` defaults to that bound).
  A round left with fewer usable replies keeps the previous model.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.errors import StrategyError
from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from appliance.strategy import robust_rules as rules
from appliance.strategy.aggregate import InvalidUpdate, check_update
from appliance.strategy.base import Replies
from appliance.strategy.fedavg import FedAvg

__all__ = ["Bulyan", "FedMedian", "Krum", "MultiKrum", "RobustStrategy", "TrimmedMean"]

_log = get_logger("appliance.strategy.robust")
CoordinateRule = Callable[[npt.NDArray[Any]], npt.NDArray[np.float64]]
Combined = tuple[ArrayRecord, list[int] | None]


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _mean(stack: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    mean: npt.NDArray[np.float64] = np.mean(np.asarray(stack, dtype=np.float64), axis=0)
    return mean


def _cast(values: npt.NDArray[np.float64], like: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if like.dtype.kind in "iub":
        values = np.rint(values)
    return values.astype(like.dtype)


class RobustStrategy(FedAvg):
    """FedAvg's rounds with a robust, non-linear combination of the validated updates.

    Args:
        min_train_nodes: fewest usable replies to update the model; defaults to (and
            may not be below) :meth:`required_nodes`.
        **kwargs: the other arguments of :class:`~appliance.strategy.FedAvg`.

    Raises:
        StrategyError: ``min_train_nodes`` is below what the rule needs.
    """

    is_linear = False
    nonlinear_reason = "it compares the sites' individual updates"

    def __init__(self, *, min_train_nodes: int | None = None, **kwargs: Any) -> None:
        required = self.required_nodes()
        if min_train_nodes is None:
            min_train_nodes = max(required, 2)
        elif min_train_nodes < required:
            raise StrategyError(
                f"{self.requirement()}: min_train_nodes={min_train_nodes} is too small, "
                f"set it to at least {required}"
            )
        super().__init__(min_train_nodes=min_train_nodes, **kwargs)
        self.last_selected: tuple[int, ...] = ()

    @abc.abstractmethod
    def required_nodes(self) -> int:
        """The fewest updates the rule can combine with its guarantee."""

    def requirement(self) -> str:
        """Why :meth:`required_nodes` is what it is, for error messages."""
        return f"{type(self).__name__} needs at least {self.required_nodes()} updates"

    @abc.abstractmethod
    def _combine(self, reference: ArrayRecord, updates: list[ArrayRecord]) -> Combined:
        """Combine at least :meth:`required_nodes` validated updates.

        Returns:
            The new model, and the indices of the updates a selecting rule chose
            (``None`` for coordinate-wise rules).
        """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's training messages; refuses a cohort too small for the rule.

        Raises:
            StrategyError: fewer nodes were sampled than :meth:`required_nodes`.
        """
        messages = super().configure_train(server_round, arrays, config, grid)
        if messages and len(messages) < self.required_nodes():
            raise StrategyError(
                f"{self.requirement()}, but only {len(messages)} node(s) were sampled "
                f"in round {server_round}"
            )
        return messages

    def _validate(self, reply: Message, reference: ArrayRecord) -> tuple[ArrayRecord, RecordDict]:
        arrays, content, weight = self._weight(reply)
        if not (weight > 0 and math.isfinite(weight)):
            raise InvalidUpdate(f"{self.weighted_by_key!r} must be positive and finite")
        check_update(reference, arrays)
        return arrays, content

    def aggregate_train(
        self, server_round: int, replies: Replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, keep the usable ones, and combine them by the rule."""
        reference = self._reference
        if reference is None:
            raise RuntimeError("aggregate_train called before configure_train")
        updates: list[ArrayRecord] = []
        contents: list[RecordDict] = []
        node_ids: list[int] = []
        for reply in replies:
            try:
                arrays, content = self._validate(reply, reference)
            except InvalidUpdate as exc:
                replies.reject(reply, str(exc))
                continue
            updates.append(arrays)
            contents.append(content)
            node_ids.append(reply.metadata.src_node_id)
        if len(updates) < max(self.min_train_nodes, self.required_nodes()):
            _log.warning(
                "round keeps the previous model",
                round=server_round,
                usable_replies=len(updates),
                needed=max(self.min_train_nodes, self.required_nodes()),
                strategy=type(self).__name__,
            )
            return None, None
        new, selected = self._combine(reference, updates)
        self.last_selected = () if selected is None else tuple(node_ids[i] for i in selected)
        if selected is not None:
            _log.info("updates selected", round=server_round, nodes=list(self.last_selected))
        return new, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    @staticmethod
    def _coordinatewise(
        reference: ArrayRecord, updates: list[ArrayRecord], rule: CoordinateRule
    ) -> ArrayRecord:
        return ArrayRecord(
            {
                name: _cast(rule(np.stack([u[name] for u in updates])), like)
                for name, like in reference.items()
            }
        )


class FedMedian(RobustStrategy):
    """Coordinate-wise median of the sites' models (Yin et al. 2018).

    Robust while fewer than half the sites are Byzantine. Memory O(nodes x model).
    Arguments as :class:`RobustStrategy`.
    """

    nonlinear_reason = "the coordinate-wise median needs each site's individual update"

    def required_nodes(self) -> int:
        return 1

    def _combine(self, reference: ArrayRecord, updates: list[ArrayRecord]) -> Combined:
        return self._coordinatewise(reference, updates, rules.coordinate_median), None


class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    Per coordinate, drops the ``floor(beta * n)`` smallest and largest values and
    averages the rest; tolerates ``f <= floor(beta * n)`` Byzantine sites. Memory
    O(nodes x model).

    Args:
        beta: the fraction trimmed from each side, in [0, 0.5). With ``beta > 0`` a
            round needs enough sites that at least one value is trimmed per side
            (``floor(beta * n) >= 1``); fewer would silently be a plain mean.
        **kwargs: as :class:`RobustStrategy`.

    Raises:
        ValueError: ``beta`` is outside [0, 0.5).
        StrategyError: ``min_train_nodes`` is too small for ``beta``.
    """

    nonlinear_reason = "the trimmed mean sorts each site's individual update"

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        if isinstance(beta, bool) or not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = float(beta)
        super().__init__(**kwargs)

    def required_nodes(self) -> int:
        n = 1
        while self.beta > 0 and rules.trimmed_count(n, self.beta) < 1:
            n += 1
        return n

    def requirement(self) -> str:
        return (
            f"TrimmedMean(beta={self.beta}) needs n >= {self.required_nodes()} updates "
            "so that floor(beta * n) >= 1 value is trimmed from each side"
        )

    def _combine(self, reference: ArrayRecord, updates: list[ArrayRecord]) -> Combined:
        beta = self.beta
        new = self._coordinatewise(reference, updates, lambda s: rules.trimmed_mean(s, beta))
        return new, None


class Krum(RobustStrategy):
    """Krum (Blanchard et al. 2017): the update closest to its ``n - f - 2`` nearest others.

    Each update is scored by the sum of squared L2 distances to its ``n - f - 2``
    nearest neighbours; Krum takes the best-scored update, Multi-Krum averages the
    ``num_nodes_to_select`` best. Needs ``n > 2f + 2``. Memory O(nodes x model) plus an
    ``n x n`` distance matrix. ``last_selected`` holds the chosen node ids.

    Args:
        num_malicious_nodes: ``f``, the Byzantine sites to tolerate.
        num_nodes_to_select: how many best-scored updates to average (1 is Krum).
        **kwargs: as :class:`RobustStrategy`.

    Raises:
        ValueError: a count is negative or ``num_nodes_to_select`` is 0.
        StrategyError: ``min_train_nodes`` is below ``2f + 3`` (or ``num_nodes_to_select``).
    """

    nonlinear_reason = "Krum compares the distances between the sites' individual updates"

    def __init__(
        self, *, num_malicious_nodes: int = 0, num_nodes_to_select: int | None = 1, **kwargs: Any
    ) -> None:
        self.num_malicious_nodes = _check_count("num_malicious_nodes", num_malicious_nodes)
        m = num_nodes_to_select
        if m is not None and _check_count("num_nodes_to_select", m) < 1:
            raise ValueError("num_nodes_to_select must be >= 1")
        self.num_nodes_to_select = m
        super().__init__(**kwargs)

    def required_nodes(self) -> int:
        return max(2 * self.num_malicious_nodes + 3, self.num_nodes_to_select or 1)

    def requirement(self) -> str:
        f, m = self.num_malicious_nodes, self.num_nodes_to_select or 1
        name = type(self).__name__
        if m > 2 * f + 3:
            return f"{name} selecting {m} updates needs at least {m} updates"
        return f"{name} with f={f} needs n > 2f + 2, i.e. at least {2 * f + 3} updates"

    def _combine(self, reference: ArrayRecord, updates: list[ArrayRecord]) -> Combined:
        f = self.num_malicious_nodes
        count = len(updates) - f if self.num_nodes_to_select is None else self.num_nodes_to_select
        distances = rules.pairwise_squared_distances([u.to_numpy_ndarrays() for u in updates])
        selected = rules.krum_select(distances, f, count)
        chosen = [updates[i] for i in selected]
        return self._coordinatewise(reference, chosen, _mean), selected


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): the mean of the ``m`` best Krum-scored updates.

    Args:
        num_malicious_nodes: ``f``.
        num_nodes_to_select: ``m``; default ``n - f`` (all but the ``f`` worst-scored).
        **kwargs: as :class:`RobustStrategy`.
    """

    def __init__(
        self, *, num_malicious_nodes: int = 0, num_nodes_to_select: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            num_malicious_nodes=num_malicious_nodes,
            num_nodes_to_select=num_nodes_to_select,
            **kwargs,
        )


class Bulyan(RobustStrategy):
    """Bulyan (El Mhamdi et al. 2018): Krum-based selection, then a trimmed coordinate rule.

    1. Select ``theta = n - 2f`` updates by applying Krum ``theta`` times, removing
       each winner from the candidates (scores use ``max(|candidates| - f - 2, 1)``
       neighbours as the set shrinks).
    2. Per coordinate, average the ``beta = theta - 2f`` selected values closest to
       their median.

    Needs ``n >= 4f + 3``. Memory O(nodes x model) plus an ``n x n`` distance matrix.
    ``last_selected`` holds the node ids selected in step 1.

    Args:
        num_malicious_nodes: ``f``, the Byzantine sites to tolerate.
        **kwargs: as :class:`RobustStrategy`.

    Raises:
        ValueError: ``num_malicious_nodes`` is negative.
        StrategyError: ``min_train_nodes`` is below ``4f + 3``.
    """

    nonlinear_reason = "Bulyan compares and sorts the sites' individual updates"

    def __init__(self, *, num_malicious_nodes: int = 0, **kwargs: Any) -> None:
        self.num_malicious_nodes = _check_count("num_malicious_nodes", num_malicious_nodes)
        super().__init__(**kwargs)

    def required_nodes(self) -> int:
        return 4 * self.num_malicious_nodes + 3

    def requirement(self) -> str:
        return (
            f"Bulyan with f={self.num_malicious_nodes} needs n >= 4f + 3 = "
            f"{self.required_nodes()} updates"
        )

    def _combine(self, reference: ArrayRecord, updates: list[ArrayRecord]) -> Combined:
        f = self.num_malicious_nodes
        distances = rules.pairwise_squared_distances([u.to_numpy_ndarrays() for u in updates])
        selected = rules.bulyan_select(distances, f)
        chosen = [updates[i] for i in selected]
        new = self._coordinatewise(reference, chosen, lambda s: rules.bulyan_coordinates(s, f))
        return new, selected

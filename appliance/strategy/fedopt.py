"""Server-side adaptive optimisers: FedAdagrad, FedAdam, FedYogi.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2. Each round
the server forms the *pseudo-gradient* ``Δ_t = mean_i(x_i) - x_t`` (the weighted mean
of the sites' models minus the current global model, i.e. the mean update) and
applies an adaptive step::

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = v_{t-1} + Δ_t²                                  (FedAdagrad)
    v_t = β2 v_{t-1} + (1 - β2) Δ_t²                      (FedAdam)
    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)    (FedYogi)
    x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)

with ``m_{-1} = 0`` and ``v_{-1} = τ²`` (the paper asks ``v_{-1} >= τ²``) and, as in
Algorithm 2, no bias correction. ``m`` and ``v`` are float64, one of each per
floating-point array: the state is O(model). Non-floating arrays (counters) take the
plain weighted mean.

The step needs only the weighted mean, so these strategies are linear: under
secure aggregation the mean comes from the protocol (FedAvg's
``aggregate_train_secure``) and the step is applied to it. The state is reset when a
run starts (round 1).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.grid import Grid
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord
from appliance.secure_aggregation import SecureAggregation
from appliance.strategy.base import Failure, Replies
from appliance.strategy.fedavg import FedAvg

__all__ = ["CLIENT_LEARNING_RATE_KEY", "FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]

#: The training-config key ``eta_l`` is sent under (the key the examples read).
CLIENT_LEARNING_RATE_KEY = "learning-rate"
Float64Array = npt.NDArray[np.float64]


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_decay(name: str, value: float) -> float:
    if isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


class FedOpt(FedAvg):
    """The shared FedOpt round (Reddi et al. 2021); subclasses define the second moment.

    Args:
        eta: server learning rate ``η``.
        eta_l: client learning rate; if set, sent in every training config as
            ``learning-rate`` (overriding the ``train_config`` value).
        beta_1: momentum decay ``β1`` in [0, 1).
        beta_2: second-moment decay ``β2`` in [0, 1) (unused by FedAdagrad).
        tau: ``τ > 0``, the adaptivity floor in the denominator (smaller is more adaptive).
        **kwargs: the arguments of :class:`~appliance.strategy.FedAvg`.

    Raises:
        ValueError: a parameter is out of range.
    """

    is_linear = True

    def __init__(
        self,
        *,
        eta: float = 1e-1,
        eta_l: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        self.eta = _check_positive("eta", eta)
        self.eta_l = None if eta_l is None else _check_positive("eta_l", eta_l)
        self.beta_1 = _check_decay("beta_1", beta_1)
        self.beta_2 = _check_decay("beta_2", beta_2)
        self.tau = _check_positive("tau", tau)
        super().__init__(**kwargs)
        self.m_t: dict[str, Float64Array] = {}
        self.v_t: dict[str, Float64Array] = {}

    @abc.abstractmethod
    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        """Update ``v`` in place from ``Δ²``."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's training messages (with ``learning-rate`` = ``eta_l`` if set)."""
        if server_round == 1:
            self.m_t, self.v_t = {}, {}
        if self.eta_l is not None:
            config = ConfigRecord(config.items())
            config[CLIENT_LEARNING_RATE_KEY] = self.eta_l
        return super().configure_train(server_round, arrays, config, grid)

    def _step(self, mean: ArrayRecord) -> ArrayRecord:
        """Apply one adaptive step from the current model towards the sites' mean."""
        current = self._reference
        if current is None:
            raise RuntimeError("the FedOpt step ran before configure_train")
        new: dict[str, npt.NDArray[Any]] = {}
        for name, x in current.items():
            if x.dtype.kind != "f":
                new[name] = mean[name]
                continue
            x64 = x.astype(np.float64)
            delta = mean[name].astype(np.float64) - x64
            m = self.m_t.setdefault(name, np.zeros(x.shape, dtype=np.float64))
            m *= self.beta_1
            m += (1.0 - self.beta_1) * delta
            v = self.v_t.setdefault(name, np.full(x.shape, self.tau**2, dtype=np.float64))
            np.square(delta, out=delta)
            self._second_moment(v, delta)
            denominator = np.sqrt(v)
            denominator += self.tau
            x64 += self.eta * m / denominator
            new[name] = x64.astype(x.dtype)
        return ArrayRecord(new)

    def aggregate_train(
        self, server_round: int, replies: Replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's weighted mean, then one adaptive server step."""
        mean, metrics = super().aggregate_train(server_round, replies)
        return (None if mean is None else self._step(mean)), metrics

    def aggregate_train_secure(
        self,
        server_round: int,
        messages: list[Message],
        grid: Grid,
        secure_aggregation: SecureAggregation,
        timeout: float,
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Failure]]:
        """The securely aggregated mean, then one adaptive server step."""
        mean, metrics, failures = super().aggregate_train_secure(
            server_round, messages, grid, secure_aggregation, timeout
        )
        return (None if mean is None else self._step(mean)), metrics, failures


class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al. 2021): ``v_t = v_{t-1} + Δ_t²``; ``beta_2`` is unused.

    Arguments as :class:`FedOpt`.
    """

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v += delta_sq


class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021): ``v_t = β2 v_{t-1} + (1 - β2) Δ_t²``.

    Arguments as :class:`FedOpt`.
    """

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v *= self.beta_2
        v += (1.0 - self.beta_2) * delta_sq


class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021; Zaheer et al. 2018): additive, sign-controlled ``v``.

    ``v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)``: ``v`` grows or shrinks by
    a bounded amount per round, so the effective rate changes more slowly than Adam's.
    Arguments as :class:`FedOpt`.
    """

    def _second_moment(self, v: Float64Array, delta_sq: Float64Array) -> None:
        v -= (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)

"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys).

FedProx is FedAvg whose sites minimise their local loss plus a proximal term
``(mu / 2) * ||w - w_global||^2``, which keeps local models near the global one when
sites' data differ (non-IID) or do uneven amounts of work. The server side is
FedAvg's weighted mean; the only difference on the wire is ``proximal-mu`` in every
training config, which the ClientApp MUST honour (add ``mu * (w - w_global)`` to its
gradient; ``examples/hospital`` shows how).

FedProx is linear, like FedAvg, so it runs under secure aggregation.
"""

from __future__ import annotations

import math
from typing import Any

from appliance.grid import Grid
from appliance.message import Message
from appliance.records import ArrayRecord, ConfigRecord
from appliance.strategy.fedavg import FedAvg

__all__ = ["PROXIMAL_MU_KEY", "FedProx"]

#: The training-config key that carries ``mu``.
PROXIMAL_MU_KEY = "proximal-mu"


class FedProx(FedAvg):
    """FedAvg with a proximal term on the sites' local objective (Li et al. 2020).

    Args:
        proximal_mu: ``mu >= 0``, the weight of ``(mu / 2) * ||w - w_global||^2`` in each
            site's local loss, sent as ``proximal-mu`` in every training config
            (``mu = 0`` is FedAvg). Li et al. tune it over {0.001, 0.01, 0.1, 1}.
        **kwargs: the arguments of :class:`~appliance.strategy.FedAvg`.

    Raises:
        ValueError: ``proximal_mu`` is negative or not finite, or a FedAvg argument is
            out of range.
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        if isinstance(proximal_mu, bool) or not (math.isfinite(proximal_mu) and proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu}")
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's training messages, with ``proximal-mu`` added to the config."""
        config = ConfigRecord(config.items())
        config[PROXIMAL_MU_KEY] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)

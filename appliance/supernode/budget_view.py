"""A read-only view of the site's privacy-budget ledger, for the SuperNode's metrics.

It opens the ledger file the SuperNode keeps (``budget.db``, see
:mod:`appliance.supernode.budget`) through :class:`dp.BudgetLedger`'s public API and
only reads it (:meth:`dp.BudgetLedger.status`); booking stays with the run admission.
Nothing is opened or created before the file exists.
"""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.metrics import BudgetReading
from appliance.supernode.budget import BUDGET_FILE
from dp import BudgetLedger

__all__ = ["BudgetView"]


class BudgetView:
    """The remaining epsilon per dataset and privacy unit, read on demand."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / BUDGET_FILE
        self._ledger: BudgetLedger | None = None
        self._lock = threading.Lock()

    def remaining(self) -> list[BudgetReading]:
        """Every budget the ledger holds, with its remaining epsilon (none without a ledger).

        Raises:
            dp.DPError: the ledger cannot be read.
        """
        with self._lock:
            if self._ledger is None:
                if not self.path.is_file():
                    return []
                self._ledger = BudgetLedger.open(self.path)
            statuses = self._ledger.status()
        return [
            BudgetReading(s.budget.dataset, s.budget.unit.value, s.remaining_epsilon)
            for s in statuses
        ]

    def close(self) -> None:
        """Release the ledger's connections (it may be opened again by :meth:`remaining`)."""
        with self._lock:
            ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.close()

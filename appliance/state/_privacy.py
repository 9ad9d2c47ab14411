"""Run privacy: a run's declared DP plan with its planned and spent (epsilon, delta).

The SuperLink computes the numbers (``dp.plan``); this module only stores the latest
figures per run and reads them back for ``ListRuns``.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from sqlalchemy import select

from appliance.state._store import Store, check_id
from appliance.state.errors import InvalidArgument, RunNotFound
from appliance.state.models import RunPrivacyRow, RunRow
from appliance.state.values import RunPrivacy

__all__ = ["PrivacyStore"]

UNITS = frozenset({"site-level", "record-level"})


def _privacy(row: RunPrivacyRow) -> RunPrivacy:
    return RunPrivacy(
        run_id=row.run_id, plan_json=row.plan, unit=row.unit, delta=row.delta,
        planned_epsilon=row.planned_epsilon, spent_epsilon=row.spent_epsilon,
        rounds_done=row.rounds_done, updated_at=row.updated_at,
    )  # fmt: skip


def _check_epsilon(value: float, what: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InvalidArgument(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


class PrivacyStore(Store):
    """Run privacy operations of :class:`~appliance.state.State`."""

    def set_run_privacy(
        self,
        run_id: int,
        *,
        plan_json: str,
        unit: str,
        delta: float,
        planned_epsilon: float,
        spent_epsilon: float,
        rounds_done: int,
    ) -> RunPrivacy:
        """Record (or update) a run's plan and spend.

        Raises:
            InvalidArgument: an unknown unit, or a negative or non-finite number.
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        if unit not in UNITS:
            raise InvalidArgument(f"unit must be one of {sorted(UNITS)}, got {unit!r}")
        planned = _check_epsilon(planned_epsilon, "planned epsilon")
        spent = _check_epsilon(spent_epsilon, "spent epsilon")
        if not 0 <= delta < 1 or rounds_done < 0:
            raise InvalidArgument("delta must be in [0, 1) and rounds_done >= 0")
        with self._write() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            row = session.get(RunPrivacyRow, run_id)
            if row is None:
                row = RunPrivacyRow(run_id=run_id)
                session.add(row)
            row.plan, row.unit, row.delta = plan_json, unit, float(delta)
            row.planned_epsilon, row.spent_epsilon = planned, spent
            row.rounds_done, row.updated_at = rounds_done, self._now()
            session.flush()
            return _privacy(row)

    def run_privacy(self, run_ids: Collection[int]) -> dict[int, RunPrivacy]:
        """The privacy records of these runs (runs without a DP plan are absent)."""
        ids = [check_id(run_id, "run_id") for run_id in run_ids]
        if not ids:
            return {}
        with self._read() as session:
            rows = session.scalars(select(RunPrivacyRow).where(RunPrivacyRow.run_id.in_(ids)))
            return {row.run_id: _privacy(row) for row in rows}

"""The SuperLink's view of a run's privacy: its DP plan, planned and spent (epsilon, delta).

At submission the run config's DP plan (:mod:`dp.plan`) is checked -- a malformed
plan refuses the run with the key named -- and its planned (ε, δ) is stored with the
run and written to the run's log. After every round the ServerApp reports, the
spend so far is recomputed from the plan (off the round's path: accounting takes
tens of milliseconds) and logged, so ``greenhouse ls``/``log``/``show`` say what a
run has spent and will spend, always with its privacy unit.

The figures are the plan's: the ServerApp applies the same run-config keys (see
``examples/hospital``). Sites do their own, conservative, accounting in their
budget ledgers; the SuperLink's number is what the data scientist planned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from appliance.logs import get_logger
from appliance.state import LogStream, State, StateError
from dp.errors import DPError
from dp.plan import DPPlan, PlanMode
from dp.spend import PrivacySpend

__all__ = ["PrivacyTracker"]

_log = get_logger("appliance.superlink.privacy")


@dataclass(frozen=True, slots=True)
class _Figures:
    spent: PrivacySpend
    planned: PrivacySpend


class PrivacyTracker:
    """Checks plans at submission and keeps each run's spend current, round by round."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="privacy")

    @staticmethod
    def check(run_config: Mapping[str, object]) -> DPPlan | None:
        """The run's plan, or ``None`` if it declares none.

        Raises:
            InvalidPrivacyParameter: the plan is malformed (names the key).
        """
        return DPPlan.from_run_config(run_config)

    def started(self, run_id: int, plan: DPPlan) -> None:
        """Store the planned spend and tell the run's log (raises ``DPError`` if the
        accountant cannot bound it: the run is refused)."""
        planned = self._store(run_id, plan, 0).planned
        if plan.mode is PlanMode.CENTRAL:
            how = (
                f"central DP, noise multiplier {plan.noise_multiplier:g}, clipping norm "
                f"{plan.clipping_norm:g}, sampling rate {plan.sampling_rate:g}, "
                f"{plan.rounds} rounds, {plan.accountant.upper()}"
            )
        elif plan.mode is PlanMode.DISTRIBUTED:
            how = (
                f"distributed DP, Skellam noise shares under SecAgg+, noise multiplier "
                f"{plan.noise_multiplier:g}, clipping norm {plan.clipping_norm:g}, scale "
                f"{plan.scale:g}, at least {plan.min_surviving_sites} shares per round, "
                f"{plan.rounds} rounds, Skellam RDP"
            )
        else:
            how = f"DP-SGD at each site, {plan.rounds} rounds"
        self._state.append_log(run_id, LogStream.SYSTEM, f"privacy plan: {planned} ({how})")

    def _store(self, run_id: int, plan: DPPlan, rounds: int) -> _Figures:
        """Store the run's planned spend and its spend after ``rounds`` rounds."""
        # Past the plan's rounds the spend keeps growing (sites refuse such rounds; a
        # figure above the plan shows that the ServerApp asked for them).
        figures = _Figures(spent=plan.spend(rounds), planned=plan.spend())
        self._state.set_run_privacy(
            run_id,
            plan_json=json.dumps(plan.describe(), sort_keys=True, separators=(",", ":")),
            unit=figures.spent.unit.value,
            delta=figures.spent.delta,
            planned_epsilon=figures.planned.epsilon,
            spent_epsilon=figures.spent.epsilon,
            rounds_done=rounds,
        )
        return figures

    def rounds_done(self, run_id: int, run_config: Mapping[str, object], rounds: int) -> None:
        """After ``rounds`` rounds: recompute the spend in the background."""
        self._worker.submit(self._update, run_id, dict(run_config), rounds)

    def _update(self, run_id: int, run_config: dict[str, object], rounds: int) -> None:
        try:
            plan = DPPlan.from_run_config(run_config)
            if plan is None:
                return
            figures = self._store(run_id, plan, rounds)
            spent, planned = figures.spent, figures.planned
            what = "per site, as planned" if plan.mode is PlanMode.DP_SGD else "spent"
            self._state.append_log(
                run_id,
                LogStream.SYSTEM,
                f"privacy after round {rounds}: ε = {spent.epsilon:.4g} {what} of "
                f"{planned.epsilon:.4g} planned (δ = {spent.delta:g}, {spent.unit.value})",
            )
        except (DPError, StateError) as exc:
            _log.warning("privacy spend not updated", run_id=run_id, error=str(exc))

    def close(self) -> None:
        """Finish pending updates."""
        self._worker.shutdown(wait=True)

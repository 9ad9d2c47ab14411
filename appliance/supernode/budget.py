"""The site's privacy budget as the SuperNode enforces it (over :class:`dp.BudgetLedger`).

The ledger lives in the SuperNode's data directory (``budget.db``), under the
policy's ``[privacy] dataset`` name, with a budget per privacy unit:

* **site-level** (``max_epsilon_per_run`` / ``max_epsilon_total``) for central and
  distributed DP (the run's plan: ``dp-mode = "central"`` or ``"distributed"``) and
  local DP (the site's own ``local_epsilon_per_round``);
* **record-level** (``max_record_epsilon_per_run`` / ``max_record_epsilon_total``)
  for DP-SGD inside the site (``dp-mode = "dp-sgd"``).

What the site books is its own, conservative figure, never the server's claim:

* central: each round the site takes part in is one Gaussian mechanism with the
  plan's noise multiplier on its clipped update, accounted *without* sampling
  amplification (the site cannot check how the server samples);
* distributed: each round the site takes part in is one Skellam release, bounded
  as the plan is (at least the minimum surviving shares' noise, any model size);
* local: ``local_epsilon_per_round`` per round, composed basically (epsilons add);
* DP-SGD: the plan's whole record-level target at the first round (the app's own
  accountant spends it over the rounds; a reply reporting more is blocked).

Lifecycle: :meth:`SiteBudget.plan` at the run's admission (refused with the numbers
if it cannot fit -- before any data is touched), :meth:`reserve` once the run is
accepted, :meth:`charge_round` before the ClientApp computes a training round,
:meth:`close` when the run ends. A crash never forgets: the ledger is a synced
SQLite file and an open reservation counts against the total cap.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from appliance.supernode.policy import DPMode, PolicyRefused, SitePolicy
from dp.errors import BudgetExceeded, DPError, LedgerError
from dp.ledger import BudgetLedger, BudgetStatus
from dp.plan import DPPlan, PlanMode
from dp.spend import PrivacySpend, PrivacyUnit

__all__ = ["BUDGET_FILE", "Charge", "SiteBudget", "record_epsilon_cap"]

BUDGET_FILE = "budget.db"


@dataclass(frozen=True, slots=True)
class Charge:
    """What one run costs this site: the plan (or the site's local DP) and the unit."""

    unit: PrivacyUnit
    planned: PrivacySpend
    plan: DPPlan | None  # None: local DP, the site's own noise
    local_epsilon_per_round: float = 0.0
    local_delta: float = 0.0

    def after(self, rounds: int) -> PrivacySpend:
        """The site's cumulative spend after taking part in ``rounds`` rounds."""
        if self.plan is None:
            return PrivacySpend(
                epsilon=self.local_epsilon_per_round * rounds,
                delta=min(self.local_delta * rounds, self.planned.delta),
                unit=self.unit,
            )
        if self.plan.mode is PlanMode.DP_SGD:
            return self.planned  # all of it at the first round (see the module docstring)
        return self.plan.site_spend(rounds)  # admission refuses rounds past the plan


#: The plan a run must declare where the site requires server-side or shared noise.
_PLAN_FOR: dict[DPMode, PlanMode] = {
    DPMode.CENTRAL: PlanMode.CENTRAL,
    DPMode.DISTRIBUTED: PlanMode.DISTRIBUTED,
    DPMode.DP_SGD: PlanMode.DP_SGD,
}


def _refused(exc: BudgetExceeded, unit: PrivacyUnit) -> PolicyRefused:
    prefix = "max_record_epsilon" if unit is PrivacyUnit.RECORD else "max_epsilon"
    key = f"privacy.{prefix}_{'per_run' if exc.cap == 'per-run' else 'total'}"
    return PolicyRefused(key, str(exc))


class SiteBudget:
    """The SuperNode's privacy-budget ledger."""

    def __init__(self, data_dir: Path) -> None:
        """Open (creating) ``data_dir/budget.db``.

        Raises:
            dp.StorageError: the ledger cannot be opened.
        """
        self.path = Path(data_dir) / BUDGET_FILE
        self._ledger = BudgetLedger.open(self.path)
        self._dataset = "default"

    @property
    def dataset(self) -> str:
        """The name the ledger keeps this site's data under (``[privacy] dataset``)."""
        return self._dataset

    def close_ledger(self) -> None:
        """Release the ledger's connections."""
        self._ledger.close()

    def configure(self, policy: SitePolicy | None) -> None:
        """Set the caps of ``policy`` (at start and on reload)."""
        if policy is None:
            return
        privacy = policy.privacy
        self._dataset = privacy.dataset
        if privacy.max_epsilon_per_run is not None and privacy.max_epsilon_total is not None:
            self._ledger.set_budget(
                self._dataset,
                PrivacyUnit.SITE,
                max_epsilon_per_run=privacy.max_epsilon_per_run,
                max_epsilon_total=privacy.max_epsilon_total,
            )
        if (
            privacy.max_record_epsilon_per_run is not None
            and privacy.max_record_epsilon_total is not None
        ):
            self._ledger.set_budget(
                self._dataset,
                PrivacyUnit.RECORD,
                max_epsilon_per_run=privacy.max_record_epsilon_per_run,
                max_epsilon_total=privacy.max_record_epsilon_total,
            )

    def _capped(self, unit: PrivacyUnit) -> bool:
        return any(status.budget.unit is unit for status in self._ledger.status(self._dataset))

    def plan(self, policy: SitePolicy, run_id: int, run_config_json: str) -> Charge | None:
        """What the run would cost this site, checked against the caps (nothing reserved).

        Returns:
            The charge, or ``None`` if the run costs nothing this site tracks.

        Raises:
            PolicyRefused: the plan is malformed, does not meet ``require_dp``, or
                does not fit the budget (the message has the numbers).
        """
        try:
            plan = DPPlan.from_run_config(json.loads(run_config_json or "{}"))
        except DPError as exc:
            raise PolicyRefused("privacy", f"the run's DP plan is invalid: {exc}") from None
        privacy = policy.privacy
        wanted = _PLAN_FOR.get(privacy.require_dp) if privacy.require_dp else None
        if wanted is not None and (plan is None or plan.mode is not wanted):
            raise PolicyRefused(
                "privacy.require_dp",
                f"this site trains only under {wanted.value} DP; the run declares no "
                f"dp-mode = {wanted.value!r} plan",
            )
        charge: Charge | None
        if privacy.require_dp is DPMode.LOCAL:
            assert privacy.local_epsilon_per_round is not None  # required by the parser
            assert privacy.local_delta is not None
            rounds = plan.rounds if plan is not None else _rounds(run_config_json)
            charge = Charge(
                unit=PrivacyUnit.SITE,
                planned=PrivacySpend(
                    epsilon=privacy.local_epsilon_per_round * rounds,
                    delta=min(privacy.local_delta * rounds, 0.999),
                    unit=PrivacyUnit.SITE,
                ),
                plan=None,
                local_epsilon_per_round=privacy.local_epsilon_per_round,
                local_delta=privacy.local_delta,
            )
        elif plan is not None:
            try:
                charge = Charge(unit=plan.unit, planned=plan.site_spend(), plan=plan)
            except DPError as exc:
                raise PolicyRefused(
                    "privacy", f"the run's DP plan cannot be accounted: {exc}"
                ) from None
        else:
            return None
        if not self._capped(charge.unit):
            if privacy.require_dp is not None:
                raise PolicyRefused("privacy", f"this site keeps no {charge.unit.value} budget")
            return None  # the site set no caps in this unit: nothing to book
        check = self._ledger.check_plan(self._dataset, run_id, charge.planned)
        if not check.allowed:
            assert check.refusal is not None
            raise _refused(check.refusal, charge.unit)
        return charge

    def reserve(self, run_id: int, charge: Charge) -> None:
        """Reserve the run's whole plan (atomic: concurrent runs cannot overspend).

        Raises:
            PolicyRefused: it no longer fits (another run took the room).
        """
        try:
            self._ledger.reserve(self._dataset, run_id, charge.planned)
        except BudgetExceeded as exc:
            raise _refused(exc, charge.unit) from None

    def committed_rounds(self, run_id: int, charge: Charge) -> list[int]:
        """The server rounds already booked for the run (before this process started)."""
        return self._ledger.committed_rounds(self._dataset, run_id, charge.unit)

    def charge_round(
        self, run_id: int, charge: Charge, server_round: int, rounds: int
    ) -> PrivacySpend:
        """Commit the cumulative spend after the site's ``rounds``-th round (``server_round``).

        Raises:
            PolicyRefused: the spend would exceed the reservation (nothing is committed:
                the round must not run).
            dp.LedgerError: the ledger refused for another reason (e.g. a round twice).
        """
        cumulative = charge.after(rounds)
        try:
            self._ledger.commit(self._dataset, run_id, server_round, cumulative)
        except BudgetExceeded as exc:
            raise _refused(exc, charge.unit) from None
        return cumulative

    def close(self, run_id: int, charge: Charge) -> None:
        """Close the run's charge (its unspent reservation is released)."""
        with contextlib.suppress(LedgerError):  # never reserved: nothing to release
            self._ledger.close_run(self._dataset, run_id, charge.unit)

    def status(self) -> list[BudgetStatus]:
        """Every budget of this site with its spending."""
        return self._ledger.status()


def _rounds(run_config_json: str) -> int:
    rounds = json.loads(run_config_json or "{}").get("num-server-rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PolicyRefused(
            "privacy.require_dp",
            "local DP needs to know the run's rounds: set dp-rounds or num-server-rounds",
        )
    return rounds


def record_epsilon_cap(run_config_json: str) -> float | None:
    """The record-level ε a DP-SGD run's train replies may report (its plan's target),
    or ``None`` for any other run (an invalid plan never gets this far)."""
    if "dp-mode" not in run_config_json:  # no plan: skip parsing (and loading dp)
        return None
    try:
        plan = DPPlan.from_run_config(json.loads(run_config_json))
    except DPError:
        return None
    if plan is None or plan.mode is not PlanMode.DP_SGD:
        return None
    return plan.target_epsilon

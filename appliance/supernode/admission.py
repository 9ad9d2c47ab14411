"""Whether this site takes part in a run: decided once, recorded, signed, and paid for.

At a run's first message the SuperNode decides, in order: the bundle (allowlist or
trusted publisher), the run's DP plan against the site's privacy budget, and --
with ``[approval] mode = "manual"`` -- the site administrator's approval. The
decision goes to the site audit log (``run.approved`` / ``run.refused``) and to the
SuperLink as a signed receipt; a run waiting for approval sends a ``pending``
receipt once. An accepted run's privacy plan is reserved in the ledger, and each
training round is booked (``budget.spent``) before the ClientApp touches data.

:class:`RunStanding` is one run's state here (guarded by the caller's per-run lock);
:class:`RunAdmission` holds the approval book and the budget ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.logs import get_logger
from appliance.message import Message
from appliance.proto import fleet_pb2 as pb
from appliance.receipts import Decision, RunManifest
from appliance.supernode.approvals import ApprovalBook, ApprovalState
from appliance.supernode.budget import Charge, SiteBudget
from appliance.supernode.policy import ApprovalMode, PolicyRefused, SitePolicy, admit_bundle
from appliance.supernode.site_audit import SiteAudit
from dp.errors import LedgerError

__all__ = ["ReceiptSender", "RunAdmission", "RunStanding", "policy_sha256"]

_log = get_logger("appliance.supernode.admission")

#: Sends a signed receipt: (manifest, decision, reason, decided_by).
ReceiptSender = Callable[[RunManifest, Decision, str, str], None]


def policy_sha256(policy: SitePolicy | None) -> str:
    """Hex SHA-256 of the site policy in force ("" without one)."""
    return policy.policy_hash.removeprefix("sha256:") if policy is not None else ""


def _is_training(message_type: str) -> bool:
    return message_type == "train" or message_type.startswith("train.")  # SecAgg+ stages


@dataclass
class RunStanding:
    """Where one run stands at this site."""

    decision: Decision | None = None  # None until taken
    refusal: PolicyRefused | None = None  # why, when refused
    pending_sent: bool = False  # the "waiting for approval" receipt went out
    charge: Charge | None = None  # what the run costs this site's privacy budget
    charged_rounds: set[str] = field(default_factory=set)  # group ids already booked

    def reconsider(self) -> None:
        """Decide again at the next message (the site policy changed)."""
        if self.decision is not None:
            self.decision, self.refusal = None, None


class RunAdmission:
    """The site's approval book and privacy budget, and the decisions taken with them."""

    def __init__(self, data_dir: Path, send_receipt: ReceiptSender) -> None:
        self.approvals = ApprovalBook(data_dir)
        self.budget = SiteBudget(data_dir)
        self._send = send_receipt

    def configure(self, policy: SitePolicy | None) -> None:
        """Apply the policy's budget caps (at start and on reload)."""
        self.budget.configure(policy)

    def close(self) -> None:
        """Close the approval book and the ledger."""
        self.approvals.close()
        self.budget.close_ledger()

    def admit(
        self,
        standing: RunStanding,
        context: pb.RunContext,
        *,
        policy: SitePolicy | None,
        site: SiteAudit,
        node_id: int,
    ) -> bool:
        """Decide (once) whether this site takes part in the run; ``False``: still pending.

        Raises:
            PolicyRefused: the run is refused (now or earlier).
        """
        if standing.decision is Decision.ACCEPTED:
            return True
        if standing.refusal is not None:
            raise standing.refusal
        run_id = context.run_id
        manifest = RunManifest(
            run_id=run_id,
            bundle_sha256=context.bundle_sha256,
            run_config_json=context.run_config_json,
        )
        decided_by = ""
        charge: Charge | None = None
        try:
            if policy is not None:  # before a byte of the app is fetched or run
                admitted = admit_bundle(
                    policy, context.bundle_sha256, signature=context.bundle_signature or None
                )
                _log.info("bundle admitted", run_id=run_id, via=admitted.via.value)
                charge = self.budget.plan(policy, run_id, context.run_config_json)
                if policy.approval.mode is ApprovalMode.MANUAL:
                    approval = self.approvals.request(manifest, policy_sha256(policy))
                    if approval.state is ApprovalState.PENDING:
                        if not standing.pending_sent:
                            standing.pending_sent = True
                            _log.warning("run waits for approval", run_id=run_id)
                            self._send(manifest, Decision.PENDING, "", "")
                        return False
                    decided_by = approval.decided_by
                    if approval.state is not ApprovalState.APPROVED:
                        raise PolicyRefused(
                            "approval.mode",
                            f"the site administrator refused run {run_id}: {approval.reason}",
                        )
                if charge is not None:
                    self.budget.reserve(run_id, charge)
                    _log.info("budget reserved", run_id=run_id, planned=str(charge.planned))
                    # A run in flight when the node restarted: its booked rounds count.
                    booked = self.budget.committed_rounds(run_id, charge)
                    if booked:
                        standing.charged_rounds = {str(r) for r in booked}
                        _log.warning("run resumed after a restart", run_id=run_id, rounds=booked)
        except PolicyRefused as exc:
            standing.decision, standing.refusal = Decision.REFUSED, exc
            self._record(manifest, Decision.REFUSED, policy, site, node_id, str(exc), decided_by)
            raise
        standing.decision, standing.charge = Decision.ACCEPTED, charge
        self._record(manifest, Decision.ACCEPTED, policy, site, node_id, "", decided_by)
        return True

    def _record(
        self,
        manifest: RunManifest,
        decision: Decision,
        policy: SitePolicy | None,
        site: SiteAudit,
        node_id: int,
        reason: str,
        decided_by: str,
    ) -> None:
        site.decided(
            manifest.run_id,
            node_id=node_id,
            accepted=decision is Decision.ACCEPTED,
            manifest_sha256=manifest.sha256,
            policy_sha256=policy_sha256(policy),
            reason=reason,
            decided_by=decided_by,
        )
        self._send(manifest, decision, reason, decided_by)

    def charge_round(
        self, standing: RunStanding, message: Message, *, site: SiteAudit, node_id: int
    ) -> None:
        """Book a training round in the ledger before the ClientApp touches data.

        Raises:
            PolicyRefused: the round does not fit the run's reservation (or the ledger
                refused it): the round does not run.
        """
        meta = message.metadata
        if standing.charge is None or not _is_training(meta.message_type):
            return
        if meta.group_id in standing.charged_rounds:  # later SecAgg+ stages of the round
            return
        rounds = len(standing.charged_rounds) + 1
        plan = standing.charge.plan
        if plan is not None and rounds > plan.rounds:
            raise PolicyRefused(
                "privacy",
                f"the run's DP plan covers {plan.rounds} round(s) (dp-rounds) and this site "
                "has taken part in all of them; it trains no more for this run",
            )
        try:
            server_round = int(meta.group_id)
        except ValueError:
            server_round = rounds
        try:
            spent = self.budget.charge_round(meta.run_id, standing.charge, server_round, rounds)
        except LedgerError as exc:
            reason = f"the privacy ledger refused this round: {exc}"
            raise PolicyRefused("privacy", reason) from None
        standing.charged_rounds.add(meta.group_id)
        site.budget_spent(
            meta.run_id, node_id=node_id, dataset=self.budget.dataset, spend=spent,
            server_round=server_round,
        )  # fmt: skip

    def ended(self, run_id: int, standing: RunStanding, *, waiting: bool) -> None:
        """The run ended: withdraw an undecided approval, close the run's charge."""
        if waiting:
            self.approvals.withdraw(run_id)
        if standing.charge is not None:
            self.budget.close(run_id, standing.charge)

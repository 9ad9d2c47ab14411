"""Run receipts: each site's signed decision about a run, kept with the run.

The SuperLink verifies a receipt's signature before it gets here; this module only
stores it (append-only, with its audit entry in the same transaction) and lists a
run's receipts, oldest first.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select

from appliance.state._store import Store, check_id, check_text, clean_text
from appliance.state.audit_sink import AuditActor
from appliance.state.errors import InvalidArgument, RunNotFound
from appliance.state.models import ReceiptRow, RunRow
from appliance.state.values import StoredReceipt, check_sha256

__all__ = ["ReceiptStore"]

DECISIONS = frozenset({"accepted", "refused", "pending"})
MAX_RECEIPT_BYTES = 8192


def _receipt(row: ReceiptRow) -> StoredReceipt:
    return StoredReceipt(
        run_id=row.run_id, node_id=row.node_id, node_name=row.node_name, decision=row.decision,
        manifest_sha256=row.manifest_sha256, policy_sha256=row.policy_sha256, reason=row.reason,
        decided_by=row.decided_by, signed_at=row.signed_at, received_at=row.received_at,
        body=bytes(row.body), signature=bytes(row.signature),
    )  # fmt: skip


class ReceiptStore(Store):
    """Receipt operations of :class:`~appliance.state.State`."""

    def put_receipt(
        self, receipt: StoredReceipt, *, actor: AuditActor | None = None
    ) -> StoredReceipt:
        """Keep a verified receipt (``received_at`` is set here) and audit it.

        Raises:
            InvalidArgument: an unknown decision, a malformed hash, or oversized bytes.
            RunNotFound: no such run.
            AuditFailed: the audit entry could not be written (nothing is stored).
        """
        check_id(receipt.run_id, "run_id")
        check_id(receipt.node_id, "node_id")
        check_text(receipt.node_name, "node name", 128)
        if receipt.decision not in DECISIONS:
            raise InvalidArgument(f"decision must be one of {sorted(DECISIONS)}")
        check_sha256(receipt.manifest_sha256, "manifest_sha256")
        if receipt.policy_sha256:
            check_sha256(receipt.policy_sha256, "policy_sha256")
        if len(receipt.body) > MAX_RECEIPT_BYTES or len(receipt.signature) > MAX_RECEIPT_BYTES:
            raise InvalidArgument(f"receipt or signature over {MAX_RECEIPT_BYTES} bytes")
        with self._write() as session:
            if session.get(RunRow, receipt.run_id) is None:
                raise RunNotFound(receipt.run_id)
            row = ReceiptRow(
                run_id=receipt.run_id, node_id=receipt.node_id, node_name=receipt.node_name,
                decision=receipt.decision, manifest_sha256=receipt.manifest_sha256,
                policy_sha256=receipt.policy_sha256, reason=clean_text(receipt.reason),
                decided_by=clean_text(receipt.decided_by), signed_at=receipt.signed_at,
                received_at=self._now(), body=receipt.body, signature=receipt.signature,
            )  # fmt: skip
            session.add(row)
            session.flush()
            stored = _receipt(row)
            self._audit(
                session,
                "receipt.received",
                actor=actor,
                subjects={"run_id": str(receipt.run_id), "node_id": str(receipt.node_id)},
                details={
                    "node": receipt.node_name,
                    "decision": receipt.decision,
                    "manifest_sha256": receipt.manifest_sha256,
                    "policy_sha256": receipt.policy_sha256,
                    "reason": stored.reason,
                    "decided_by": stored.decided_by,
                    "signed_at_ms": int(receipt.signed_at * 1000),
                },
            )
        return stored

    def receipts_by_run(self, run_ids: Collection[int]) -> dict[int, list[StoredReceipt]]:
        """The receipts of several runs (one query), oldest first; runs without any are absent."""
        ids = [check_id(run_id, "run_id") for run_id in run_ids]
        found: dict[int, list[StoredReceipt]] = {}
        if not ids:
            return found
        with self._read() as session:
            rows = session.scalars(
                select(ReceiptRow)
                .where(ReceiptRow.run_id.in_(ids))
                .order_by(ReceiptRow.received_at, ReceiptRow.receipt_id)
            )
            for row in rows:
                found.setdefault(row.run_id, []).append(_receipt(row))
        return found

    def list_receipts(self, run_id: int) -> list[StoredReceipt]:
        """A run's receipts, oldest first.

        Raises:
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        with self._read() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            rows = session.scalars(
                select(ReceiptRow)
                .where(ReceiptRow.run_id == run_id)
                .order_by(ReceiptRow.received_at, ReceiptRow.receipt_id)
            )
            return [_receipt(row) for row in rows]

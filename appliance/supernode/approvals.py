"""The site's approval book: runs waiting for the site administrator, and the decisions.

With ``[approval] mode = "manual"`` a new run does not start at the site until the
site administrator approves its **manifest** (app hash + run config, see
:mod:`appliance.receipts`) on the SuperNode host::

    greenhouse pending --data-dir DIR          # what waits, with the manifest
    greenhouse approve RUN_ID --data-dir DIR
    greenhouse refuse RUN_ID --reason "..." --data-dir DIR

The book is a small SQLite database in the SuperNode's data directory
(``approvals.db``, mode 0600, WAL): the SuperNode writes requests, the CLI writes
decisions, and the SuperNode picks them up. Whoever may write the data directory
may decide, exactly as they may edit the policy, so the file's permissions are the
access control. A decision is taken only from ``pending`` and only for the manifest
that was shown (``--manifest`` pins it), and it is never changed afterwards: the
SuperNode records it in the site audit log and sends it as a signed receipt.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.receipts import RunManifest

__all__ = ["Approval", "ApprovalBook", "ApprovalError", "ApprovalState"]

BOOK_NAME = "approvals.db"
MAX_REASON_CHARS = 1024
_BUSY_TIMEOUT_S = 10.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    run_id INTEGER PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    run_config_json TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'refused', 'withdrawn')),
    reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT NOT NULL DEFAULT '',
    requested_at REAL NOT NULL,
    decided_at REAL
)
"""


class ApprovalError(ApplianceError):
    """No such pending run, a manifest mismatch, or an unusable approval book."""


class ApprovalState(enum.StrEnum):
    """Where a run stands at this site."""

    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"  # the run ended before anyone decided


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    """One run's entry in the book."""

    run_id: int
    manifest_sha256: str
    bundle_sha256: str
    run_config_json: str
    policy_sha256: str
    state: ApprovalState
    reason: str
    decided_by: str
    requested_at: float
    decided_at: float | None

    @property
    def decided(self) -> bool:
        """Approved or refused (a withdrawn run was never decided)."""
        return self.state in (ApprovalState.APPROVED, ApprovalState.REFUSED)


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(
        run_id=row["run_id"], manifest_sha256=row["manifest_sha256"],
        bundle_sha256=row["bundle_sha256"], run_config_json=row["run_config_json"],
        policy_sha256=row["policy_sha256"], state=ApprovalState(row["state"]),
        reason=row["reason"], decided_by=row["decided_by"],
        requested_at=row["requested_at"], decided_at=row["decided_at"],
    )  # fmt: skip


class ApprovalBook:
    """The approval book of one SuperNode data directory."""

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        """Open ``data_dir/approvals.db`` (created, 0600, when ``create``).

        Raises:
            ApprovalError: the book does not exist (and ``create`` is false) or
                cannot be opened.
        """
        self.path = Path(data_dir) / BOOK_NAME
        if not create and not self.path.exists():
            raise ApprovalError(
                f"no approval book at {self.path}: is --data-dir the SuperNode's data directory?"
            )
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._lock = threading.Lock()  # one connection, shared by the node's threads
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ApprovalError(f"cannot open the approval book {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> ApprovalBook:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise ApprovalError(f"approval book {self.path}: {exc}") from None

    def get(self, run_id: int) -> Approval | None:
        """The run's entry, or ``None`` if it never asked."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM approvals WHERE run_id = ?", (run_id,)).fetchone()
        return _approval(row) if row is not None else None

    def request(self, manifest: RunManifest, policy_sha256: str) -> Approval:
        """Ask for approval of ``manifest`` (idempotent); the run's entry as it stands."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM approvals WHERE run_id = ?", (manifest.run_id,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO approvals (run_id, manifest_sha256, bundle_sha256, "
                    "run_config_json, policy_sha256, state, requested_at) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        manifest.run_id, manifest.sha256, manifest.bundle_sha256,
                        manifest.run_config_json, policy_sha256, time.time(),
                    ),
                )  # fmt: skip
                row = db.execute(
                    "SELECT * FROM approvals WHERE run_id = ?", (manifest.run_id,)
                ).fetchone()
        approval = _approval(row)
        if approval.manifest_sha256 != manifest.sha256:
            raise ApprovalError(
                f"run {manifest.run_id} arrived with manifest {manifest.sha256[:16]}..., "
                f"but the book holds {approval.manifest_sha256[:16]}... for it"
            )
        return approval

    def decide(
        self,
        run_id: int,
        *,
        approve: bool,
        by: str,
        reason: str = "",
        manifest_sha256: str | None = None,
    ) -> Approval:
        """Approve or refuse a pending run.

        Args:
            run_id: the run.
            approve: ``True`` to approve, ``False`` to refuse.
            by: who decides (the site administrator's user name).
            reason: why (required to refuse).
            manifest_sha256: if given, the decision holds only for this manifest
                (the one the administrator reviewed).

        Raises:
            ApprovalError: the run is not pending here, the manifest differs, or
                a refusal has no reason.
        """
        reason = reason.strip()
        if not approve and not reason:
            raise ApprovalError("a refusal needs a reason (--reason)")
        if len(reason) > MAX_REASON_CHARS:
            raise ApprovalError(f"the reason is over {MAX_REASON_CHARS} characters")
        state = ApprovalState.APPROVED if approve else ApprovalState.REFUSED
        with self._transaction() as db:
            row = db.execute("SELECT * FROM approvals WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ApprovalError(f"run {run_id} is not waiting for approval at this site")
            current = _approval(row)
            if current.state is not ApprovalState.PENDING:
                raise ApprovalError(f"run {run_id} is already {current.state.value}")
            if manifest_sha256 is not None and manifest_sha256 != current.manifest_sha256:
                raise ApprovalError(
                    f"run {run_id}'s manifest is {current.manifest_sha256}, not {manifest_sha256}"
                )
            db.execute(
                "UPDATE approvals SET state = ?, reason = ?, decided_by = ?, decided_at = ? "
                "WHERE run_id = ? AND state = 'pending'",
                (state.value, reason, by, time.time(), run_id),
            )
            row = db.execute("SELECT * FROM approvals WHERE run_id = ?", (run_id,)).fetchone()
        return _approval(row)

    def withdraw(self, run_id: int) -> None:
        """Mark a still-pending run withdrawn (it ended before anyone decided)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE approvals SET state = 'withdrawn', decided_at = ? "
                "WHERE run_id = ? AND state = 'pending'",
                (time.time(), run_id),
            )

    def pending(self) -> list[Approval]:
        """Runs waiting for a decision, oldest first."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM approvals WHERE state = 'pending' ORDER BY requested_at"
            ).fetchall()
        return [_approval(row) for row in rows]

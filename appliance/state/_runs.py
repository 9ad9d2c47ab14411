"""Runs, their status state machine, and the app bundles they run.

Run state machine (anything else raises :class:`InvalidTransition`)::

    pending --> starting --> running --> finished | failed | stopped
    pending | starting ----------------> failed | stopped

``finished``, ``failed`` and ``stopped`` are final. A transition is one
transaction that re-reads the status under a row lock (``SELECT ... FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two racing transitions cannot
both succeed. Deciding *when* a run starts or stops is the SuperLink's job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from appliance.message import MAX_REASON_CHARS
from appliance.state._store import (
    RetryTransaction,
    Store,
    check_id,
    check_text,
    clean_text,
    new_id,
)
from appliance.state.audit_sink import AuditActor
from appliance.state.errors import (
    BundleNotFound,
    Conflict,
    InvalidArgument,
    InvalidTransition,
    RunNotFound,
)
from appliance.state.models import BundleRow, RunRow
from appliance.state.values import BlobRef, BundleRef, Run, RunStatus, check_sha256

#: Largest accepted run config / options document (canonical JSON), in characters.
MAX_JSON_CHARS = 1024 * 1024
_ATTEMPTS = 5

_ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.STARTING, RunStatus.FAILED, RunStatus.STOPPED}),
    RunStatus.STARTING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.STOPPED}),
    RunStatus.RUNNING: frozenset({RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED}),
    RunStatus.FINISHED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.STOPPED: frozenset(),
}
IN_FLIGHT = (RunStatus.PENDING, RunStatus.STARTING, RunStatus.RUNNING)
# get_run() is polled (node RPCs, log follow): a Core statement, built once, plain rows.
_GET_RUN = select(RunRow.__table__).where(RunRow.__table__.c.run_id == bindparam("run"))
#: The audit action of entering a status (``starting`` is not recorded).
_AUDIT_ACTION = {
    RunStatus.RUNNING: "run.started",
    RunStatus.FINISHED: "run.finished",
    RunStatus.FAILED: "run.failed",
    RunStatus.STOPPED: "run.stopped",
}


def allowed_transitions(status: RunStatus) -> frozenset[RunStatus]:
    """The statuses a run in ``status`` may move to."""
    return _ALLOWED[status]


def canonical_json(value: object, what: str) -> str:
    """Canonical JSON text of a ``dict`` (sorted keys, no NaN), size-capped.

    Raises:
        InvalidArgument: not a dict, not JSON-serializable, or too large.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what} must be a dict, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON-serializable: {exc}") from None
    if len(text) > MAX_JSON_CHARS:
        raise InvalidArgument(f"{what} is {len(text)} characters, limit {MAX_JSON_CHARS}")
    return text


def clip_reason(reason: str | None) -> str | None:
    """``reason`` made storable (see ``clean_text``) and cut to ``MAX_REASON_CHARS``."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason must be str or None, got {type(reason).__name__}")
    reason = clean_text(reason)
    if len(reason) > MAX_REASON_CHARS:
        return reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


def run_from_row(row: RunRow | Row[Any]) -> Run:
    """A frozen :class:`Run` from its ORM row or a Core row of all its columns."""
    return Run(
        run_id=row.run_id,
        owner=row.owner,
        bundle_sha256=row.bundle_sha256,
        status=RunStatus(row.status),
        reason=row.reason,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        run_config_json=row.run_config,
        options_json=row.options,
    )


class RunStore(Store):
    """Run and bundle operations of :class:`~appliance.state.State`."""

    # -- bundles ---------------------------------------------------------------------------

    def put_bundle(
        self, chunks: Iterable[bytes], *, max_bytes: int, now: float | None = None
    ) -> BundleRef:
        """Store an app bundle (idempotent: the same bytes give the same record).

        Raises:
            BlobTooLarge: more than ``max_bytes`` arrived; nothing was stored.
            BlobError: the file system failed.
        """
        blob = self._blobs.put_stream(chunks, max_bytes=max_bytes, hold=True)
        try:
            return self._record_bundle(blob, self._now(now))
        finally:
            self._blobs.release(blob.sha256)

    def _record_bundle(self, blob: BlobRef, at: float) -> BundleRef:
        for _ in range(_ATTEMPTS):
            try:
                with self._write() as session:
                    row = session.get(BundleRow, blob.sha256)
                    if row is None:
                        row = BundleRow(sha256=blob.sha256, size=blob.size, created_at=at)
                        session.add(row)
                        try:
                            session.flush()
                        except IntegrityError:
                            raise RetryTransaction from None
                    return BundleRef(sha256=row.sha256, size=row.size, created_at=row.created_at)
            except RetryTransaction:
                continue  # stored concurrently by another writer; read it next time
        raise Conflict(f"could not record bundle {blob.sha256} (conflicting writes)")

    def get_bundle(self, sha256: str) -> BundleRef:
        """Return a bundle's record.

        Raises:
            InvalidArgument: ``sha256`` is malformed.
            BundleNotFound: no such bundle.
        """
        check_sha256(sha256)
        with self._read() as session:
            row = session.get(BundleRow, sha256)
            if row is None:
                raise BundleNotFound(sha256)
            return BundleRef(sha256=row.sha256, size=row.size, created_at=row.created_at)

    def has_bundle(self, sha256: str) -> bool:
        """Whether a bundle with this SHA-256 is recorded."""
        try:
            self.get_bundle(sha256)
        except BundleNotFound:
            return False
        return True

    def open_bundle(self, sha256: str) -> Iterator[bytes]:
        """Stream a bundle's bytes (1 MiB chunks, re-hashed while streaming).

        Raises:
            BundleNotFound: no such bundle.
            BlobError: its blob is missing or unreadable.
        """
        self.get_bundle(sha256)
        return self._blobs.open_chunks(sha256)

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self,
        owner: str,
        bundle_sha256: str,
        run_config: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> Run:
        """Record a new run in status ``pending`` under a fresh random id.

        Audited as ``run.submitted`` by ``actor``, with the bundle hash, the run
        config and the options (as their canonical JSON text).

        Raises:
            InvalidArgument: malformed owner, or a config that is not a JSON object.
            BundleNotFound: the bundle was not stored first.
        """
        check_text(owner, "owner", 256)
        check_sha256(bundle_sha256, "bundle_sha256")
        config_json = canonical_json(run_config, "run_config")
        options_json = canonical_json(options, "options")
        at = self._now(now)
        for _ in range(_ATTEMPTS):
            try:
                with self._write() as session:
                    if session.get(BundleRow, bundle_sha256) is None:
                        raise BundleNotFound(bundle_sha256, "store the bundle before the run")
                    row = RunRow(
                        run_id=new_id(),
                        owner=owner,
                        bundle_sha256=bundle_sha256,
                        run_config=config_json,
                        options=options_json,
                        status=RunStatus.PENDING.value,
                        reason=None,
                        created_at=at,
                        started_at=None,
                        finished_at=None,
                    )
                    session.add(row)
                    try:
                        session.flush()
                    except IntegrityError:
                        raise RetryTransaction from None  # an id collision
                    run = run_from_row(row)
                    self._audit(
                        session,
                        "run.submitted",
                        actor=actor,
                        subjects={"run_id": str(run.run_id)},
                        details={
                            "owner": owner,
                            "bundle_sha256": bundle_sha256,
                            "run_config": config_json,
                            "options": options_json,
                        },
                    )
                    return run
            except RetryTransaction:
                continue
        raise Conflict("could not allocate a run id (conflicting writes)")  # pragma: no cover

    def transition_run(
        self,
        run_id: int,
        status: RunStatus | str,
        reason: str | None = None,
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> Run:
        """Move a run to ``status`` along the state machine.

        Audited (``run.started`` / ``finished`` / ``failed`` / ``stopped``, by
        ``actor`` or the system) in the same transaction.

        MUST refuse every transition not in the state machine (including staying in
        the same status and leaving a terminal status). Sets ``started_at`` on
        ``running`` and ``finished_at`` on a terminal status.

        Args:
            run_id: the run.
            status: the new status.
            reason: why (kept for failed/stopped; cut to 4096 characters).
            now: transition time (default: the state's clock).

        Returns:
            The run after the transition.

        Raises:
            InvalidArgument: ``status`` is not a run status.
            RunNotFound: no such run.
            InvalidTransition: the state machine forbids it.
        """
        check_id(run_id, "run_id")
        try:
            target = RunStatus(status)
        except ValueError:
            raise InvalidArgument(f"unknown run status {status!r}") from None
        reason = clip_reason(reason)
        at = self._now(now)
        with self._write() as session:
            row = session.scalars(
                select(RunRow).where(RunRow.run_id == run_id).with_for_update(key_share=True)
            ).first()
            if row is None:
                raise RunNotFound(run_id)
            current = RunStatus(row.status)
            if target not in _ALLOWED[current]:
                raise InvalidTransition(run_id, current.value, target.value)
            row.status = target.value
            if reason is not None:
                row.reason = reason
            if target is RunStatus.RUNNING:
                row.started_at = at
            if target.is_terminal:
                row.finished_at = at
            session.flush()
            if target in _AUDIT_ACTION:
                self._audit(
                    session,
                    _AUDIT_ACTION[target],
                    actor=actor,
                    subjects={"run_id": str(run_id)},
                    details={} if reason is None else {"reason": reason},
                )
            return run_from_row(row)

    def get_run(self, run_id: int) -> Run:
        """Return a run.

        Raises:
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        with self._read() as session:
            row = session.connection().execute(_GET_RUN, {"run": run_id}).first()
            if row is None:
                raise RunNotFound(run_id)
            return run_from_row(row)

    def list_runs(self, owner: str | None = None) -> list[Run]:
        """All runs (of ``owner`` if given), oldest first."""
        query = select(RunRow).order_by(RunRow.created_at, RunRow.run_id)
        if owner is not None:
            query = query.where(RunRow.owner == owner)
        with self._read() as session:
            return [run_from_row(row) for row in session.scalars(query)]

    def fail_in_flight_runs(
        self, reason: str = "superlink restarted", *, now: float | None = None
    ) -> list[int]:
        """Mark every pending, starting or running run ``failed`` with ``reason``.

        Called at SuperLink startup: a run that was in flight when the SuperLink
        stopped lost its ServerApp process, and MUST NOT be silently lost.

        Returns:
            The failed runs' ids, sorted.
        """
        at = self._now(now)
        with self._write() as session:
            ids = session.scalars(
                update(RunRow)
                .where(RunRow.status.in_([s.value for s in IN_FLIGHT]))
                .values(status=RunStatus.FAILED.value, reason=clip_reason(reason), finished_at=at)
                .returning(RunRow.run_id)
                .execution_options(synchronize_session=False)
            ).all()
            for run_id in sorted(ids):
                self._audit(
                    session,
                    "run.failed",
                    subjects={"run_id": str(run_id)},
                    details={"reason": clip_reason(reason) or ""},
                )
            return sorted(ids)

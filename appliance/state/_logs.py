"""Run logs (what a run's ServerApp printed) and operator events.

Guarantees: log lines of a run get consecutive ``seq`` numbers from 1 in append
order, also under concurrent appenders (the run row is locked while numbering);
events are append-only here. This is operational logging for people watching a
run; the tamper-evident record of truth is ``audit/``, not these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from appliance.state._runs import canonical_json
from appliance.state._store import Store, check_id, check_text, clean_text
from appliance.state.audit_sink import AuditActor
from appliance.state.errors import InvalidArgument, RunNotFound
from appliance.state.models import EventRow, RunLogRow, RunRow
from appliance.state.values import Event, LogLine, LogStream

#: Longest accepted log text per append, in characters (split longer output).
MAX_LOG_CHARS = 64 * 1024
#: Most lines returned by one ``read_log``.
MAX_LOG_LINES = 10_000


def _line(row: RunLogRow) -> LogLine:
    return LogLine(
        run_id=row.run_id,
        seq=row.seq,
        created_at=row.created_at,
        stream=LogStream(row.stream),
        text=row.text,
    )


def _event(row: EventRow) -> Event:
    return Event(
        event_id=row.event_id, kind=row.kind, created_at=row.created_at, details_json=row.details
    )


class LogStore(Store):
    """Run log and event operations of :class:`~appliance.state.State`."""

    def append_log(
        self,
        run_id: int,
        stream: LogStream | str,
        text: str,
        *,
        now: float | None = None,
    ) -> LogLine:
        """Append text to a run's log (allowed in any run status).

        NUL characters and lone surrogates are replaced, so the text stores the same
        on every backend.

        Raises:
            InvalidArgument: unknown stream, or text not a str or too long.
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        try:
            kind = LogStream(stream)
        except ValueError:
            raise InvalidArgument(f"unknown log stream {stream!r}") from None
        if not isinstance(text, str) or len(text) > MAX_LOG_CHARS:
            raise InvalidArgument(f"log text must be a str of at most {MAX_LOG_CHARS} characters")
        at = self._now(now)
        with self._write() as session:
            run = session.scalars(
                select(RunRow.run_id).where(RunRow.run_id == run_id).with_for_update(key_share=True)
            ).first()
            if run is None:
                raise RunNotFound(run_id)
            last = session.scalar(select(func.max(RunLogRow.seq)).where(RunLogRow.run_id == run_id))
            row = RunLogRow(
                run_id=run_id,
                seq=(last or 0) + 1,
                created_at=at,
                stream=kind.value,
                text=clean_text(text),
            )
            session.add(row)
            session.flush()
            return _line(row)

    def read_log(self, run_id: int, after_seq: int = 0, limit: int = 1000) -> list[LogLine]:
        """Lines of a run's log with ``seq > after_seq``, in order (for tailing).

        Raises:
            InvalidArgument: negative ``after_seq`` or ``limit`` out of 1..10000.
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise InvalidArgument(f"after_seq must be an int >= 0, got {after_seq!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LOG_LINES:
            raise InvalidArgument(f"limit must be an int in 1..{MAX_LOG_LINES}, got {limit!r}")
        with self._read() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            rows = session.scalars(
                select(RunLogRow)
                .where(RunLogRow.run_id == run_id, RunLogRow.seq > after_seq)
                .order_by(RunLogRow.seq)
                .limit(limit)
            )
            return [_line(row) for row in rows]

    def record_event(
        self,
        kind: str,
        details: dict[str, Any],
        *,
        audited: bool = False,
        now: float | None = None,
    ) -> Event:
        """Record an operator-relevant event, e.g. ``("superlink.insecure", {"value": True})``.

        With ``audited``, ``kind`` is also the audit action, written by the system
        in the same transaction (details must then hold no floats).

        Raises:
            InvalidArgument: malformed kind, or details not a JSON object.
            AuditFailed: the audit entry was refused; nothing was recorded.
        """
        check_text(kind, "event kind", 128)
        details_json = canonical_json(details, "event details")
        with self._write() as session:
            row = EventRow(kind=kind, created_at=self._now(now), details=details_json)
            session.add(row)
            session.flush()
            if audited:
                self._audit(session, kind, subjects={}, details=details)
            return _event(row)

    def record_audit(
        self,
        action: str,
        *,
        actor: AuditActor | None = None,
        subjects: Mapping[str, str],
        details: Mapping[str, object],
    ) -> None:
        """Write an audit entry that goes with no state change (a refused call).

        It is written in a state write transaction, like every audit entry, so
        the lock order is always the database's, then the audit log's. Without
        an audit sink it does nothing.

        Raises:
            AuditFailed: the entry was refused.
            StorageError: the database failed.
        """
        if self._audit_sink is None:
            return
        with self._write() as session:
            self._audit(session, action, actor=actor, subjects=subjects, details=details)

    def list_events(self, kind: str | None = None) -> list[Event]:
        """Recorded events (of ``kind`` if given), oldest first."""
        query = select(EventRow).order_by(EventRow.event_id)
        if kind is not None:
            query = query.where(EventRow.kind == kind)
        with self._read() as session:
            return [_event(row) for row in session.scalars(query)]

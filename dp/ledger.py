"""The per-site privacy-budget ledger: caps per dataset and unit, spending that survives restarts.

A site keeps one ledger (its own database: ``sqlite:///PATH`` by default,
``postgresql+psycopg://…`` portable) with, per dataset key and privacy unit
(``site-level`` and ``record-level`` are never mixed):

* ``max_epsilon_per_run`` -- no single run may plan more;
* ``max_epsilon_total`` -- the sum over all runs may not exceed it.

Composition across runs is *basic composition*: epsilons add and deltas add (Dwork
& Roth 2014, Thm. 3.16). It ignores the gains of advanced composition but holds for
any mix of mechanisms and accountants, which the runs of a site are. Within a run
the run's own accountant gives the cumulative spend, which :meth:`BudgetLedger.commit`
records round by round.

Lifecycle of a run on a dataset:

1. :meth:`~BudgetLedger.check_plan` / :meth:`~BudgetLedger.verify_plan` -- before any
   data is touched, would the plan fit under both caps?
2. :meth:`~BudgetLedger.reserve` -- check and reserve the whole plan in *one*
   transaction (``BEGIN IMMEDIATE`` on SQLite, a row lock on PostgreSQL), so two
   concurrent runs can never both fit in the same remaining budget.
3. :meth:`~BudgetLedger.commit` -- before a round's reply leaves the site, record the
   run's cumulative spend (never more than reserved); a crash cannot forget it.
4. :meth:`~BudgetLedger.close_run` -- release what the run reserved but did not spend.
   An open run counts its full reservation against the total cap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from dp._ledger_schema import MAX_DATASET_CHARS, Base, BudgetRow, RoundSpendRow, RunChargeRow
from dp.errors import (
    BudgetExceeded,
    InvalidPrivacyParameter,
    LedgerStateError,
    NoBudget,
    StorageError,
)
from dp.spend import PrivacySpend, PrivacyUnit, check_epsilon

__all__ = ["Budget", "BudgetLedger", "BudgetStatus", "PlanCheck"]

_WRITE = "dp_ledger_write"
_MAX_RUN_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Budget:
    """The caps of one dataset in one privacy unit."""

    dataset: str
    unit: PrivacyUnit
    max_epsilon_per_run: float
    max_epsilon_total: float


@dataclass(frozen=True, slots=True)
class PlanCheck:
    """Whether a run's plan fits the budget, with the numbers behind the answer."""

    allowed: bool
    budget: Budget
    run_id: int
    planned: PrivacySpend
    #: Epsilon already spent or reserved by *other* runs on this dataset and unit.
    charged_epsilon: float
    #: Why the plan was refused (empty when allowed).
    reason: str
    refusal: BudgetExceeded | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A dataset's budget and spending in one unit, for a site administrator."""

    budget: Budget
    spent: PrivacySpend
    reserved_epsilon: float
    remaining_epsilon: float
    runs: int
    open_runs: int


def _check_dataset(dataset: object) -> str:
    if not isinstance(dataset, str) or not 0 < len(dataset) <= MAX_DATASET_CHARS:
        raise InvalidPrivacyParameter(
            f"dataset key must be a string of 1..{MAX_DATASET_CHARS} characters"
        )
    if "\x00" in dataset or dataset != dataset.strip():
        raise InvalidPrivacyParameter(f"dataset key {dataset!r:.60} has NUL or edge spaces")
    return dataset


def _check_run_id(run_id: object) -> int:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 0 <= run_id <= _MAX_RUN_ID:
        raise InvalidPrivacyParameter(f"run_id must be an int in 0..2**63-1, got {run_id!r:.40}")
    return run_id


def _engine(url: str) -> Engine:
    try:
        engine = create_engine(
            url, connect_args={"timeout": 30} if url.startswith("sqlite") else {}
        )
    except (ArgumentError, ValueError, ImportError) as exc:
        raise StorageError(f"cannot open the ledger database: {type(exc).__name__}") from None
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is emitted below
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class BudgetLedger:
    """A site's privacy-budget ledger on SQLAlchemy 2.

    Args:
        url: ``sqlite:///PATH`` (the file is created) or ``postgresql+psycopg://…``.
        clock: seconds since the epoch, for the timestamps (injectable for tests).

    Raises:
        StorageError: the database cannot be opened or its tables created.

    Example:
        >>> ledger = BudgetLedger.open(path)                      # doctest: +SKIP
        >>> ledger.set_budget("breast-cancer", PrivacyUnit.SITE,
        ...                   max_epsilon_per_run=10, max_epsilon_total=30)
        >>> plan = PrivacySpend(epsilon=8.0, delta=1e-5, unit=PrivacyUnit.SITE)
        >>> ledger.reserve("breast-cancer", run_id=7, planned=plan)
        >>> ledger.commit("breast-cancer", run_id=7, server_round=1, cumulative=...)
        >>> ledger.close_run("breast-cancer", run_id=7, unit=PrivacyUnit.SITE)
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = _engine(url)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        self._clock = clock
        try:
            Base.metadata.create_all(self._writer)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot create the ledger tables: {type(exc).__name__}") from None

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> BudgetLedger:
        """Open (or create) a SQLite ledger file at ``path``."""
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the ledger directory: {exc}") from exc
        return cls(f"sqlite:///{target}", **kwargs)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Session]:
        try:
            with Session(self._writer if write else self._engine) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"ledger database error: {type(exc).__name__}: {exc}") from exc

    # -- budgets ----------------------------------------------------------------------------
    def set_budget(
        self,
        dataset: str,
        unit: PrivacyUnit,
        *,
        max_epsilon_per_run: float,
        max_epsilon_total: float,
    ) -> Budget:
        """Create or replace the caps of ``dataset`` in ``unit`` (a site-policy decision).

        Raises:
            InvalidPrivacyParameter: a cap is negative or per-run exceeds total.
            StorageError: the database failed.
        """
        dataset = _check_dataset(dataset)
        per_run = check_epsilon(max_epsilon_per_run, "max_epsilon_per_run")
        total = check_epsilon(max_epsilon_total, "max_epsilon_total")
        if per_run > total:
            raise InvalidPrivacyParameter(
                f"max_epsilon_per_run {per_run:g} exceeds max_epsilon_total {total:g}"
            )
        with self._transaction(write=True) as session:
            row = session.get(BudgetRow, (dataset, unit.value))
            if row is None:
                row = BudgetRow(dataset_key=dataset, unit=unit.value)
                session.add(row)
            row.max_epsilon_per_run, row.max_epsilon_total = per_run, total
            row.updated_at = self._clock()
        return Budget(dataset, unit, per_run, total)

    def budget(self, dataset: str, unit: PrivacyUnit) -> Budget:
        """The caps of ``dataset`` in ``unit``. Raises NoBudget if none were set."""
        with self._transaction(write=False) as session:
            return self._budget(session, _check_dataset(dataset), unit, lock=False)

    def _budget(self, session: Session, dataset: str, unit: PrivacyUnit, *, lock: bool) -> Budget:
        query = select(BudgetRow).where(
            BudgetRow.dataset_key == dataset, BudgetRow.unit == unit.value
        )
        row = session.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise NoBudget(
                f"dataset {dataset!r} has no {unit.value} privacy budget: site policy must set "
                "max_epsilon_per_run and max_epsilon_total before any DP run may use it"
            )
        return Budget(dataset, unit, row.max_epsilon_per_run, row.max_epsilon_total)

    # -- plans and reservations --------------------------------------------------------------
    def _check(
        self, session: Session, dataset: str, run_id: int, planned: PrivacySpend, *, lock: bool
    ) -> PlanCheck:
        budget = self._budget(session, dataset, planned.unit, lock=lock)
        runs = session.scalars(
            select(RunChargeRow).where(
                RunChargeRow.dataset_key == dataset, RunChargeRow.unit == planned.unit.value
            )
        ).all()
        others = math.fsum(r.charged_epsilon for r in runs if r.run_id != run_id)
        mine = next((r for r in runs if r.run_id == run_id), None)
        already = 0.0 if mine is None else mine.spent_epsilon
        requested = max(planned.epsilon, already)
        refusal = None
        if requested > budget.max_epsilon_per_run:
            refusal = BudgetExceeded(
                dataset=dataset, unit=planned.unit.value, cap="per-run",
                requested=requested, spent=0.0, limit=budget.max_epsilon_per_run,
            )  # fmt: skip
        elif others + requested > budget.max_epsilon_total:
            refusal = BudgetExceeded(
                dataset=dataset, unit=planned.unit.value, cap="total",
                requested=requested, spent=others, limit=budget.max_epsilon_total,
            )  # fmt: skip
        reason = "" if refusal is None else str(refusal)
        return PlanCheck(refusal is None, budget, run_id, planned, others, reason, refusal)

    def check_plan(self, dataset: str, run_id: int, planned: PrivacySpend) -> PlanCheck:
        """Would ``planned`` (the run's whole plan) fit under both caps? Changes nothing.

        Raises:
            NoBudget: the dataset has no budget in the plan's unit.
            StorageError: the database failed.
        """
        dataset, run_id = _check_dataset(dataset), _check_run_id(run_id)
        with self._transaction(write=False) as session:
            return self._check(session, dataset, run_id, planned, lock=False)

    def verify_plan(self, dataset: str, run_id: int, planned: PrivacySpend) -> PlanCheck:
        """:meth:`check_plan`, raising :class:`~dp.errors.BudgetExceeded` when it does not fit."""
        result = self.check_plan(dataset, run_id, planned)
        if not result.allowed:
            raise result.refusal  # type: ignore[misc]
        return result

    def reserve(self, dataset: str, run_id: int, planned: PrivacySpend) -> PlanCheck:
        """Check and reserve ``planned`` for the run in one atomic transaction.

        Reserving again for the same open run raises the reservation to the larger plan
        (re-checked); a closed run cannot reserve again.

        Raises:
            BudgetExceeded: the plan does not fit (nothing is written).
            NoBudget: the dataset has no budget in the plan's unit.
            LedgerStateError: the run was already closed on this dataset.
            StorageError: the database failed.
        """
        dataset, run_id = _check_dataset(dataset), _check_run_id(run_id)
        with self._transaction(write=True) as session:
            result = self._check(session, dataset, run_id, planned, lock=True)
            if not result.allowed:
                raise result.refusal  # type: ignore[misc]
            row = session.get(RunChargeRow, (dataset, planned.unit.value, run_id))
            if row is None:
                session.add(
                    RunChargeRow(
                        dataset_key=dataset,
                        unit=planned.unit.value,
                        run_id=run_id,
                        reserved_epsilon=planned.epsilon,
                        reserved_delta=planned.delta,
                        spent_epsilon=0.0,
                        spent_delta=0.0,
                        rounds=0,
                        is_open=True,
                        opened_at=self._clock(),
                        closed_at=None,
                    )
                )
            elif not row.is_open:
                raise LedgerStateError(f"run {run_id} was closed on dataset {dataset!r}")
            else:
                row.reserved_epsilon = max(row.reserved_epsilon, planned.epsilon)
                row.reserved_delta = max(row.reserved_delta, planned.delta)
        return result

    def commit(
        self, dataset: str, run_id: int, server_round: int, cumulative: PrivacySpend
    ) -> None:
        """Record the run's cumulative spend after ``server_round`` (before the reply leaves).

        Raises:
            BudgetExceeded: ``cumulative`` exceeds the run's reservation (nothing written:
                do not release the round).
            LedgerStateError: no open reservation, or the spend went backwards.
            StorageError: the database failed.
        """
        dataset, run_id = _check_dataset(dataset), _check_run_id(run_id)
        unit = cumulative.unit
        with self._transaction(write=True) as session:
            row = session.get(RunChargeRow, (dataset, unit.value, run_id), with_for_update=True)
            if row is None or not row.is_open:
                raise LedgerStateError(
                    f"run {run_id} has no open {unit.value} reservation on dataset {dataset!r}"
                )
            if cumulative.epsilon < row.spent_epsilon or cumulative.delta < row.spent_delta:
                raise LedgerStateError(
                    f"run {run_id}: cumulative spend went backwards "
                    f"(ε {row.spent_epsilon:.6g} -> {cumulative.epsilon:.6g})"
                )
            if cumulative.epsilon > row.reserved_epsilon:
                raise BudgetExceeded(
                    dataset=dataset,
                    unit=unit.value,
                    cap="per-run",
                    requested=cumulative.epsilon,
                    spent=0.0,
                    limit=row.reserved_epsilon,
                )
            if session.get(RoundSpendRow, (dataset, unit.value, run_id, server_round)) is not None:
                raise LedgerStateError(f"run {run_id} already committed round {server_round}")
            row.spent_epsilon, row.spent_delta = cumulative.epsilon, cumulative.delta
            row.rounds += 1
            session.add(
                RoundSpendRow(
                    dataset_key=dataset,
                    unit=unit.value,
                    run_id=run_id,
                    server_round=server_round,
                    epsilon=cumulative.epsilon,
                    delta=cumulative.delta,
                    committed_at=self._clock(),
                )
            )

    def close_run(self, dataset: str, run_id: int, unit: PrivacyUnit) -> PrivacySpend:
        """Close the run on ``dataset``: its charge becomes what it spent. Returns that spend.

        Raises:
            LedgerStateError: the run has no reservation on the dataset.
            StorageError: the database failed.
        """
        dataset, run_id = _check_dataset(dataset), _check_run_id(run_id)
        with self._transaction(write=True) as session:
            row = session.get(RunChargeRow, (dataset, unit.value, run_id), with_for_update=True)
            if row is None:
                raise LedgerStateError(f"run {run_id} has no reservation on dataset {dataset!r}")
            if row.is_open:
                row.is_open, row.closed_at = False, self._clock()
            return PrivacySpend(epsilon=row.spent_epsilon, delta=row.spent_delta, unit=unit)

    # -- reading -----------------------------------------------------------------------------
    def committed_rounds(self, dataset: str, run_id: int, unit: PrivacyUnit) -> list[int]:
        """The server rounds the run has committed on ``dataset`` in ``unit``, ascending
        (how a restarted process picks up a run in flight).

        Raises:
            StorageError: the database failed.
        """
        dataset, run_id = _check_dataset(dataset), _check_run_id(run_id)
        with self._transaction(write=False) as session:
            query = (
                select(RoundSpendRow.server_round)
                .where(
                    RoundSpendRow.dataset_key == dataset,
                    RoundSpendRow.unit == unit.value,
                    RoundSpendRow.run_id == run_id,
                )
                .order_by(RoundSpendRow.server_round)
            )
            return list(session.scalars(query).all())

    def status(self, dataset: str | None = None) -> list[BudgetStatus]:
        """Every budget (or ``dataset``'s) with its spending, sorted by dataset and unit."""
        with self._transaction(write=False) as session:
            query = select(BudgetRow).order_by(BudgetRow.dataset_key, BudgetRow.unit)
            if dataset is not None:
                query = query.where(BudgetRow.dataset_key == _check_dataset(dataset))
            out = []
            for row in session.scalars(query).all():
                runs = session.scalars(
                    select(RunChargeRow).where(
                        RunChargeRow.dataset_key == row.dataset_key, RunChargeRow.unit == row.unit
                    )
                ).all()
                unit = PrivacyUnit(row.unit)
                spent = PrivacySpend(
                    epsilon=math.fsum(r.spent_epsilon for r in runs),
                    delta=min(math.fsum(r.spent_delta for r in runs), math.nextafter(1.0, 0.0)),
                    unit=unit,
                )
                charged = math.fsum(r.charged_epsilon for r in runs)
                out.append(
                    BudgetStatus(
                        budget=Budget(
                            row.dataset_key, unit, row.max_epsilon_per_run, row.max_epsilon_total
                        ),
                        spent=spent,
                        reserved_epsilon=charged - spent.epsilon,
                        remaining_epsilon=max(row.max_epsilon_total - charged, 0.0),
                        runs=len(runs),
                        open_runs=sum(r.is_open for r in runs),
                    )
                )
            return out

    def spent(self, dataset: str, unit: PrivacyUnit) -> PrivacySpend:
        """Total committed spend on ``dataset`` in ``unit`` (basic composition over runs).

        Raises:
            NoBudget: the dataset has no budget in ``unit``.
        """
        for item in self.status(dataset):
            if item.budget.unit is unit:
                return item.spent
        raise NoBudget(f"dataset {dataset!r} has no {unit.value} privacy budget")

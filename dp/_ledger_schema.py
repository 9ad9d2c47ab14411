"""Tables of the privacy-budget ledger (its own metadata, its own database file).

Portable SQL only (no SQLite- or PostgreSQL-specific types), so the same schema
runs on ``sqlite:///…`` and ``postgresql+psycopg://…``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_DATASET_CHARS = 200


class Base(DeclarativeBase):
    metadata = MetaData()


class BudgetRow(Base):
    """One dataset's caps for one privacy unit."""

    __tablename__ = "dp_budget"

    dataset_key: Mapped[str] = mapped_column(String(MAX_DATASET_CHARS), primary_key=True)
    unit: Mapped[str] = mapped_column(String(16), primary_key=True)
    max_epsilon_per_run: Mapped[float] = mapped_column(Float)
    max_epsilon_total: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RunChargeRow(Base):
    """What one run reserved and has spent on one dataset in one unit."""

    __tablename__ = "dp_run_charge"

    dataset_key: Mapped[str] = mapped_column(String(MAX_DATASET_CHARS), primary_key=True)
    unit: Mapped[str] = mapped_column(String(16), primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reserved_epsilon: Mapped[float] = mapped_column(Float)
    reserved_delta: Mapped[float] = mapped_column(Float)
    spent_epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    spent_delta: Mapped[float] = mapped_column(Float, default=0.0)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)
    opened_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    @property
    def charged_epsilon(self) -> float:
        """What counts against the total cap: the reservation while open, the spend after."""
        return (
            max(self.reserved_epsilon, self.spent_epsilon) if self.is_open else self.spent_epsilon
        )

    @property
    def charged_delta(self) -> float:
        return max(self.reserved_delta, self.spent_delta) if self.is_open else self.spent_delta


class RoundSpendRow(Base):
    """The run's cumulative spend after one round (an append-only trail)."""

    __tablename__ = "dp_round_spend"

    dataset_key: Mapped[str] = mapped_column(String(MAX_DATASET_CHARS), primary_key=True)
    unit: Mapped[str] = mapped_column(String(16), primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    server_round: Mapped[int] = mapped_column(Integer, primary_key=True)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    committed_at: Mapped[float] = mapped_column(Float)

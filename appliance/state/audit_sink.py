"""How the state writes its audit trail: inside the transaction of each change.

The state records who changed what by calling an :class:`AuditSink` with the
open ORM session of the change, just before it commits. The sink (the
SuperLink's adapter over :class:`audit.AuditLog`) writes the entry through that
session, so the change and its entry commit together or not at all: there is
no state change without its entry, and a failed entry fails the change closed
(:class:`~appliance.state.errors.AuditFailed`).

This module only defines the contract; the state imports nothing from
``audit``. Without a sink attached (tests, tools) nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

__all__ = ["AuditActor", "AuditSink"]


@dataclass(frozen=True, slots=True)
class AuditActor:
    """A certificate identity acting on the state (``None`` stands for the system)."""

    identity: str
    role: str


class AuditSink(Protocol):
    """Writes one audit entry through ``session`` (the change's own transaction).

    Raises any exception to refuse: the state then rolls the change back.
    """

    def __call__(
        self,
        session: Session,
        action: str,
        *,
        actor: AuditActor | None,
        subjects: Mapping[str, str],
        details: Mapping[str, object],
    ) -> None: ...

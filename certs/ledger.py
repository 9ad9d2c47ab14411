"""The CA's append-only issuance ledger (``issued.jsonl`` in the CA directory).

Every CA action (init, issue, revoke, CRL) is appended as one JSON line with the
serial, subject, role, certificate fingerprint, who acted and when. The ledger is
the CA's record of what it issued and revoked: the CRL and ``ca list`` are derived
from it, and the audit log ingests it. Guarantees: entries are only appended (one
``write`` on an ``O_APPEND`` descriptor, then ``fsync``), never rewritten; a
malformed line is reported with its line number, never skipped. The ledger holds
no key material. Tamper evidence is the audit log's job (``audit/``), not this one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from certs.errors import CAError
from certs.identity import serial_hex
from certs.roles import Role

__all__ = [
    "Action",
    "CertificateRecord",
    "Ledger",
    "LedgerEntry",
    "Status",
    "summarize",
]


class Action(StrEnum):
    """What the CA did."""

    INIT = "init"
    ISSUE = "issue"
    REVOKE = "revoke"
    CRL = "crl"


class Status(StrEnum):
    """An issued certificate's status at a given time."""

    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """One CA action, as stored in ``issued.jsonl``."""

    action: Action
    when: datetime
    who: str
    serial: int | None = None
    subject: str | None = None
    role: Role | None = None
    fingerprint: str | None = None
    signing_key_fingerprint: str | None = None
    not_after: datetime | None = None
    reason: str | None = None
    requested_role: Role | None = None

    def to_json(self) -> str:
        """The entry as one JSON line (without the newline)."""
        record: dict[str, Any] = {
            "action": self.action.value,
            "when": self.when.isoformat(),
            "who": self.who,
            "serial": None if self.serial is None else serial_hex(self.serial),
            "subject": self.subject,
            "role": None if self.role is None else self.role.value,
            "fingerprint": self.fingerprint,
            "signing_key_fingerprint": self.signing_key_fingerprint,
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
            "reason": self.reason,
            "requested_role": None if self.requested_role is None else self.requested_role.value,
        }
        return json.dumps({k: v for k, v in record.items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        """Parse one ledger line.

        Raises:
            ValueError: the line is not a valid entry.
        """
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("entry is not a JSON object")

        def opt(key: str) -> str | None:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field {key!r} is not a string")
            return value

        serial, not_after, role, req = (
            opt("serial"),
            opt("not_after"),
            opt("role"),
            opt("requested_role"),
        )
        return cls(
            action=Action(data["action"]),
            when=datetime.fromisoformat(data["when"]),
            who=str(data["who"]),
            serial=None if serial is None else int(serial, 16),
            subject=opt("subject"),
            role=None if role is None else Role(role),
            fingerprint=opt("fingerprint"),
            signing_key_fingerprint=opt("signing_key_fingerprint"),
            not_after=None if not_after is None else datetime.fromisoformat(not_after),
            reason=opt("reason"),
            requested_role=None if req is None else Role(req),
        )


class Ledger:
    """The ``issued.jsonl`` file of one CA directory."""

    def __init__(self, path: Path) -> None:
        """Use the ledger at ``path`` (created on first append)."""
        self.path = path

    def append(self, entry: LedgerEntry) -> None:
        """Append ``entry`` durably.

        Raises:
            CAError: the ledger cannot be written.
        """
        line = (entry.to_json() + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CAError(f"cannot append to ledger {self.path}: {exc.strerror}") from None

    def entries(self) -> tuple[LedgerEntry, ...]:
        """All entries, oldest first.

        Raises:
            CAError: the ledger is unreadable or a line is malformed.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise CAError(f"cannot read ledger {self.path}: {exc.strerror}") from None
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(LedgerEntry.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise CAError(f"ledger {self.path} line {number} is malformed: {exc}") from None
        return tuple(entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRecord:
    """An issued certificate and its status at a given time (a ``ca list`` row)."""

    serial: int
    subject: str
    role: Role | None
    fingerprint: str | None
    signing_key_fingerprint: str | None
    issued_at: datetime
    not_after: datetime
    status: Status
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    @property
    def serial_hex(self) -> str:
        """The serial as lowercase hex."""
        return serial_hex(self.serial)


def summarize(entries: Iterable[LedgerEntry], now: datetime) -> tuple[CertificateRecord, ...]:
    """Every issued certificate with its status at ``now``, in issuance order."""
    issued: dict[int, LedgerEntry] = {}
    revoked: dict[int, LedgerEntry] = {}
    for entry in entries:
        if entry.serial is None:
            continue
        if entry.action is Action.ISSUE:
            issued[entry.serial] = entry
        elif entry.action is Action.REVOKE:
            revoked.setdefault(entry.serial, entry)
    records = []
    for serial, entry in issued.items():
        if entry.not_after is None:
            raise CAError(f"ledger issue entry for serial {serial_hex(serial)} has no not_after")
        revocation = revoked.get(serial)
        if revocation is not None:
            status = Status.REVOKED
        elif entry.not_after <= now:
            status = Status.EXPIRED
        else:
            status = Status.VALID
        records.append(
            CertificateRecord(
                serial=serial,
                subject=entry.subject or "",
                role=entry.role,
                fingerprint=entry.fingerprint,
                signing_key_fingerprint=entry.signing_key_fingerprint,
                issued_at=entry.when,
                not_after=entry.not_after,
                status=status,
                revoked_at=None if revocation is None else revocation.when,
                revocation_reason=None if revocation is None else revocation.reason,
            )
        )
    return tuple(records)

"""The audit entry: a frozen value object and its one canonical JSON line.

An entry line is the canonical JSON (RFC 8785 subset, see :mod:`audit.canonical`)
of an object with exactly these members::

    {"action":"run.submitted",
     "actor":{"id":"CN=alice,O=Hospital A","role":"data-scientist"} | "system",
     "details":{...},                       # JSON object, no floats
     "prev":"<64 lowercase hex>",           # leaf hash of entry seq-1; zeros for seq 0
     "seq":0,                               # = Merkle leaf index
     "subjects":{"run_id":"..."},           # small map of str -> str
     "time":"2025-01-02T03:04:05.123456Z",  # RFC 3339, UTC, microseconds
     "v":1}

(shown wrapped; a line has no whitespace outside strings). The line's UTF-8
bytes, without any newline, are the RFC 6962 Merkle leaf: leaf hash =
``SHA-256(0x00 || line)``. ``prev`` chains each entry to its predecessor's leaf
hash, so an edit shows up at the very next entry even without a tree head.

This module guarantees that every :class:`Entry` is valid and that
:func:`parse_entry` accepts only lines :func:`encode_entry` could have written.
It does no I/O and reads no clock: times are given to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from audit.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    JsonValue,
    encode_ordered,
    freeze_json,
    loads_canonical_form,
    thaw_json,
)
from audit.errors import CanonicalJSONError, MalformedEntry
from audit.tree import HASH_SIZE, leaf_hash

__all__ = [
    "ENTRY_VERSION",
    "GENESIS_PREV",
    "MAX_LINE_BYTES",
    "SYSTEM",
    "Action",
    "Actor",
    "Entry",
    "check_entry_line",
    "encode_entry",
    "entry_leaf_hash",
    "format_time",
    "parse_entry",
    "parse_time",
]

ENTRY_VERSION = 1
GENESIS_PREV = bytes(HASH_SIZE)
MAX_LINE_BYTES = 64 * 1024
MAX_SUBJECTS = 16
MAX_SUBJECT_VALUE = 256
MAX_IDENTITY = 512

_KEYS = frozenset({"action", "actor", "details", "prev", "seq", "subjects", "time", "v"})
_SUBJECT_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_ROLE = re.compile(r"[a-z][a-z0-9-]{0,63}\Z")
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z\Z"
)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ACTOR_KEYS = frozenset({"id", "role"})


class Action(StrEnum):
    """The fixed vocabulary of audited actions."""

    RUN_SUBMITTED = "run.submitted"
    RUN_STARTED = "run.started"
    RUN_FINISHED = "run.finished"
    RUN_FAILED = "run.failed"
    RUN_STOPPED = "run.stopped"
    ROUND_COMPLETED = "round.completed"
    NODE_ENROLLED = "node.enrolled"
    NODE_REMOVED = "node.removed"
    NODE_CONNECTED = "node.connected"
    NODE_RENEWED = "node.renewed"
    NODE_RENEWAL_COMPLETED = "node.renewal_completed"
    AUTH_REFUSED = "auth.refused"
    CERT_ISSUED = "cert.issued"
    CERT_REVOKED = "cert.revoked"
    POLICY_REFUSED = "policy.refused"
    POLICY_RELOADED = "policy.reloaded"
    BUDGET_SPENT = "budget.spent"
    EGRESS_REPLY = "egress.reply"
    MESSAGE_RECEIVED = "message.received"
    SUPERLINK_STARTED = "superlink.started"
    SUPERLINK_INSECURE = "superlink.insecure"
    AUDIT_ARCHIVED = "audit.archived"
    # Added for reconciliation (docs/audit.md "Entries the runtime writes"); the
    # vocabulary only grows, so a verifier must be at least as new as the writer.
    REPLY_RECEIVED = "reply.received"
    CHECKPOINT_SEEN = "checkpoint.seen"
    # Site approval and receipts (issue: hardened SuperNode).
    RUN_APPROVED = "run.approved"
    RUN_REFUSED = "run.refused"
    RECEIPT_RECEIVED = "receipt.received"


_ACTIONS = frozenset(a.value for a in Action)


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who acted: a certificate identity and its role, or :data:`SYSTEM`."""

    identity: str
    role: str

    def __post_init__(self) -> None:
        if not 0 < len(self.identity) <= MAX_IDENTITY or _CONTROL.search(self.identity):
            raise MalformedEntry(
                f"actor identity must be 1..{MAX_IDENTITY} characters without controls"
            )
        if not _ROLE.match(self.role):
            raise MalformedEntry(f"actor role {self.role!r} is not [a-z][a-z0-9-]{{0,63}}")

    @property
    def is_system(self) -> bool:
        """True for the appliance itself rather than a person or node."""
        return self == SYSTEM

    def to_json(self) -> str | dict[str, str]:
        """Return ``"system"`` or ``{"id": ..., "role": ...}``."""
        return "system" if self.is_system else {"id": self.identity, "role": self.role}


SYSTEM = Actor(identity="system", role="system")


def format_time(when: datetime) -> str:
    """Return ``when`` as RFC 3339 UTC with microseconds and ``Z``.

    Raises:
        MalformedEntry: ``when`` is naive (has no time zone).
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise MalformedEntry("entry time must be timezone-aware")
    t = when.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    """Parse the exact form :func:`format_time` writes.

    Raises:
        MalformedEntry: any other form or an impossible date.
    """
    _check_time(text)
    return datetime.fromisoformat(text)


@lru_cache(maxsize=64)
def _check_date(text: str) -> None:
    try:
        date.fromisoformat(text)
    except ValueError as exc:
        raise MalformedEntry(f"date {text!r} does not exist: {exc}") from exc


def _check_time(text: str) -> None:
    """Validate the form of :func:`format_time` (dates memoized: they repeat)."""
    if not _TIME.match(text):
        raise MalformedEntry(f"time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    _check_date(text[:10])


def _frozen_subjects(subjects: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(subjects, Mapping) or len(subjects) > MAX_SUBJECTS:
        raise MalformedEntry(f"subjects must be a mapping of at most {MAX_SUBJECTS} items")
    for key, value in subjects.items():
        if not isinstance(key, str) or not _SUBJECT_KEY.match(key):
            raise MalformedEntry(f"subject key {key!r} is not [a-z][a-z0-9_]{{0,31}}")
        if not isinstance(value, str) or not 0 < len(value) <= MAX_SUBJECT_VALUE:
            raise MalformedEntry(f"subject {key} must be a string of 1..{MAX_SUBJECT_VALUE}")
        if _CONTROL.search(value):
            raise MalformedEntry(f"subject {key} holds a control character")
    return MappingProxyType(dict(sorted((str(k), str(v)) for k, v in subjects.items())))


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One audit entry. Validated on construction; immutable.

    ``subjects`` and ``details`` are stored as read-only copies; ``details``
    holds only JSON without floats (see :mod:`audit.canonical`).
    """

    seq: int
    time: datetime
    actor: Actor
    action: Action
    subjects: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    details: Mapping[str, JsonValue] = field(default_factory=lambda: MappingProxyType({}))
    prev: bytes = GENESIS_PREV

    def __post_init__(self) -> None:
        if type(self.seq) is not int or not 0 <= self.seq <= MAX_SAFE_INTEGER:
            raise MalformedEntry(f"sequence number {self.seq!r} is not an integer >= 0")
        if not isinstance(self.time, datetime):
            raise MalformedEntry("entry time must be a datetime")
        format_time(self.time)
        if not isinstance(self.actor, Actor):
            raise MalformedEntry("actor must be an Actor")
        try:
            action = Action(self.action)
        except ValueError as exc:
            raise MalformedEntry(f"action {self.action!r} is not in the vocabulary") from exc
        if not isinstance(self.prev, bytes) or len(self.prev) != HASH_SIZE:
            raise MalformedEntry(f"prev must be {HASH_SIZE} bytes")
        if not isinstance(self.details, Mapping):
            raise MalformedEntry("details must be a JSON object")
        try:
            details = freeze_json(self.details)
        except CanonicalJSONError as exc:
            raise CanonicalJSONError(f"entry {self.seq} details: {exc}") from exc
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        object.__setattr__(self, "subjects", _frozen_subjects(self.subjects))
        object.__setattr__(self, "details", details)

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a plain JSON object, members in canonical order."""
        return {
            "action": self.action.value,
            "actor": self.actor.to_json(),
            "details": thaw_json(self.details),
            "prev": self.prev.hex(),
            "seq": self.seq,
            "subjects": dict(self.subjects),
            "time": format_time(self.time),
            "v": ENTRY_VERSION,
        }


def encode_entry(entry: Entry) -> bytes:
    """Return the canonical line of ``entry``: the exact Merkle leaf data, no newline.

    Raises:
        MalformedEntry: the line would exceed :data:`MAX_LINE_BYTES`.
        CanonicalJSONError: a string holds a lone surrogate.
    """
    line = encode_ordered(entry.to_json())
    if len(line) > MAX_LINE_BYTES:
        raise MalformedEntry(
            f"entry {entry.seq} is {len(line)} bytes, limit is {MAX_LINE_BYTES}",
            entry_index=entry.seq,
        )
    return line


def entry_leaf_hash(entry: Entry) -> bytes:
    """Return the RFC 6962 leaf hash of the entry's canonical line."""
    return leaf_hash(encode_entry(entry))


def _check_details(value: Any, depth: int) -> None:
    if type(value) is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise MalformedEntry(f"details integer {value} is outside ±(2**53 - 1)")
    elif type(value) is dict or type(value) is list:
        if depth >= MAX_DEPTH:
            raise MalformedEntry(f"details nest deeper than {MAX_DEPTH}")
        for item in value.values() if type(value) is dict else value:
            _check_details(item, depth + 1)


@lru_cache(maxsize=1024)
def _check_principal(identity: str, role: str) -> None:
    """Validate a principal actor (memoized: actors repeat across a log)."""
    Actor(identity=identity, role=role)
    if identity == "system" and role == "system":
        raise MalformedEntry('the system actor is written "system"')


def _check_actor(actor: Any) -> None:
    if actor == "system":
        return
    if type(actor) is not dict or actor.keys() != _ACTOR_KEYS:
        raise MalformedEntry('actor must be "system" or {"id": ..., "role": ...}')
    if type(actor["id"]) is not str or type(actor["role"]) is not str:
        raise MalformedEntry("actor id and role must be strings")
    _check_principal(actor["id"], actor["role"])


@lru_cache(maxsize=256)
def _subject_key_ok(key: str) -> bool:
    return _SUBJECT_KEY.match(key) is not None


def _check_subjects(subjects: Any, plain: bool) -> None:
    if type(subjects) is not dict or len(subjects) > MAX_SUBJECTS:
        raise MalformedEntry(f"subjects must be an object of at most {MAX_SUBJECTS} items")
    for key, value in subjects.items():
        if not _subject_key_ok(key):
            raise MalformedEntry(f"subject key {key!r} is not [a-z][a-z0-9_]{{0,31}}")
        if type(value) is not str or not 0 < len(value) <= MAX_SUBJECT_VALUE:
            raise MalformedEntry(f"subject {key} must be a string of 1..{MAX_SUBJECT_VALUE}")
        if not plain and _CONTROL.search(value):
            raise MalformedEntry(f"subject {key} holds a control character")


def _decode(line: bytes) -> dict[str, Any]:
    """Parse and validate a line (the verifier's hot path: keep it lean).

    A line without a backslash or DEL has no control character in any string,
    so the subjects' control check is skipped for it (exact, not a heuristic).
    """
    if len(line) > MAX_LINE_BYTES:
        raise MalformedEntry(f"line is {len(line)} bytes, limit is {MAX_LINE_BYTES}")
    try:
        obj = loads_canonical_form(line)
    except CanonicalJSONError as exc:
        raise MalformedEntry(str(exc)) from exc
    if type(obj) is not dict or obj.keys() != _KEYS:
        raise MalformedEntry(f"entry must be an object with exactly {sorted(_KEYS)}")
    if obj["v"] != ENTRY_VERSION or type(obj["v"]) is not int:
        raise MalformedEntry(f"entry version {obj['v']!r} is not {ENTRY_VERSION}")
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_SAFE_INTEGER:
        raise MalformedEntry(f"sequence number {seq!r} is not an integer >= 0")
    if obj["action"] not in _ACTIONS:
        raise MalformedEntry(f"action {obj['action']!r} is not in the vocabulary")
    prev = obj["prev"]
    if type(prev) is not str or not _HEX64.match(prev):
        raise MalformedEntry("prev is not 64 lowercase hex digits")
    if type(obj["time"]) is not str:
        raise MalformedEntry("time is not a string")
    _check_time(obj["time"])
    _check_actor(obj["actor"])
    _check_subjects(obj["subjects"], b"\\" not in line and b"\x7f" not in line)
    if type(obj["details"]) is not dict:
        raise MalformedEntry("details is not an object")
    for value in obj["details"].values():
        if type(value) is int:
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise MalformedEntry(f"details integer {value} is outside ±(2**53 - 1)")
        elif type(value) is dict or type(value) is list:
            _check_details(value, 2)
    return obj


def check_entry_line(line: bytes) -> tuple[int, str]:
    """Validate an entry line fully without building an :class:`Entry`.

    The verifier's hot path: every rule :func:`parse_entry` applies, applied.

    Args:
        line: the line's bytes, without the newline.

    Returns:
        ``(seq, prev)`` with ``prev`` as lowercase hex.

    Raises:
        MalformedEntry: the line is not a valid canonical entry.
    """
    obj = _decode(line)
    return obj["seq"], obj["prev"]


def parse_entry(line: bytes) -> Entry:
    """Parse and validate one entry line (without its newline).

    Raises:
        MalformedEntry: the line is not valid canonical entry JSON.
    """
    obj = _decode(line)
    actor = obj["actor"]
    return Entry(
        seq=obj["seq"],
        time=parse_time(obj["time"]),
        actor=SYSTEM if actor == "system" else Actor(identity=actor["id"], role=actor["role"]),
        action=Action(obj["action"]),
        subjects=obj["subjects"],
        details=obj["details"],
        prev=bytes.fromhex(obj["prev"]),
    )

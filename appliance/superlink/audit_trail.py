"""The SuperLink's audit log: one :class:`audit.AuditLog` inside the state database.

Every audited state change (run submitted/started/ended, node enrolled/removed/
connected, reply received, round completed) writes its entry through the
state's :class:`~appliance.state.AuditSink` in the change's own transaction, so
a change without its entry cannot be committed. Refused calls
(``auth.refused``) have no state change and get a transaction of their own.

Tree heads are signed every ``checkpoint_every`` entries, by the sweeper when
entries have waited ``checkpoint_interval_s`` unsigned (so sites can witness a
quiet log too), when a run ends, and on shutdown. Sites fetch the latest one
with each message they pull, check it against the one they cosigned before,
and send back their cosignature, which is verified and stored here.

The signing key is ``--audit-key`` or ``DATA_DIR/audit.key`` (created on first
start); its verifier key goes to ``DATA_DIR/audit.vkey`` for auditors. A
database whose log was signed by another key is refused at start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

import audit
from appliance.logs import get_logger
from appliance.state import AuditActor, AuditSink, State
from audit.note import parse_note
from audit.schema import latest_checkpoint
from certs import load_or_create_signing_key, load_signing_key
from certs.grpc_auth import Refusal
from certs.identity import Identity

__all__ = ["AuditSettings", "SuperLinkAudit", "TreeHead", "actor_of", "sink_for"]

_log = get_logger("appliance.superlink.audit")
#: Largest consistency proof cache (one entry per (old, new) size pair asked for).
_PROOF_CACHE = 64
#: Longest a remembered latest tree head is used without reading the database.
_LATEST_TTL_S = 1.0


@dataclass(frozen=True)
class AuditSettings:
    """How the SuperLink keeps its audit log."""

    #: Ed25519 key file; ``None``: ``DATA_DIR/audit.key``, created on first start.
    key: Path | None = None
    #: The checkpoint origin line and key name (no spaces or ``+``).
    origin: str = "greenhouse-superlink"
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 10.0


@dataclass(frozen=True)
class TreeHead:
    """The latest signed tree head, as served to sites."""

    size: int
    note: str


def actor_of(identity: Identity) -> AuditActor:
    """The audit actor of an authenticated caller: its certificate name and role."""
    return AuditActor(identity.name, identity.role.value)


def sink_for(log: audit.AuditLog) -> AuditSink:
    """The state's audit sink writing to ``log`` through the change's own session."""

    def sink(
        session: Session,
        action: str,
        *,
        actor: AuditActor | None,
        subjects: Mapping[str, str],
        details: Mapping[str, object],
    ) -> None:
        who = (
            audit.SYSTEM if actor is None else audit.Actor(identity=actor.identity, role=actor.role)
        )
        log.append(who, action, subjects, details, connection=session)

    return sink


class SuperLinkAudit:
    """The SuperLink's audit log, attached to ``state`` (its only writer)."""

    def __init__(self, state: State, settings: AuditSettings, *, data_dir: Path) -> None:
        key_path = settings.key or data_dir / "audit.key"
        if settings.key is None:
            key, created = load_or_create_signing_key(key_path)
            if created:
                _log.info("audit key created", path=str(key_path))
        else:
            key = load_signing_key(key_path)
        self.log = audit.AuditLog(
            state.writer_engine,
            signer=audit.NoteSigner(name=settings.origin, private_key=key),
            clock=lambda: datetime.now(UTC),
            origin=settings.origin,
            checkpoint_every=settings.checkpoint_every,
        )
        self._check_stored_key()
        self.vkey_path = data_dir / "audit.vkey"
        self.vkey_path.write_text(self.log.verifier_key.encode() + "\n", encoding="utf-8")
        self._state = state
        self._interval_s = settings.checkpoint_interval_s
        self._last_signed = time.monotonic()
        self._lock = threading.Lock()
        self._proofs: dict[tuple[int, int], tuple[bytes, ...]] = {}
        self._every = settings.checkpoint_every
        self._signed = 0  # tree heads signed by sign_now: a new one may exist
        self._latest: tuple[tuple[int, int], float, TreeHead | None] | None = None
        state.attach_audit(sink_for(self.log))
        _log.info("audit log open", vkey=self.log.verifier_key.encode(), size=self.log.size)

    def _check_stored_key(self) -> None:
        with self.log.engine.connect() as conn:
            row = latest_checkpoint(conn, 2**63 - 1)
        ours = self.log.verifier_key
        if row is not None and row.signer_vkey != ours.encode():
            stored = audit.parse_verifier_key(row.signer_vkey)
            raise audit.AuditUsageError(
                f"the audit log in this database is signed by {stored.name}+"
                f"{stored.key_id.hex()}, not by the audit key given ({ours.name}+"
                f"{ours.key_id.hex()}); start with the log's key and origin"
            )

    @property
    def verifier_key(self) -> audit.VerifierKey:
        return self.log.verifier_key

    # -- entries without a state change ------------------------------------------------

    def refused(self, refusal: Refusal) -> None:
        """Record a refused call (``auth.refused``); never raises into the interceptor."""
        try:
            self._state.record_audit(
                "auth.refused",
                subjects={},
                details={
                    "method": refusal.method,
                    "peer": refusal.peer,
                    "code": refusal.code.name,
                    "reason": refusal.reason,
                    "message": refusal.message,
                },
            )
        except Exception as exc:  # the call is refused either way
            _log.error("auth.refused not recorded", error=str(exc), method=refusal.method)

    # -- tree heads ----------------------------------------------------------------------

    def sign_now(self) -> TreeHead:
        """Sign a tree head at the current size (idempotent per size)."""
        note = self.log.checkpoint()
        with self._lock:
            self._last_signed = time.monotonic()
            self._signed += 1
        return TreeHead(size=audit.parse_checkpoint(_text(note)).size, note=note)

    def sign_if_due(self) -> None:
        """Sign when entries have waited ``checkpoint_interval_s`` without a tree head."""
        head = self.latest()
        if head is not None and head.size >= self.log.size:
            return
        with self._lock:
            due = time.monotonic() - self._last_signed >= self._interval_s
        if due:
            self.sign_now()

    def latest(self) -> TreeHead | None:
        """The largest stored tree head (also those signed inside appends, every 1000).

        Every message a node pulls carries it, so it is remembered until a new one
        can exist: one signed here, or the log crossing a multiple of
        ``checkpoint_every``; and read again at least every second (a tree head
        stored by another writer, such as an archive cut, shows then).
        """
        now = time.monotonic()
        with self._lock:
            key = (self._signed, self.log.size // self._every)
            memo = self._latest
        if memo is not None and memo[0] == key and now - memo[1] < _LATEST_TTL_S:
            return memo[2]
        with self.log.engine.connect() as conn:
            row = latest_checkpoint(conn, 2**63 - 1)
        head = None if row is None else TreeHead(size=row.tree_size, note=row.note)
        with self._lock:
            self._latest = (key, now, head)
        return head

    def consistency(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """The RFC 9162 proof from ``old_size`` to ``new_size`` (cached per pair)."""
        if old_size == 0 or old_size == new_size:
            return ()
        key = (old_size, new_size)
        with self._lock:
            cached = self._proofs.get(key)
        if cached is not None:
            return cached
        hashes = self.log.consistency_proof(old_size, new_size).hashes
        with self._lock:
            if len(self._proofs) >= _PROOF_CACHE:
                self._proofs.clear()
            self._proofs[key] = hashes
        return hashes

    def add_cosignature(self, tree_size: int, signature_line: str, witness_vkey: str) -> str:
        """Verify and store a site's cosignature; returns the witness key's name.

        Raises:
            audit.AuditError: malformed key or line, unknown tree head, bad signature.
        """
        key = audit.parse_verifier_key(witness_vkey)
        self.log.add_cosignature(tree_size, signature_line, key)
        return key.name

    def close(self) -> None:
        """Sign a last tree head; no entries after this."""
        self.log.close()


def _text(note: str) -> str:
    return parse_note(note).text

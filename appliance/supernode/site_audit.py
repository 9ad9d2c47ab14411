"""A site's own audit log, and the site as a witness of the SuperLink's log.

Every SuperNode keeps, in ``DATA_DIR/audit/site-audit.db`` (SQLite), an
:class:`audit.AuditLog` of what crossed its boundary, in the shapes
``audit.reconcile`` relies on (docs/audit.md, "Entries the runtime writes"):

* ``message.received`` - an instruction was pulled and admitted for the ClientApp;
* ``policy.refused`` - site policy (or a bad SuperLink tree head) refused it;
* ``egress.reply`` - written **before** a reply's bytes leave: no entry, no send;
* ``checkpoint.seen`` - a SuperLink tree head the site had not seen, verbatim,
  with the site's cosignature when it extends the last one the site cosigned.

The SuperLink's audit key is pinned: ``--superlink-audit-key``, or on first
contact (trust on first use, written to ``DATA_DIR/audit/superlink.vkey``);
a SuperLink that later presents another key is refused. A tree head that is
smaller than, or not consistent with, the one the site cosigned means the
SuperLink's log was rolled back or forked: the site records it and refuses
work until an operator looks.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import audit
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import MetricRecord
from appliance.transport import witness_key_name
from audit.note import KeyType, parse_note
from certs import load_or_create_signing_key
from dp.spend import PrivacySpend

__all__ = ["SiteAudit", "TreeHeadRefused"]

_log = get_logger("appliance.supernode.audit")
DB_NAME = "site-audit.db"


class TreeHeadRefused(Exception):
    """The SuperLink's tree head is not one this site can accept (key, rollback, fork)."""


@dataclass(frozen=True)
class Cosignature:
    """A cosignature to send to the SuperLink."""

    tree_size: int
    signature_line: str
    witness_vkey: str


def _now() -> datetime:
    return datetime.now(UTC)


def _pin(path: Path, offered: str, configured: audit.VerifierKey | None) -> audit.VerifierKey:
    """The SuperLink audit key to trust: the configured one, else the pinned, else ``offered``."""
    try:
        key = audit.parse_verifier_key(offered)
    except audit.AuditError as exc:
        raise TreeHeadRefused(f"the SuperLink offered a malformed audit key: {exc}") from None
    if configured is not None:
        trusted = configured
    elif path.exists():
        trusted = audit.parse_verifier_key(path.read_text(encoding="utf-8").strip())
    else:
        path.write_text(key.encode() + "\n", encoding="utf-8")
        _log.warning(
            "SuperLink audit key trusted on first use; pin it with --superlink-audit-key",
            vkey=key.encode(),
        )
        return key
    if key != trusted:
        raise TreeHeadRefused(
            f"the SuperLink's audit key {key.name}+{key.key_id.hex()} is not the trusted "
            f"{trusted.name}+{trusted.key_id.hex()}"
        )
    return trusted


class SiteAudit:
    """The site log of one SuperNode (thread-safe)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        node_name: str,
        superlink_vkey: str,
        configured_superlink_key: audit.VerifierKey | None = None,
    ) -> None:
        directory = data_dir / "audit"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = witness_key_name(node_name)
        log_key, _ = load_or_create_signing_key(directory / "site-audit.key")
        witness_key, _ = load_or_create_signing_key(directory / "witness.key")
        self.log = audit.AuditLog(
            audit.open_sqlite(_touch(directory / DB_NAME), read_only=False),
            signer=audit.NoteSigner(name=f"{name}-site-log", private_key=log_key),
            clock=_now,
            checkpoint_every=1000,
        )
        (directory / "site-audit.vkey").write_text(
            self.log.verifier_key.encode() + "\n", encoding="utf-8"
        )
        link_key = _pin(directory / "superlink.vkey", superlink_vkey, configured_superlink_key)
        self._witness = audit.Witness(
            signer=audit.NoteSigner(
                name=name, private_key=witness_key, key_type=KeyType.COSIGNATURE_V1
            ),
            log_key=link_key,
            clock=_now,
            last=self._last_cosigned(),
        )
        (directory / "witness.vkey").write_text(
            self._witness.verifier_key.encode() + "\n", encoding="utf-8"
        )
        self._lock = threading.Lock()
        self._signed_size = -1  # the log's size at the last tree head signed here
        self._signed_at = time.monotonic()
        self._seen_note = ""
        self._cosigned_arrival = float("-inf")  # when the cosigned head arrived

    def _last_cosigned(self) -> audit.Checkpoint | None:
        """The largest tree head this site cosigned, from its own log (survives restarts)."""
        last = None
        query = audit.EntryQuery(actions=frozenset({audit.Action.CHECKPOINT_SEEN}))
        for entry in audit.DatabaseSource(self.log.engine).entries(query):
            details = entry.to_json()["details"]
            assert isinstance(details, dict)
            if "cosignature" in details:
                note = str(details["note"])
                checkpoint = audit.parse_checkpoint(parse_note(note).text)
                if last is None or checkpoint.size > last.size:
                    last = checkpoint
        return last

    @property
    def witness_size(self) -> int:
        """Size of the largest SuperLink tree head this site cosigned (0: none)."""
        with self._lock:
            last = self._witness.last
        return 0 if last is None else last.size

    # -- the SuperLink's tree heads -------------------------------------------------------

    def saw_tree_head(
        self, note: str, proof: list[bytes], *, proof_from: int, pulled_at: float
    ) -> Cosignature | None:
        """Record a tree head served with a message; cosign it if it extends the last one.

        Concurrent pulls may deliver tree heads out of order, so a head smaller
        than the one cosigned is *stale* - recorded, not cosigned - when its pull
        started before the larger one arrived, and a *rollback* when it started
        after (the SuperLink then serves an older log than it did before).

        Args:
            note: the signed tree head as served ("" when the SuperLink has none).
            proof: the consistency proof from ``proof_from`` to it.
            proof_from: the :attr:`witness_size` the pull asked the proof from.
            pulled_at: ``time.monotonic()`` when the pull that brought it started.

        Returns:
            The cosignature to send, or None (already seen, stale, or no tree head).

        Raises:
            TreeHeadRefused: it is not signed by the trusted key, or the log was
                rolled back or forked (recorded before raising).
        """
        if not note:
            return None
        with self._lock:
            if note == self._seen_note:
                return None
            last = self._witness.last
            if proof_from != (0 if last is None else last.size):
                # Another pull cosigned a newer head meanwhile; the next pull asks
                # for a proof from that one.
                return None
            try:
                cosigned = self._witness.cosign(note, proof)
            except audit.LogRolledBack as exc:
                if pulled_at < self._cosigned_arrival:
                    self._append_seen(note, problem="stale: delivered out of order")
                    return None
                self._append_seen(note, problem=str(exc))
                raise TreeHeadRefused(f"the SuperLink's audit log is refused: {exc}") from exc
            except audit.AuditError as exc:
                self._append_seen(note, problem=str(exc))
                raise TreeHeadRefused(f"the SuperLink's audit log is refused: {exc}") from exc
            line = cosigned.signature.line()
            self._append_seen(note, cosignature=line)
            self._witness = cosigned.witness
            self._seen_note = note
            self._cosigned_arrival = time.monotonic()
            return Cosignature(
                tree_size=cosigned.checkpoint.size,
                signature_line=line,
                witness_vkey=self._witness.verifier_key.encode(),
            )

    def _append_seen(self, note: str, *, cosignature: str = "", problem: str = "") -> None:
        details = {"note": note}
        if cosignature:
            details["cosignature"] = cosignature
        if problem:
            details["problem"] = problem
        self.log.append(
            audit.SYSTEM,
            audit.Action.CHECKPOINT_SEEN,
            {"origin": self._witness.expected_origin},
            details,
        )

    # -- messages and replies ---------------------------------------------------------------

    def received(
        self,
        message: Message,
        *,
        node_id: int,
        app_sha256: str,
        frame: bytes | bytearray | memoryview,
        sha256: bytes | None = None,
    ) -> None:
        """``message.received``: an instruction admitted for the ClientApp.

        ``sha256`` is the frame's digest when the caller has it already.
        """
        meta = message.metadata
        self.log.append(
            audit.SYSTEM,
            audit.Action.MESSAGE_RECEIVED,
            {"run_id": str(meta.run_id), "message_id": meta.message_id, "node": str(node_id)},
            {
                "message_type": meta.message_type,
                "group_id": meta.group_id,
                "app_sha256": app_sha256,
                "bytes": len(frame),
                "sha256": (sha256 or hashlib.sha256(frame).digest()).hex(),
            },
        )

    def decided(
        self,
        run_id: int,
        *,
        node_id: int,
        accepted: bool,
        manifest_sha256: str,
        policy_sha256: str,
        reason: str = "",
        decided_by: str = "",
    ) -> None:
        """``run.approved`` / ``run.refused``: the site's decision about a run (its receipt).

        The actor is the site administrator for a manual decision, else the system.
        """
        actor = audit.Actor(identity=decided_by, role="site-admin") if decided_by else audit.SYSTEM
        self.log.append(
            actor,
            audit.Action.RUN_APPROVED if accepted else audit.Action.RUN_REFUSED,
            {"run_id": str(run_id), "node": str(node_id)},
            {"manifest_sha256": manifest_sha256, "policy_sha256": policy_sha256, "reason": reason},
        )

    def budget_spent(
        self, run_id: int, *, node_id: int, dataset: str, spend: PrivacySpend, server_round: int
    ) -> None:
        """``budget.spent``: the run's cumulative spend on this site's data after a round
        (written after the ledger committed it, before the ClientApp runs)."""
        self.log.append(
            audit.SYSTEM,
            audit.Action.BUDGET_SPENT,
            {"run_id": str(run_id), "node": str(node_id)},
            {
                "dataset": dataset,
                "unit": spend.unit.value,
                "epsilon": repr(spend.epsilon),  # audit details hold no floats
                "delta": repr(spend.delta),
                "round": server_round,
            },
        )

    def policy_reloaded(self, previous: str, current: str, *, error: str = "") -> None:
        """``policy.reloaded``: the site policy changed on SIGHUP (or stayed: ``error``)."""
        details = {"previous_policy": previous, "policy": current}
        if error:
            details["error"] = error
        self.log.append(audit.SYSTEM, audit.Action.POLICY_RELOADED, {}, details)

    def identity_switched(self, previous: str, current: str) -> None:
        """``node.renewal_completed``: the node now connects with a renewed certificate."""
        self.log.append(
            audit.SYSTEM,
            audit.Action.NODE_RENEWAL_COMPLETED,
            {},
            {"previous_cert_fingerprint": previous, "cert_fingerprint": current},
        )

    def refused(self, message: Message, *, node_id: int, reason: str) -> None:
        """``policy.refused``: a message (or its reply) refused by the site."""
        meta = message.metadata
        self.log.append(
            audit.SYSTEM,
            audit.Action.POLICY_REFUSED,
            {"run_id": str(meta.run_id), "message_id": meta.message_id, "node": str(node_id)},
            {"reason": reason, "message_type": meta.message_type},
        )

    def egress(
        self,
        reply: Message,
        *,
        node_id: int,
        frame: bytes | memoryview,
        sha256: bytes | None = None,
    ) -> None:
        """``egress.reply``: written before the reply's bytes leave (raises: do not send).

        ``sha256`` is the frame's digest when the caller has it already.
        """
        meta = reply.metadata
        records: list[str] = []
        metric_keys: set[str] = set()
        if not reply.has_error():
            records = sorted(reply.content.keys())
            for record in reply.content.values():
                if isinstance(record, MetricRecord):
                    metric_keys.update(record.keys())
        details: dict[str, object] = {
            "sha256": (sha256 or hashlib.sha256(frame).digest()).hex(),
            "bytes": len(frame),
            "records": records,
            "metric_keys": sorted(metric_keys),
            "message_type": meta.message_type,
        }
        if reply.has_error():
            details["error_code"] = int(reply.error.code)
        self.log.append(
            audit.SYSTEM,
            audit.Action.EGRESS_REPLY,
            {
                "run_id": str(meta.run_id),
                "message_id": meta.message_id,
                "request_id": meta.reply_to_message_id,
                "node": str(node_id),
            },
            details,
        )

    def sign_if_due(self, interval_s: float) -> bool:
        """Sign a tree head when entries have waited ``interval_s`` without one.

        So a live export (``greenhouse audit export``) or a compliance check ends,
        at most ``interval_s`` after the last entry, in a signed tree head. Returns
        whether it signed.
        """
        size = self.log.size
        now = time.monotonic()
        with self._lock:
            if size in (0, self._signed_size) or now - self._signed_at < interval_s:
                return False
        self.log.checkpoint()  # idempotent per size: one signed at 1000 entries stays
        with self._lock:  # only now: a failed signature is tried again at the next call
            self._signed_size, self._signed_at = size, now
        return True

    def close(self) -> None:
        """Sign a last tree head of the site log."""
        self.log.close()


def _touch(path: Path) -> Path:
    if not path.exists():
        path.touch(mode=0o600)
    return path

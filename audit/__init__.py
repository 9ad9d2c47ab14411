"""The tamper-evident, append-only audit log (issue 7).

Entries are canonical JSON lines (RFC 8785 subset), hash-chained and the leaves
of an RFC 6962 / RFC 9162 Merkle tree; tree heads are C2SP ``tlog-checkpoint``
signed notes (Ed25519), which witnesses may cosign (C2SP ``tlog-cosignature``).
The log lives in SQLAlchemy tables guarded by append-only triggers; an export
is verified offline with nothing but the log's public key. Byte layouts:
``docs/audit.md``. Imports nothing from ``appliance``.

Example::

    from datetime import UTC, datetime
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlalchemy import create_engine
    import audit

    signer = audit.NoteSigner(name="audit.example.org/superlink",
                              private_key=Ed25519PrivateKey.generate())
    engine = create_engine("sqlite:///state.db")
    with audit.AuditLog(engine, signer=signer, clock=lambda: datetime.now(UTC)) as log:
        alice = audit.Actor(identity="CN=alice,O=Hospital A", role="data-scientist")
        log.append(alice, audit.Action.RUN_SUBMITTED, {"run_id": "r-1"}, {"rounds": 5})
        with engine.begin() as conn:          # entry commits with the state change
            ...                                # e.g. conn.execute(update(runs)...)
            log.append(audit.SYSTEM, "run.started", {"run_id": "r-1"}, connection=conn)
    audit.export(engine, "export-dir")
    report = audit.verify_export("export-dir", signer.verifier_key().encode())

Retention, witnesses and reconciliation::

    audit.archive(log, before=datetime(2025, 1, 1, tzinfo=UTC), out_dir="archive-2024")
    audit.verify_chain(["archive-2024", "export-dir"], signer.verifier_key())
    witness = audit.Witness(signer=site_witness_key, log_key=superlink_vkey, clock=clock)
    cosigned = witness.cosign(note_text, proof)      # raises LogRolledBack / LogForked
    report = audit.reconcile("site-export", "link-export", site_key=..., link_key=...)
"""

from __future__ import annotations

from audit.archive import ArchiveSummary, archive
from audit.canonical import canonical_json
from audit.chain import ChainReport, check_chain, verify_chain
from audit.checkpoint import (
    Checkpoint,
    Cosignature,
    VerifiedCheckpoint,
    cosign_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from audit.entry import (
    SYSTEM,
    Action,
    Actor,
    Entry,
    encode_entry,
    entry_leaf_hash,
    parse_entry,
)
from audit.errors import (
    AppendFailed,
    AuditError,
    AuditUsageError,
    BadSignature,
    CanonicalJSONError,
    ChainBroken,
    ExportFailed,
    InconsistentCheckpoints,
    LogForked,
    LogRolledBack,
    MalformedEntry,
    MalformedNote,
    ProofError,
    ReconcileFailed,
    SegmentBroken,
    TreeMismatch,
    TruncatedLog,
    UnsignedEntries,
    VerificationError,
)
from audit.export import ExportSummary, export
from audit.log import AuditLog, Clock
from audit.note import KeyType, Note, NoteSignature, NoteSigner, VerifierKey, parse_verifier_key
from audit.proofs import ConsistencyProof, InclusionProof
from audit.query import (
    DatabaseSource,
    EntryQuery,
    EntrySource,
    ExportSource,
    open_source,
    open_sqlite,
)
from audit.reconcile import Finding, FindingKind, ReconcileReport, reconcile
from audit.segment import Segment
from audit.tree import (
    EMPTY_ROOT,
    CompactRange,
    MerkleLevels,
    TreeBuilder,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from audit.verify import (
    CheckpointReport,
    ExportReport,
    Problem,
    ProblemKind,
    check_export,
    verify_export,
)
from audit.witness import Cosigned, Witness

__all__ = [
    "EMPTY_ROOT",
    "SYSTEM",
    "Action",
    "Actor",
    "AppendFailed",
    "ArchiveSummary",
    "AuditError",
    "AuditLog",
    "AuditUsageError",
    "BadSignature",
    "CanonicalJSONError",
    "ChainBroken",
    "ChainReport",
    "Checkpoint",
    "CheckpointReport",
    "Clock",
    "CompactRange",
    "ConsistencyProof",
    "Cosignature",
    "Cosigned",
    "DatabaseSource",
    "Entry",
    "EntryQuery",
    "EntrySource",
    "ExportFailed",
    "ExportReport",
    "ExportSource",
    "ExportSummary",
    "Finding",
    "FindingKind",
    "InclusionProof",
    "InconsistentCheckpoints",
    "KeyType",
    "LogForked",
    "LogRolledBack",
    "MalformedEntry",
    "MalformedNote",
    "MerkleLevels",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "Problem",
    "ProblemKind",
    "ProofError",
    "ReconcileFailed",
    "ReconcileReport",
    "Segment",
    "SegmentBroken",
    "TreeBuilder",
    "TreeMismatch",
    "TruncatedLog",
    "UnsignedEntries",
    "VerificationError",
    "VerifiedCheckpoint",
    "VerifierKey",
    "Witness",
    "archive",
    "canonical_json",
    "check_chain",
    "check_export",
    "cosign_checkpoint",
    "encode_entry",
    "entry_leaf_hash",
    "export",
    "leaf_hash",
    "node_hash",
    "open_source",
    "open_sqlite",
    "parse_checkpoint",
    "parse_entry",
    "parse_verifier_key",
    "reconcile",
    "sign_checkpoint",
    "verify_chain",
    "verify_checkpoint",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
]

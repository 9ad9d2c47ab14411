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
"""

from __future__ import annotations

from audit.canonical import canonical_json
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
    MalformedEntry,
    MalformedNote,
    ProofError,
    TreeMismatch,
    TruncatedLog,
    UnsignedEntries,
    VerificationError,
)
from audit.export import ExportSummary, export
from audit.log import AuditLog, Clock
from audit.note import KeyType, Note, NoteSignature, NoteSigner, VerifierKey, parse_verifier_key
from audit.proofs import ConsistencyProof, InclusionProof
from audit.tree import (
    EMPTY_ROOT,
    CompactRange,
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

__all__ = [
    "EMPTY_ROOT",
    "SYSTEM",
    "Action",
    "Actor",
    "AppendFailed",
    "AuditError",
    "AuditLog",
    "AuditUsageError",
    "BadSignature",
    "CanonicalJSONError",
    "ChainBroken",
    "Checkpoint",
    "CheckpointReport",
    "Clock",
    "CompactRange",
    "ConsistencyProof",
    "Cosignature",
    "Entry",
    "ExportFailed",
    "ExportReport",
    "ExportSummary",
    "InclusionProof",
    "InconsistentCheckpoints",
    "KeyType",
    "MalformedEntry",
    "MalformedNote",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "Problem",
    "ProblemKind",
    "ProofError",
    "TreeBuilder",
    "TreeMismatch",
    "TruncatedLog",
    "UnsignedEntries",
    "VerificationError",
    "VerifiedCheckpoint",
    "VerifierKey",
    "canonical_json",
    "check_export",
    "cosign_checkpoint",
    "encode_entry",
    "entry_leaf_hash",
    "export",
    "leaf_hash",
    "node_hash",
    "parse_checkpoint",
    "parse_entry",
    "parse_verifier_key",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
]

"""The SuperLink's persistent state: nodes, runs, bundles, messages, run logs, events.

Storage only: this package imports no gRPC and no SuperLink/SuperNode code. It
keeps rows in SQLAlchemy 2 tables (SQLite in WAL mode by default, PostgreSQL via
psycopg 3 for HA) and bodies in a content-addressed :class:`BlobStore`, so no
process holds nodes x model bytes in memory. See ``docs/state.md`` for the
schema, the run and message state machines and the restart rules.

Example::

    from pathlib import Path
    from appliance.state import State

    with State.open(data_dir=Path("/var/lib/greenhouse")) as state:   # sqlite default
        state.recover_after_restart()          # in-flight runs -> failed
        node = state.enrol_node("hospital-a", cert_fp, key_fp, enrolled_by="admin")
        bundle = state.put_bundle(chunks, max_bytes=64 << 20)
        run = state.create_run("alice", bundle.sha256, {"lr": 0.1}, {})
        for status in ("starting", "running"):
            state.transition_run(run.run_id, status)
        body = state.blobs.put_stream(body_chunks, max_bytes=1 << 30)
        state.queue_message(metadata, body)    # ServerApp -> node
        for msg in state.queued_for_node(node.node_id, limit=10):
            state.mark_delivered(msg.message_id, node.node_id)
"""

from __future__ import annotations

from appliance.state._artifacts import ArtifactNotFound
from appliance.state.audit_sink import AuditActor, AuditSink
from appliance.state.blobs import DEFAULT_CHUNK_BYTES, BlobStore
from appliance.state.errors import (
    AlreadyDelivered,
    AlreadyReplied,
    AuditFailed,
    BlobError,
    BlobNotFound,
    BlobTooLarge,
    BundleNotFound,
    Conflict,
    DuplicateMessage,
    InvalidArgument,
    InvalidTransition,
    MessageExpired,
    MessageNotFound,
    NodeAlreadyEnrolled,
    NodeNotFound,
    NotAddressedToNode,
    NotDeliveredToNode,
    NotFound,
    RunNotFound,
    RunNotRunning,
    StateError,
    StorageError,
    WrongRun,
)
from appliance.state.repository import DEFAULT_DB_NAME, RESTART_REASON, State, default_url
from appliance.state.values import (
    Artifact,
    BlobRef,
    BundleRef,
    Enrolment,
    Event,
    LogLine,
    LogStream,
    MessageStatus,
    Node,
    Recovery,
    Run,
    RunPrivacy,
    RunStatus,
    StoredMessage,
    StoredReceipt,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_DB_NAME",
    "RESTART_REASON",
    "AlreadyDelivered",
    "AlreadyReplied",
    "Artifact",
    "ArtifactNotFound",
    "AuditActor",
    "AuditFailed",
    "AuditSink",
    "BlobError",
    "BlobNotFound",
    "BlobRef",
    "BlobStore",
    "BlobTooLarge",
    "BundleNotFound",
    "BundleRef",
    "Conflict",
    "DuplicateMessage",
    "Enrolment",
    "Event",
    "InvalidArgument",
    "InvalidTransition",
    "LogLine",
    "LogStream",
    "MessageExpired",
    "MessageNotFound",
    "MessageStatus",
    "Node",
    "NodeAlreadyEnrolled",
    "NodeNotFound",
    "NotAddressedToNode",
    "NotDeliveredToNode",
    "NotFound",
    "Recovery",
    "Run",
    "RunNotFound",
    "RunNotRunning",
    "RunPrivacy",
    "RunStatus",
    "State",
    "StateError",
    "StorageError",
    "StoredMessage",
    "StoredReceipt",
    "WrongRun",
    "default_url",
]

"""SQLAlchemy 2 table definitions for the SuperLink's state.

Only portable column types are used, so the same schema works on SQLite and on
PostgreSQL (through psycopg 3). Conventions:

* timestamps are unix seconds in ``Double`` columns (injected by the caller's clock);
* node and run ids are unsigned 64-bit on the wire but always ``< 2**63`` here, so
  they fit a signed ``BIGINT``;
* JSON (run config, options, event details) is canonical JSON text in ``Text``;
* bodies are never stored in a row: a message or bundle points at a blob in the
  content-addressed :class:`~appliance.state.blobs.BlobStore` by SHA-256.

The hot queries each have an index: queued requests per destination node, a
request's reply (``reply_to_message_id``, unique, which also enforces "answered at
most once"), replies per run, and expiry sweeps by ``(status, expires_at)``.

This module holds no logic; ``appliance.state`` reads and writes these tables and
returns frozen records, never these ORM classes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "BundleRow",
    "EventRow",
    "MessageRow",
    "NodeRenewalRow",
    "NodeRow",
    "ReceiptRow",
    "RunLogRow",
    "RunPrivacyRow",
    "RunRow",
    "SettingRow",
]

#: Bumped when a table changes; ``State.open`` refuses a database written by a newer version.
SCHEMA_VERSION = 1

# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; BIGINT elsewhere.
_AUTO_ID = BigInteger().with_variant(Integer(), "sqlite")
_ID = String(128)
_SHA256 = String(64)


class Base(DeclarativeBase):
    """Declarative base of the state tables."""


class SettingRow(Base):
    """Internal key/value settings (``schema_version``)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Double)


class NodeRow(Base):
    """An enrolled SuperNode."""

    __tablename__ = "nodes"

    node_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    cert_fingerprint: Mapped[str] = mapped_column(_SHA256, unique=True)
    signing_key_fingerprint: Mapped[str] = mapped_column(_SHA256)
    enrolled_at: Mapped[float] = mapped_column(Double)
    enrolled_by: Mapped[str] = mapped_column(String(256))
    last_seen_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class NodeRenewalRow(Base):
    """A node's next certificate, staged by ``node renew``: accepted beside the enrolled
    one until the node first says Hello with it, which makes it the enrolled one."""

    __tablename__ = "node_renewals"

    node_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("nodes.node_id", ondelete="CASCADE"), primary_key=True
    )
    cert_fingerprint: Mapped[str] = mapped_column(_SHA256, unique=True)
    signing_key_fingerprint: Mapped[str] = mapped_column(_SHA256)
    renewed_at: Mapped[float] = mapped_column(Double)
    renewed_by: Mapped[str] = mapped_column(String(256))


class BundleRow(Base):
    """An app bundle; its bytes are the blob named ``sha256``."""

    __tablename__ = "bundles"

    sha256: Mapped[str] = mapped_column(_SHA256, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)


class RunRow(Base):
    """A run and its status."""

    __tablename__ = "runs"

    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    bundle_sha256: Mapped[str] = mapped_column(_SHA256, ForeignKey("bundles.sha256"))
    run_config: Mapped[str] = mapped_column(Text)
    options: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class MessageRow(Base):
    """A request (ServerApp -> node) or a reply (node -> ServerApp, ``dst_node_id`` 0).

    ``reply_to_message_id`` is NULL for requests; for replies it is unique, so a
    request can never have two replies even under concurrent writers.
    """

    __tablename__ = "messages"

    message_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("runs.run_id", ondelete="CASCADE"))
    src_node_id: Mapped[int] = mapped_column(BigInteger)
    dst_node_id: Mapped[int] = mapped_column(BigInteger)
    reply_to_message_id: Mapped[str | None] = mapped_column(_ID, nullable=True, unique=True)
    group_id: Mapped[str] = mapped_column(_ID)
    message_type: Mapped[str] = mapped_column(String(80))
    ttl: Mapped[float] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16))
    content_sha256: Mapped[str | None] = mapped_column(_SHA256, nullable=True, index=True)
    content_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_messages_dst_status_created", "dst_node_id", "status", "created_at"),
        Index("ix_messages_run_status", "run_id", "status"),
        Index("ix_messages_status_expires", "status", "expires_at"),
    )


class RunLogRow(Base):
    """One line of a run's log; ``seq`` counts from 1 per run."""

    __tablename__ = "run_logs"

    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[float] = mapped_column(Double)
    stream: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)


class EventRow(Base):
    """An operator-relevant event, e.g. ``superlink.insecure`` with its time."""

    __tablename__ = "events"

    event_id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[float] = mapped_column(Double)
    details: Mapped[str] = mapped_column(Text)


class ArtifactRow(Base):
    """A file a run's ServerApp saved (checkpoint, final model, metrics); bytes in the blob store.

    Saving a name again replaces it (``metrics.json`` is rewritten every round).
    """

    __tablename__ = "run_artifacts"

    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)


class ReceiptRow(Base):
    """A site's signed decision about a run (accepted, refused, pending), as received.

    Append-only: a site that first says ``pending`` and later ``accepted`` has two rows.
    """

    __tablename__ = "run_receipts"

    receipt_id: Mapped[int] = mapped_column(_AUTO_ID, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.run_id", ondelete="CASCADE"), index=True
    )
    node_id: Mapped[int] = mapped_column(BigInteger)
    node_name: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    manifest_sha256: Mapped[str] = mapped_column(_SHA256)
    policy_sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(256))
    signed_at: Mapped[float] = mapped_column(Double)
    received_at: Mapped[float] = mapped_column(Double)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class RunPrivacyRow(Base):
    """A run's declared DP plan and its (epsilon, delta): planned, and spent so far."""

    __tablename__ = "run_privacy"

    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    plan: Mapped[str] = mapped_column(Text)  # canonical JSON of the plan's fields
    unit: Mapped[str] = mapped_column(String(16))
    delta: Mapped[float] = mapped_column(Double)
    planned_epsilon: Mapped[float] = mapped_column(Double)
    spent_epsilon: Mapped[float] = mapped_column(Double)
    rounds_done: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Double)

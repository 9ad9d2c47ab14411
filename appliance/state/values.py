"""The frozen records that ``appliance.state`` returns (never ORM objects).

Every value here is a detached snapshot: changing the database later does not
change a record already returned, and a record cannot be used to change the
database. JSON-valued fields (run config, options, event details) are kept as
canonical JSON text and parsed into a fresh ``dict`` on each access, so no caller
can mutate another caller's view.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

from appliance.message import Metadata
from appliance.state.errors import InvalidArgument

__all__ = [
    "BlobRef",
    "BundleRef",
    "Enrolment",
    "Event",
    "LogLine",
    "LogStream",
    "MessageStatus",
    "Node",
    "Recovery",
    "Run",
    "RunPrivacy",
    "RunStatus",
    "StoredMessage",
    "StoredReceipt",
    "check_sha256",
]

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: object, what: str = "sha256") -> str:
    """Return ``value`` if it is a lowercase hex SHA-256 digest.

    Raises:
        InvalidArgument: anything else (also guards blob paths against traversal).
    """
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise InvalidArgument(f"{what} must be 64 lowercase hex characters, got {value!r:.80}")
    return value


class RunStatus(enum.StrEnum):
    """Lifecycle of a run (see ``docs/state.md`` for the state machine)."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def is_terminal(self) -> bool:
        """True for ``finished``, ``failed`` and ``stopped``: no further transition."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED})


class MessageStatus(enum.StrEnum):
    """Lifecycle of a stored message.

    A request (ServerApp -> node) goes ``queued -> delivered -> replied``, or to
    ``expired`` when its TTL runs out first. A reply (node -> ServerApp) is
    ``queued`` until the ServerApp pulls it, then ``delivered``.
    """

    QUEUED = "queued"
    DELIVERED = "delivered"
    REPLIED = "replied"
    EXPIRED = "expired"


class LogStream(enum.StrEnum):
    """Where a run log line came from."""

    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """A blob in the content-addressed store: its SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_sha256(self.sha256)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidArgument(f"blob size must be an int >= 0, got {self.size!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleRef:
    """A stored app bundle (its bytes live in the blob store under ``sha256``)."""

    sha256: str
    size: int
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrolment:
    """Who a node certificate belongs to: the fields that never change while enrolled
    (presence, which does, is in :class:`Node`)."""

    node_id: int
    name: str
    cert_fingerprint: str
    signing_key_fingerprint: str
    #: A renewed certificate staged by ``node renew``, not yet used by the node.
    renewal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """An enrolled SuperNode.

    Attributes:
        node_id: unsigned 64-bit id (always in ``1 .. 2**63 - 1``).
        name: unique site name.
        cert_fingerprint: SHA-256 (hex) of the node certificate's DER encoding.
        signing_key_fingerprint: SHA-256 (hex) of the node's Ed25519 public key.
        enrolled_at: unix seconds.
        enrolled_by: identity name of the federation admin who enrolled it.
        last_seen_at: unix seconds of the last RPC, or ``None`` if never seen.
        online: whether the node currently holds a session.
        renewal_cert_fingerprint: the renewed certificate staged by ``node renew``
            (accepted too until the node first uses it), or ``None``.
    """

    node_id: int
    name: str
    cert_fingerprint: str
    signing_key_fingerprint: str
    enrolled_at: float
    enrolled_by: str
    last_seen_at: float | None
    online: bool
    renewal_cert_fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A submitted run.

    Attributes:
        run_id: unsigned 64-bit id (always in ``1 .. 2**63 - 1``).
        owner: identity name of the submitting user.
        bundle_sha256: the app bundle it runs.
        status: current status.
        reason: why it failed or stopped (``None`` otherwise).
        created_at, started_at, finished_at: unix seconds (``None`` until reached);
            ``started_at`` is set on ``running``, ``finished_at`` on a terminal status.
        run_config_json, options_json: canonical JSON text; use :attr:`run_config`
            and :attr:`options` for parsed copies.
    """

    run_id: int
    owner: str
    bundle_sha256: str
    status: RunStatus
    reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    run_config_json: str = field(repr=False)
    options_json: str = field(repr=False)

    @property
    def run_config(self) -> dict[str, Any]:
        """The run config overrides (a fresh copy on each access)."""
        value: dict[str, Any] = json.loads(self.run_config_json)
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The federation options (a fresh copy on each access)."""
        value: dict[str, Any] = json.loads(self.options_json)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A message as stored: routing, status, and a reference to its content blob.

    The body itself stays in the blob store (``content.sha256``); stream it with
    ``State.blobs.open_chunks``. Exactly one of ``content`` and ``error_code`` is
    set on a reply; a request has no error.
    """

    message_id: str
    run_id: int
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    message_type: str
    ttl: float
    created_at: float
    status: MessageStatus
    content: BlobRef | None
    error_code: int | None
    error_reason: str | None
    signature: bytes | None = field(repr=False)
    delivered_at: float | None
    synthetic: bool

    @property
    def is_reply(self) -> bool:
        """True for a reply (node -> ServerApp), False for a request."""
        return self.reply_to_message_id != ""

    @property
    def expires_at(self) -> float:
        """Unix time after which the message must not be delivered or answered."""
        return self.created_at + self.ttl

    def metadata(self) -> Metadata:
        """The message's routing as an :class:`appliance.message.Metadata`."""
        return Metadata(
            run_id=self.run_id,
            message_id=self.message_id,
            src_node_id=self.src_node_id,
            dst_node_id=self.dst_node_id,
            reply_to_message_id=self.reply_to_message_id,
            group_id=self.group_id,
            message_type=self.message_type,
            ttl=self.ttl,
            created_at=self.created_at,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    """A file a run saved: its name, and its bytes' SHA-256 and size in the blob store."""

    run_id: int
    name: str
    sha256: str
    size: int
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPrivacy:
    """A run's DP plan (as declared) and its privacy spend: planned and so far."""

    run_id: int
    plan_json: str
    unit: str  # "site-level" or "record-level"
    delta: float
    planned_epsilon: float
    spent_epsilon: float
    rounds_done: int
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredReceipt:
    """A site's signed decision about a run, as the SuperLink received and verified it."""

    run_id: int
    node_id: int
    node_name: str
    decision: str  # accepted, refused, pending
    manifest_sha256: str
    policy_sha256: str
    reason: str
    decided_by: str
    signed_at: float  # the signature envelope's time
    received_at: float
    body: bytes  # the receipt's canonical JSON, as signed
    signature: bytes  # the node's envelope over ``body``


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    """One line (or chunk) of a run's log; ``seq`` starts at 1 per run."""

    run_id: int
    seq: int
    created_at: float
    stream: LogStream
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A recorded operator-relevant event (e.g. ``superlink.insecure``)."""

    event_id: int
    kind: str
    created_at: float
    details_json: str = field(repr=False)

    @property
    def details(self) -> dict[str, Any]:
        """The event's details (a fresh copy on each access)."""
        value: dict[str, Any] = json.loads(self.details_json)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What ``State.recover_after_restart`` changed."""

    failed_run_ids: tuple[int, ...]
    nodes_marked_offline: int

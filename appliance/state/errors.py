"""The exceptions raised by the SuperLink's state (``appliance.state``).

Everything derives from :class:`StateError`, itself an
:class:`~appliance.errors.ApplianceError`. Three families keep causes apart:

* :class:`InvalidArgument` -- caller misuse (a malformed fingerprint, a request
  passed where a reply was expected). Also a ``ValueError``.
* :class:`NotFound` and :class:`Conflict` -- the request is well-formed but the
  stored state does not allow it (unknown run, reply from the wrong node, illegal
  status transition). The SuperLink maps these to gRPC ``NOT_FOUND`` /
  ``FAILED_PRECONDITION`` in its one error catalog.
* :class:`StorageError` and :class:`BlobError` -- the environment failed (database
  unreachable, disk full, a blob corrupted on disk) or a blob was refused.

Messages name ids, statuses and nodes; they never contain message bodies, keys,
signatures or database passwords.
"""

from __future__ import annotations

from appliance.errors import ApplianceError

__all__ = [
    "AlreadyDelivered",
    "AlreadyReplied",
    "AuditFailed",
    "BlobError",
    "BlobNotFound",
    "BlobTooLarge",
    "BundleNotFound",
    "Conflict",
    "DuplicateMessage",
    "InvalidArgument",
    "InvalidTransition",
    "MessageExpired",
    "MessageNotFound",
    "NodeAlreadyEnrolled",
    "NodeNotFound",
    "NotAddressedToNode",
    "NotDeliveredToNode",
    "NotFound",
    "RunNotFound",
    "RunNotRunning",
    "StateError",
    "StorageError",
    "WrongRun",
]


class StateError(ApplianceError):
    """Root of every error raised by ``appliance.state``."""


class InvalidArgument(StateError, ValueError):
    """The caller passed a malformed value (caller misuse, not stored state)."""


class StorageError(StateError):
    """The database failed (unreachable, locked too long, disk full, newer schema)."""


class AuditFailed(StorageError):
    """A change's audit entry could not be written, so the change was rolled back."""


# -- not found ----------------------------------------------------------------------------


class NotFound(StateError):
    """A record does not exist.

    Attributes:
        kind: what was looked up (``"run"``, ``"node"``, ``"message"``, ``"bundle"``).
        key: the id, name or digest that was looked up.
    """

    kind = "record"

    def __init__(self, key: object, detail: str = "") -> None:
        self.key = key
        message = f"{self.kind} {key} not found"
        super().__init__(f"{message}: {detail}" if detail else message)


class RunNotFound(NotFound):
    """No run has this id."""

    kind = "run"


class NodeNotFound(NotFound):
    """No node has this id or name."""

    kind = "node"


class MessageNotFound(NotFound):
    """No message has this id."""

    kind = "message"


class BundleNotFound(NotFound):
    """No app bundle has this SHA-256."""

    kind = "bundle"


# -- conflicts with stored state ----------------------------------------------------------


class Conflict(StateError):
    """The request is well-formed, but the stored state does not allow it."""


class NodeAlreadyEnrolled(Conflict):
    """A node with this name or certificate fingerprint is already enrolled."""


class InvalidTransition(Conflict):
    """A run status change that the run state machine does not allow.

    Attributes:
        run_id: the run.
        current: its status (a ``RunStatus`` value).
        requested: the status that was asked for.
    """

    def __init__(self, run_id: int, current: str, requested: str) -> None:
        self.run_id = run_id
        self.current = current
        self.requested = requested
        super().__init__(f"run {run_id} cannot go from {current} to {requested}")


class RunNotRunning(Conflict):
    """Messages can only be queued, delivered or answered while their run is running."""


class DuplicateMessage(Conflict):
    """A message with this id already exists."""


class AlreadyDelivered(Conflict):
    """The message was already handed out; it is delivered at most once."""


class AlreadyReplied(Conflict):
    """The request already has a reply; it is answered at most once."""


class NotAddressedToNode(Conflict):
    """The message is addressed to another node."""


class NotDeliveredToNode(Conflict):
    """A reply names a request that was not delivered to the replying node."""


class WrongRun(Conflict):
    """A reply claims a different run than the request it answers."""


class MessageExpired(Conflict):
    """The message's TTL ran out; it can no longer be delivered or answered."""


# -- blobs ----------------------------------------------------------------------------------


class BlobError(StateError):
    """The blob store refused or failed an operation (also wraps ``OSError``)."""


class BlobTooLarge(BlobError):
    """More bytes arrived than the caller allowed; nothing was stored."""


class BlobNotFound(BlobError):
    """No blob has this SHA-256."""

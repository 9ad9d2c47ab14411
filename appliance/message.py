"""Messages: what the ServerApp and the ClientApps exchange.

A :class:`Message` is routing :class:`Metadata` plus either content (a
:class:`~appliance.records.RecordDict`) or an :class:`Error`. New messages are made
by the ServerApp (usually through ``Grid.create_message``); a reply is made with
``Message(content, reply_to=msg)`` or ``Message(Error(...), reply_to=msg)`` and
inherits its routing from the message it answers.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
import uuid
from dataclasses import dataclass

from appliance.records import RecordDict, check_utf8

__all__ = [
    "DEFAULT_TTL_S",
    "SERVER_NODE_ID",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "check_message_type",
]

#: The node id that stands for the server side (SuperLink / ServerApp).
SERVER_NODE_ID = 0
#: Default time-to-live of a message, in seconds.
DEFAULT_TTL_S = 12 * 3600.0
MAX_REASON_CHARS = 4096
_UINT64_MAX = 2**64 - 1


class MessageType(enum.StrEnum):
    """The kinds of work a message asks for (optionally suffixed ``.<action>``)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"
    SYSTEM = "system"


_MESSAGE_TYPE = re.compile(
    r"^(train|evaluate|query)(\.[a-z0-9][a-z0-9_-]{0,63})?$|^system\.[a-z0-9][a-z0-9_.-]{0,63}$"
)


def check_message_type(message_type: str) -> str:
    """Return ``message_type`` if valid, else raise ``ValueError``.

    Valid types are ``train``, ``evaluate`` and ``query`` (each optionally followed
    by ``.<action>``, e.g. ``train.secagg``) and ``system.<action>``.
    """
    if not isinstance(message_type, str):
        raise TypeError(f"message_type must be str, got {type(message_type).__name__}")
    if not _MESSAGE_TYPE.fullmatch(message_type):
        raise ValueError(
            f"invalid message_type {message_type!r}: expected train, evaluate or query "
            "(optionally '.<action>') or 'system.<action>'"
        )
    return message_type


class ErrorCode(enum.IntEnum):
    """Error codes carried in error replies."""

    UNKNOWN = 0
    CLIENT_APP_RAISED_EXCEPTION = 1
    UNKNOWN_MESSAGE_TYPE = 2
    INVALID_REPLY = 3
    MESSAGE_EXPIRED = 4
    NODE_UNAVAILABLE = 5
    POLICY_REFUSED = 6
    LOAD_CLIENT_APP_FAILED = 7
    CLIENT_APP_CRASHED = 8
    RUN_NOT_RUNNING = 9


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply's payload: a numeric code and a human-readable reason."""

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise TypeError(f"Error.code must be int, got {type(self.code).__name__}")
        if not -(2**63) <= self.code < 2**63:
            raise ValueError(f"Error.code {self.code} does not fit in 64 bits")
        if not isinstance(self.reason, str):
            raise TypeError(f"Error.reason must be str, got {type(self.reason).__name__}")
        check_utf8("Error.reason", self.reason)
        if len(self.reason) > MAX_REASON_CHARS:
            object.__setattr__(self, "reason", self.reason[: MAX_REASON_CHARS - 3] + "...")


def _check_node_id(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"{name} must be an unsigned 64-bit integer, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """Routing and lifetime of a message."""

    run_id: int
    message_id: str
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    message_type: str
    ttl: float
    created_at: float

    def __post_init__(self) -> None:
        for name in ("run_id", "src_node_id", "dst_node_id"):
            _check_node_id(name, getattr(self, name))
        for name in ("message_id", "reply_to_message_id", "group_id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, got {type(value).__name__}")
            check_utf8(name, value)
            if len(value) > 128:
                raise ValueError(f"{name} is longer than 128 characters")
        check_message_type(self.message_type)
        for name in ("ttl", "created_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")

    @property
    def expires_at(self) -> float:
        """Unix time after which the message must not be delivered or answered."""
        return self.created_at + self.ttl


def _new_message_id() -> str:
    return uuid.uuid4().hex


class Message:
    """A message between the ServerApp and a ClientApp.

    Three ways to make one::

        Message(content, dst_node_id=7, message_type="train")   # a new message
        Message(content, reply_to=msg)                            # a reply
        Message(Error(code, reason), reply_to=msg)                # an error reply

    Args:
        body: a ``RecordDict`` (content) or an ``Error``.
        dst_node_id: destination node (new messages only).
        message_type: ``train``, ``evaluate``, ``query`` or ``system.*`` (new messages only).
        group_id: groups the messages of one round (new messages only).
        ttl: seconds until the message expires; a reply gets what is left of its request's.
        reply_to: the message this one answers.

    Raises:
        TypeError, ValueError: the body or a routing field is invalid.
    """

    __slots__ = ("_content", "_error", "_metadata")

    def __init__(
        self,
        body: RecordDict | Error,
        dst_node_id: int | None = None,
        message_type: str | None = None,
        *,
        group_id: str = "",
        ttl: float | None = None,
        reply_to: Message | None = None,
    ) -> None:
        if isinstance(body, RecordDict):
            self._content: RecordDict | None = body
            self._error: Error | None = None
        elif isinstance(body, Error):
            self._content, self._error = None, body
        else:
            raise TypeError(
                f"Message body must be a RecordDict or an Error, got {type(body).__name__}"
            )
        now = time.time()
        if reply_to is not None:
            if dst_node_id is not None or message_type is not None or group_id:
                raise ValueError("a reply takes its routing from reply_to; do not set it as well")
            request = reply_to.metadata
            remaining = max(request.expires_at - now, 0.0)
            self._metadata = Metadata(
                run_id=request.run_id,
                message_id=_new_message_id(),
                src_node_id=request.dst_node_id,
                dst_node_id=request.src_node_id,
                reply_to_message_id=request.message_id,
                group_id=request.group_id,
                message_type=request.message_type,
                ttl=remaining if ttl is None else min(ttl, remaining),
                created_at=now,
            )
            return
        if self._error is not None:
            raise ValueError("an Error body is only valid in a reply (pass reply_to=)")
        if dst_node_id is None or message_type is None:
            raise ValueError("a new message needs dst_node_id and message_type")
        self._metadata = Metadata(
            run_id=0,
            message_id=_new_message_id(),
            src_node_id=0,
            dst_node_id=dst_node_id,
            reply_to_message_id="",
            group_id=group_id,
            message_type=message_type,
            ttl=DEFAULT_TTL_S if ttl is None else ttl,
            created_at=now,
        )

    @classmethod
    def from_parts(cls, metadata: Metadata, body: RecordDict | Error) -> Message:
        """Rebuild a message from already-validated parts (used by the wire codec)."""
        msg = cls.__new__(cls)
        msg._metadata = metadata
        msg._content = body if isinstance(body, RecordDict) else None
        msg._error = body if isinstance(body, Error) else None
        if msg._content is None and msg._error is None:
            raise TypeError(
                f"Message body must be a RecordDict or an Error, got {type(body).__name__}"
            )
        return msg

    def with_metadata(self, **changes: object) -> Message:
        """A copy whose metadata has ``changes`` applied (the body is shared)."""
        body = self._content if self._content is not None else self._error
        assert body is not None
        return Message.from_parts(dataclasses.replace(self._metadata, **changes), body)  # type: ignore[arg-type]

    @property
    def metadata(self) -> Metadata:
        """Routing and lifetime."""
        return self._metadata

    def has_content(self) -> bool:
        """True when the message carries records (not an error)."""
        return self._content is not None

    def has_error(self) -> bool:
        """True when the message is an error reply."""
        return self._error is not None

    @property
    def content(self) -> RecordDict:
        """The records. Raises ``ValueError`` on an error reply."""
        if self._content is None:
            raise ValueError(
                f"message {self._metadata.message_id} is an error reply: {self._error}"
            )
        return self._content

    @property
    def error(self) -> Error:
        """The error. Raises ``ValueError`` when the message has content."""
        if self._error is None:
            raise ValueError(f"message {self._metadata.message_id} has content, not an error")
        return self._error

    def is_expired(self, now: float | None = None) -> bool:
        """Whether the message's TTL has run out."""
        return (time.time() if now is None else now) > self._metadata.expires_at

    def __repr__(self) -> str:
        m = self._metadata
        body = (
            f"content={list(self._content)}"
            if self._content is not None
            else f"error={self._error}"
        )
        return (
            f"Message(type={m.message_type!r}, id={m.message_id}, run={m.run_id}, "
            f"src={m.src_node_id}, dst={m.dst_node_id}, {body})"
        )

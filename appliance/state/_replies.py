"""Replies (node -> ServerApp): answer a delivered request once, then hand to the ServerApp.

Guarantees: a request is answered at most once (status check under a row lock,
backed by the unique index on ``reply_to_message_id``), only by the node it was
delivered to, within the same run and before its TTL runs out. A reply is
``queued`` for the ServerApp (``dst_node_id`` 0) until ``mark_replies_delivered``,
which also deletes its body unless something else still needs the same bytes: a
delivered reply is never handed out again, and keeping every round's replies would
grow the data dir by nodes x model per round for as long as the run lasts.
Verifying the node's signature is the SuperLink's job; the signature is kept with
the reply so every answer stays attributable.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update

from appliance.message import SERVER_NODE_ID, Metadata
from appliance.state._messages import (
    DELIVERED,
    EXPIRED,
    MESSAGES,
    QUEUED,
    REPLIED,
    RUNS,
    MessageStore,
    blobs_in_use,
    check_running,
    in_chunks,
    insert_messages,
    lock_message,
    message_from_row,
    row_for,
    set_status,
)
from appliance.state._runs import clip_reason
from appliance.state._store import check_id, check_key_text
from appliance.state.audit_sink import AuditActor
from appliance.state.errors import (
    AlreadyReplied,
    DuplicateMessage,
    InvalidArgument,
    MessageExpired,
    NotDeliveredToNode,
    RunNotFound,
    WrongRun,
)
from appliance.state.models import MessageRow, RunRow
from appliance.state.values import BlobRef, StoredMessage

#: Longest accepted node signature (a signed envelope) over a reply, in bytes.
MAX_SIGNATURE_BYTES = 4096
#: The audited hash of a reply without content (an error reply): SHA-256 of no bytes.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_M = MESSAGES.c
_RUN_EXISTS = select(RUNS.c.run_id).where(RUNS.c.run_id == bindparam("run"))
# The rows a new reply would clash with: the request's answer, or the reply's own id.
_CLASHES = select(_M.message_id, _M.reply_to_message_id).where(
    or_(_M.reply_to_message_id == bindparam("to"), _M.message_id == bindparam("id"))
)
_REPLIES_FOR = select(MESSAGES).where(
    _M.run_id == bindparam("run"),
    _M.reply_to_message_id.in_(bindparam("ids", expanding=True)),
    _M.status == QUEUED,
)
_MARK_REPLIES_DELIVERED = (
    update(MESSAGES)
    .where(
        _M.message_id.in_(bindparam("ids", expanding=True)),
        _M.reply_to_message_id.is_not(None),
        _M.status == QUEUED,
    )
    .values(status=DELIVERED, delivered_at=bindparam("at"))
)
_DELIVERED_BODIES = (
    select(_M.content_sha256)
    .where(
        _M.message_id.in_(bindparam("ids", expanding=True)),
        _M.reply_to_message_id.is_not(None),
        _M.status == DELIVERED,
        _M.content_sha256.is_not(None),
    )
    .distinct()
)


def _check_run_exists(conn: Connection, run_id: int) -> None:
    if conn.execute(_RUN_EXISTS, {"run": run_id}).first() is None:
        raise RunNotFound(run_id)


class ReplyStore(MessageStore):
    """Reply operations of :class:`~appliance.state.State`."""

    def store_reply(
        self,
        meta: Metadata,
        content: BlobRef | None,
        error: tuple[int, str] | None,
        signature: bytes | None,
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> StoredMessage:
        """Record a node's reply and mark its request ``replied``.

        Audited as ``reply.received`` by ``actor`` (the node) with the SHA-256
        and size of the content - the bytes the site logged as ``egress.reply``
        (see docs/audit.md).

        MUST check that the request exists, is in the same run, was delivered to
        ``meta.src_node_id`` (the authenticated node), has not expired and has not
        been answered yet; then, in the same transaction, mark it replied and queue
        the reply for the ServerApp.

        Args:
            meta: the reply's routing (``reply_to_message_id`` set, ``dst_node_id`` 0,
                ``src_node_id`` the authenticated node).
            content: the reply body, already in the blob store; or ``None``.
            error: ``(code, reason)`` for an error reply; exactly one of ``content``
                and ``error`` must be given.
            signature: the node's signature over the reply, kept with it.
            now: the current time, for the TTL check.

        Returns:
            The stored reply (status ``queued``).

        Raises:
            InvalidArgument: malformed reply (no/both bodies, wrong routing, signature
                too long, content not matching its blob).
            BlobNotFound: ``content`` is not in the blob store.
            MessageNotFound: the request does not exist.
            WrongRun: the request belongs to another run.
            NotDeliveredToNode: the request was not delivered to this node.
            AlreadyReplied: the request already has a reply.
            MessageExpired: the request's TTL ran out.
            RunNotRunning: the run is no longer running.
            DuplicateMessage: the reply's message id is taken.
        """
        self._check_reply_shape(meta, content, error, signature)
        self._check_content(content)
        at = self._now(now)
        request_id = meta.reply_to_message_id
        node_id = meta.src_node_id
        with self._write() as session:
            conn = session.connection()
            request = lock_message(conn, request_id)
            if request.reply_to_message_id is not None:
                raise NotDeliveredToNode(f"message {request_id} is a reply, not a request")
            if request.run_id != meta.run_id:
                raise WrongRun(
                    f"request {request_id} belongs to run {request.run_id}, "
                    f"reply claims run {meta.run_id}"
                )
            if request.dst_node_id != node_id:
                raise NotDeliveredToNode(f"request {request_id} was not sent to node {node_id}")
            if request.status == REPLIED:
                raise AlreadyReplied(f"request {request_id} was already answered")
            if request.status == QUEUED:
                raise NotDeliveredToNode(f"request {request_id} was not delivered yet")
            if request.status == EXPIRED or at > request.expires_at:
                raise MessageExpired(f"request {request_id} expired before its reply")
            check_running(conn, meta.run_id)
            set_status(conn, request_id, REPLIED)
            reply = row_for(meta, QUEUED, content)
            if error is not None:
                reply["error_code"], reply["error_reason"] = int(error[0]), clip_reason(error[1])
            reply["signature"] = None if signature is None else bytes(signature)
            self._insert_reply(conn, reply)
            details: dict[str, object] = {
                "sha256": EMPTY_SHA256 if content is None else content.sha256,
                "bytes": 0 if content is None else content.size,
                "message_type": meta.message_type,
                "group_id": meta.group_id,
            }
            if error is not None:
                details["error_code"] = int(error[0])
            self._audit(
                session,
                "reply.received",
                actor=actor,
                subjects={
                    "run_id": str(meta.run_id),
                    "message_id": meta.message_id,
                    "request_id": request_id,
                    "node": str(node_id),
                },
                details=details,
            )
            return message_from_row(reply)

    @staticmethod
    def _check_reply_shape(
        meta: Metadata,
        content: BlobRef | None,
        error: tuple[int, str] | None,
        signature: bytes | None,
    ) -> None:
        if not isinstance(meta, Metadata):
            raise InvalidArgument(f"meta must be Metadata, got {type(meta).__name__}")
        if not meta.message_id or not meta.reply_to_message_id:
            raise InvalidArgument("a reply needs a message_id and a reply_to_message_id")
        if meta.dst_node_id != SERVER_NODE_ID or meta.src_node_id == SERVER_NODE_ID:
            raise InvalidArgument(
                f"a reply goes from a node to node {SERVER_NODE_ID}, got "
                f"{meta.src_node_id} -> {meta.dst_node_id}"
            )
        if (content is None) == (error is None):
            raise InvalidArgument("a reply carries exactly one of content and error")
        if error is not None and (
            not isinstance(error, tuple)
            or len(error) != 2
            or isinstance(error[0], bool)
            or not isinstance(error[0], int)
            or not isinstance(error[1], str)
        ):
            raise InvalidArgument("error must be a (code: int, reason: str) tuple")
        if signature is not None and (
            not isinstance(signature, bytes) or len(signature) > MAX_SIGNATURE_BYTES
        ):
            raise InvalidArgument(f"signature must be bytes of at most {MAX_SIGNATURE_BYTES}")

    @staticmethod
    def _insert_reply(conn: Connection, reply: dict[str, Any]) -> None:
        """Insert a reply unless its request has one or its id is taken.

        Raises:
            AlreadyReplied: the request already has a reply.
            DuplicateMessage: the reply's id is taken.
        """
        request_id = reply["reply_to_message_id"]
        assert request_id is not None
        clashes = conn.execute(_CLASHES, {"to": request_id, "id": reply["message_id"]}).all()
        if any(row.reply_to_message_id == request_id for row in clashes):
            raise AlreadyReplied(f"request {request_id} was already answered")
        if clashes:
            raise DuplicateMessage(f"message {reply['message_id']} already exists")
        insert_messages(conn, [reply])

    def store_synthetic_error_reply(
        self,
        request_id: str,
        code: int,
        reason: str,
        *,
        message_id: str | None = None,
        now: float | None = None,
    ) -> StoredMessage:
        """Answer a request on behalf of its node with an error (SuperLink-made).

        For requests that expired or whose node went away: the ServerApp then sees
        an error reply instead of waiting forever. The reply is marked ``synthetic``
        and unsigned. An expired request stays ``expired``; a queued or delivered one
        becomes ``replied``.

        Raises:
            MessageNotFound: no such request.
            InvalidArgument: ``request_id`` names a reply.
            AlreadyReplied: the request already has a reply.
            DuplicateMessage: ``message_id`` is taken.
        """
        at = self._now(now)
        reply_id = check_key_text(message_id or uuid.uuid4().hex, "message_id")
        with self._write() as session:
            conn = session.connection()
            request = lock_message(conn, request_id)
            if request.reply_to_message_id is not None:
                raise InvalidArgument(f"message {request_id} is a reply, not a request")
            if request.status == REPLIED:
                raise AlreadyReplied(f"request {request_id} was already answered")
            if request.status != EXPIRED:
                set_status(conn, request_id, REPLIED)
            reply: dict[str, Any] = {
                "message_id": reply_id,
                "run_id": request.run_id,
                "src_node_id": request.dst_node_id,
                "dst_node_id": SERVER_NODE_ID,
                "reply_to_message_id": request_id,
                "group_id": request.group_id,
                "message_type": request.message_type,
                "ttl": max(request.expires_at - at, 0.0),
                "created_at": at,
                "expires_at": max(request.expires_at, at),
                "status": QUEUED,
                "content_sha256": None,
                "content_size": None,
                "error_code": int(code),
                "error_reason": clip_reason(reason),
                "signature": None,
                "delivered_at": None,
                "synthetic": True,
            }
            self._insert_reply(conn, reply)
            return message_from_row(reply)

    def record_round(self, run_id: int, group_id: str) -> tuple[list[int], list[int]]:
        """Audit ``round.completed``: which nodes answered the run's messages of ``group_id``.

        The record is the SuperLink's own, from the stored replies (the strategy
        puts the round number in ``group_id``): nodes with a content reply, and
        nodes whose reply was an error (including answers the SuperLink made
        for a node that went away).

        Returns:
            ``(replied, failed)`` node ids, sorted.

        Raises:
            RunNotFound: no such run.
            AuditFailed: the entry was refused.
        """
        check_id(run_id, "run_id")
        with self._write() as session:
            if session.get(RunRow, run_id) is None:
                raise RunNotFound(run_id)
            rows = session.execute(
                select(MessageRow.src_node_id, MessageRow.error_code).where(
                    MessageRow.run_id == run_id,
                    MessageRow.group_id == group_id,
                    MessageRow.reply_to_message_id.is_not(None),
                )
            ).all()
            replied = sorted({r.src_node_id for r in rows if r.error_code is None})
            failed = sorted({r.src_node_id for r in rows if r.error_code is not None})
            self._audit(
                session,
                "round.completed",
                subjects={"run_id": str(run_id)},
                details={
                    "group_id": group_id,
                    "replied": [str(n) for n in replied],
                    "failed": [str(n) for n in failed],
                },
            )
            return replied, failed

    def replies_for(self, run_id: int, message_ids: Iterable[str]) -> list[StoredMessage]:
        """Replies to ``message_ids`` in ``run_id`` not yet handed to the ServerApp.

        Raises:
            RunNotFound: no such run.
        """
        check_id(run_id, "run_id")
        ids = sorted(set(message_ids))
        found: list[StoredMessage] = []
        with self._read() as session:
            conn = session.connection()
            _check_run_exists(conn, run_id)
            for chunk in in_chunks(ids):
                rows = conn.execute(_REPLIES_FOR, {"run": run_id, "ids": chunk})
                found.extend(message_from_row(row._mapping) for row in rows)
        return sorted(found, key=lambda m: (m.created_at, m.message_id))

    def mark_replies_delivered(self, ids: Iterable[str], *, now: float | None = None) -> int:
        """Mark replies handed to the ServerApp (``queued -> delivered``); drop their bodies.

        A body is deleted unless a message other than a delivered reply, a bundle or an
        artifact still points at the same bytes, or a writer holds them (see
        :meth:`BlobStore.delete_unreferenced`). An open descriptor of a deleted body
        (one already handed to the ServerApp) still reads it.

        Returns:
            How many replies changed (already-delivered or unknown ids are skipped).

        Raises:
            BlobError: the file system failed deleting a body (the marks are kept).
        """
        at = self._now(now)
        unique = sorted(set(ids))
        changed = 0
        bodies: set[str] = set()
        with self._write() as session:
            conn = session.connection()
            for chunk in in_chunks(unique):
                changed += conn.execute(_MARK_REPLIES_DELIVERED, {"ids": chunk, "at": at}).rowcount
                bodies.update(conn.scalars(_DELIVERED_BODIES, {"ids": chunk}))
        if bodies:
            self._blobs.delete_unreferenced(bodies, self._bodies_in_use)
        return changed

    def _bodies_in_use(self, shas: set[str]) -> set[str]:
        with self._read() as session:
            return blobs_in_use(session.connection(), shas)

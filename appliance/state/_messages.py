"""Requests (ServerApp -> node): queue, deliver at most once, expire.

Lifecycle of a request (``src_node_id`` 0)::

    queued --mark_delivered--> delivered --store_reply--> replied
    queued | delivered --expire_messages (TTL ran out)--> expired

Guarantees: a request is queued only for an enrolled node in a running run, and
delivered at most once, only to its destination node, only while its run is
running and its TTL has not run out. Each check and its state change happen in
one transaction under a row lock. Bodies stay in the blob store; rows only
reference them. Answering a request lives in ``_replies.py``. Authenticating the
node is the SuperLink's job: the caller passes the *authenticated* node id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from appliance.message import SERVER_NODE_ID, Metadata
from appliance.state._store import (
    RetryTransaction,
    Store,
    check_id,
    check_key_text,
    is_key_text,
)
from appliance.state.errors import (
    AlreadyDelivered,
    BlobNotFound,
    Conflict,
    DuplicateMessage,
    InvalidArgument,
    MessageExpired,
    MessageNotFound,
    NodeNotFound,
    NotAddressedToNode,
    RunNotFound,
    RunNotRunning,
)
from appliance.state.models import ArtifactRow, BundleRow, MessageRow, NodeRow, RunRow
from appliance.state.values import BlobRef, MessageStatus, RunStatus, StoredMessage

#: Most requests one ``queued_for_node`` returns.
MAX_PULL = 10_000
_IN_CHUNK = 500
_T = TypeVar("_T")
_ATTEMPTS = 3
QUEUED = MessageStatus.QUEUED.value
DELIVERED = MessageStatus.DELIVERED.value
REPLIED = MessageStatus.REPLIED.value
EXPIRED = MessageStatus.EXPIRED.value
RUNNING = RunStatus.RUNNING.value

# The message path runs on SQLAlchemy Core: statements built once (the engine caches
# their compiled SQL), executed on the transaction's connection, plain rows back.
# Bound parameter names differ from column names (Core reserves those for SET values).
MESSAGES = cast(Table, MessageRow.__table__)
RUNS = cast(Table, RunRow.__table__)
NODES = cast(Table, NodeRow.__table__)
_M = MESSAGES.c

_RUN_STATUS = select(RUNS.c.status).where(RUNS.c.run_id == bindparam("run"))
_RUN_STATUSES = select(RUNS.c.run_id, RUNS.c.status).where(
    RUNS.c.run_id.in_(bindparam("runs", expanding=True))
)
_ENROLLED = select(NODES.c.node_id).where(NODES.c.node_id.in_(bindparam("nodes", expanding=True)))
_TAKEN_IDS = select(_M.message_id).where(_M.message_id.in_(bindparam("ids", expanding=True)))
_GET_MESSAGE = select(MESSAGES).where(_M.message_id == bindparam("id"))
_LOCK_MESSAGE = _GET_MESSAGE.with_for_update(key_share=True)
_SET_STATUS = (
    update(MESSAGES).where(_M.message_id == bindparam("id")).values(status=bindparam("new_status"))
)
_SET_DELIVERED = (
    update(MESSAGES)
    .where(_M.message_id == bindparam("id"))
    .values(status=DELIVERED, delivered_at=bindparam("at"))
)
_INSERT_MESSAGE = insert(MESSAGES)
_QUEUED_FOR_NODE = (
    select(MESSAGES)
    .join(RUNS, RUNS.c.run_id == _M.run_id)
    .where(
        _M.dst_node_id == bindparam("node"),
        _M.status == QUEUED,
        _M.reply_to_message_id.is_(None),
        _M.expires_at >= bindparam("at"),
        RUNS.c.status == RUNNING,
    )
    .order_by(_M.created_at, _M.message_id)
    .limit(bindparam("limit"))
)
_EXPIRE = (
    update(MESSAGES)
    .where(
        _M.reply_to_message_id.is_(None),
        _M.status.in_([QUEUED, DELIVERED]),
        _M.expires_at < bindparam("at"),
    )
    .values(status=EXPIRED)
    .returning(*MESSAGES.c)
)
_IN_FLIGHT_FOR_NODE = (
    select(MESSAGES)
    .where(
        _M.dst_node_id == bindparam("node"),
        _M.reply_to_message_id.is_(None),
        _M.status == DELIVERED,
    )
    .order_by(_M.created_at, _M.message_id)
)

# A blob is still needed while a bundle, an artifact or a message other than a delivered
# reply (which is never handed out again) points at it.
_BLOBS_IN_USE = (
    select(_M.content_sha256)
    .where(
        _M.content_sha256.in_(bindparam("shas", expanding=True)),
        or_(_M.reply_to_message_id.is_(None), _M.status != DELIVERED),
    )
    .union(
        select(BundleRow.sha256).where(BundleRow.sha256.in_(bindparam("shas"))),
        select(ArtifactRow.sha256).where(ArtifactRow.sha256.in_(bindparam("shas"))),
    )
)


def blobs_in_use(conn: Connection, shas: set[str]) -> set[str]:
    """Those of ``shas`` still needed (see ``_BLOBS_IN_USE``): never delete these."""
    in_use: set[str] = set()
    for chunk in in_chunks(sorted(shas)):
        in_use.update(conn.scalars(_BLOBS_IN_USE, {"shas": chunk}))
    return in_use


def message_from_row(row: Mapping[Any, Any]) -> StoredMessage:
    """A frozen :class:`StoredMessage` from a row's mapping (or a new row's values)."""
    content = None
    if row["content_sha256"] is not None:
        content = BlobRef(sha256=row["content_sha256"], size=row["content_size"] or 0)
    return StoredMessage(
        message_id=row["message_id"],
        run_id=row["run_id"],
        src_node_id=row["src_node_id"],
        dst_node_id=row["dst_node_id"],
        reply_to_message_id=row["reply_to_message_id"] or "",
        group_id=row["group_id"],
        message_type=row["message_type"],
        ttl=row["ttl"],
        created_at=row["created_at"],
        status=MessageStatus(row["status"]),
        content=content,
        error_code=row["error_code"],
        error_reason=row["error_reason"],
        signature=None if row["signature"] is None else bytes(row["signature"]),
        delivered_at=row["delivered_at"],
        synthetic=bool(row["synthetic"]),
    )


def in_chunks(items: Sequence[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield list(items[start : start + _IN_CHUNK])


def row_for(meta: Metadata, status: str, content: BlobRef | None) -> dict[str, Any]:
    """The values of a new row for ``meta`` (every column, as ``insert_messages`` needs).

    Raises:
        InvalidArgument: an id holds a NUL or unencodable character.
    """
    for name in ("message_id", "reply_to_message_id", "group_id"):
        check_key_text(getattr(meta, name), name)
    return {
        "message_id": meta.message_id,
        "run_id": meta.run_id,
        "src_node_id": meta.src_node_id,
        "dst_node_id": meta.dst_node_id,
        "reply_to_message_id": meta.reply_to_message_id or None,
        "group_id": meta.group_id,
        "message_type": meta.message_type,
        "ttl": float(meta.ttl),
        "created_at": float(meta.created_at),
        "expires_at": float(meta.created_at) + float(meta.ttl),
        "status": status,
        "content_sha256": None if content is None else content.sha256,
        "content_size": None if content is None else content.size,
        "error_code": None,
        "error_reason": None,
        "signature": None,
        "delivered_at": None,
        "synthetic": False,
    }


def insert_messages(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert new rows (one executemany); the caller checked their ids are free.

    Raises:
        DuplicateMessage: the one row's id was taken meanwhile (a concurrent writer).
        RetryTransaction: one of several rows clashed; a retry's checks name it.
    """
    if not rows:
        return  # (an empty parameter list would insert one row of defaults)
    try:
        conn.execute(_INSERT_MESSAGE, list(rows))
    except IntegrityError:
        if len(rows) == 1:
            raise DuplicateMessage(f"message {rows[0]['message_id']} already exists") from None
        raise RetryTransaction from None


def check_running(conn: Connection, run_id: int) -> None:
    """Raises RunNotFound or RunNotRunning unless ``run_id`` is running."""
    _check_run_status(run_id, conn.execute(_RUN_STATUS, {"run": run_id}).scalar())


def _check_run_status(run_id: int, status: str | None) -> None:
    if status is None:
        raise RunNotFound(run_id)
    if status != RUNNING:
        raise RunNotRunning(f"run {run_id} is {status}, not running")


def lock_message(conn: Connection, message_id: str) -> Row[Any]:
    """The message's row, locked until commit (``FOR NO KEY UPDATE``; SQLite: ``IMMEDIATE``).

    Raises:
        MessageNotFound: no such message.
    """
    row = conn.execute(_LOCK_MESSAGE, {"id": message_id}).first()
    if row is None:
        raise MessageNotFound(message_id)
    return row


def set_status(conn: Connection, message_id: str, status: str) -> None:
    conn.execute(_SET_STATUS, {"id": message_id, "new_status": status})


class MessageStore(Store):
    """Message operations of :class:`~appliance.state.State`."""

    def _check_content(self, content: BlobRef | None) -> None:
        if content is None:
            return
        if not isinstance(content, BlobRef):
            raise InvalidArgument(f"content must be a BlobRef, got {type(content).__name__}")
        if not self._blobs.exists(content.sha256):
            raise BlobNotFound(f"content blob {content.sha256} is not in the blob store")
        if self._blobs.size(content.sha256) != content.size:
            raise InvalidArgument(f"content blob {content.sha256} size does not match")

    def queue_message(
        self, meta: Metadata, content: BlobRef | None, *, now: float | None = None
    ) -> StoredMessage:
        """Queue a ServerApp -> node request for its destination node.

        MUST check that the run exists and is running, the destination node is
        enrolled, the id is new and the TTL has not already run out.

        Args:
            meta: routing; ``src_node_id`` 0, no ``reply_to_message_id``.
            content: the body, already in the blob store (``None`` for no body).
            now: the current time, for the TTL check.

        Returns:
            The stored request (status ``queued``).

        Raises:
            InvalidArgument: ``meta`` is not a request from the server, or ``content``
                does not match its blob.
            BlobNotFound: ``content`` is not in the blob store.
            RunNotFound, RunNotRunning: the run is unknown or not running.
            NodeNotFound: the destination node is not enrolled.
            DuplicateMessage: the message id is taken.
            MessageExpired: ``created_at + ttl`` is already past.
        """
        return self.queue_messages([(meta, content)], now=now)[0]

    def queue_messages(
        self,
        items: Sequence[tuple[Metadata, BlobRef | None]],
        *,
        now: float | None = None,
    ) -> list[StoredMessage]:
        """Queue several requests in one transaction: all of them or none.

        Same checks and errors as :meth:`queue_message` (one round's messages are
        pushed together; one transaction keeps SQLite's writers from queueing up).
        """
        at = self._now(now)
        for meta, content in items:
            self._check_request(meta, content, at)
        for _ in range(_ATTEMPTS):
            try:
                with self._write() as session:
                    conn = session.connection()
                    rows = self._new_requests(conn, items)
                    insert_messages(conn, rows)
                    return [message_from_row(row) for row in rows]
            except RetryTransaction:
                continue  # an id was taken by a concurrent writer: the next checks name it
        raise Conflict("could not queue the messages (conflicting writes)")  # pragma: no cover

    @staticmethod
    def _new_requests(
        conn: Connection, items: Sequence[tuple[Metadata, BlobRef | None]]
    ) -> list[dict[str, Any]]:
        """The rows to insert, checked item by item (run, node, ids) as one lookup per table.

        Raises:
            RunNotFound, RunNotRunning, NodeNotFound, InvalidArgument, DuplicateMessage.
        """
        run_ids = sorted({meta.run_id for meta, _ in items})
        node_ids = sorted({meta.dst_node_id for meta, _ in items})
        # Ids that cannot be stored are refused by row_for(); never sent to the database.
        ids = [meta.message_id for meta, _ in items if is_key_text(meta.message_id)]
        runs: dict[int, str] = {}
        enrolled: set[int] = set()
        taken: set[str] = set()
        for some_runs in in_chunks(run_ids):
            rows = conn.execute(_RUN_STATUSES, {"runs": some_runs})
            runs.update((row.run_id, row.status) for row in rows)
        for some_nodes in in_chunks(node_ids):
            enrolled.update(conn.scalars(_ENROLLED, {"nodes": some_nodes}))
        for some_ids in in_chunks(ids):
            taken.update(conn.scalars(_TAKEN_IDS, {"ids": some_ids}))
        new_rows: list[dict[str, Any]] = []
        for meta, content in items:
            _check_run_status(meta.run_id, runs.get(meta.run_id))
            if meta.dst_node_id not in enrolled:
                raise NodeNotFound(meta.dst_node_id)
            row = row_for(meta, QUEUED, content)
            if meta.message_id in taken:
                raise DuplicateMessage(f"message {meta.message_id} already exists")
            taken.add(meta.message_id)
            new_rows.append(row)
        return new_rows

    def _check_request(self, meta: Metadata, content: BlobRef | None, at: float) -> None:
        if not isinstance(meta, Metadata):
            raise InvalidArgument(f"meta must be Metadata, got {type(meta).__name__}")
        if not meta.message_id:
            raise InvalidArgument("message_id must not be empty")
        if meta.reply_to_message_id:
            raise InvalidArgument(f"message {meta.message_id} is a reply; use store_reply")
        if meta.src_node_id != SERVER_NODE_ID or meta.dst_node_id == SERVER_NODE_ID:
            raise InvalidArgument(
                f"a request goes from node {SERVER_NODE_ID} to a node, got "
                f"{meta.src_node_id} -> {meta.dst_node_id}"
            )
        self._check_content(content)
        if at > meta.expires_at:
            raise MessageExpired(f"message {meta.message_id} expired before it was queued")

    def get_message(self, message_id: str) -> StoredMessage:
        """Return a stored message (request or reply).

        Raises:
            MessageNotFound: no such message.
        """
        with self._read() as session:
            row = session.connection().execute(_GET_MESSAGE, {"id": message_id}).first()
            if row is None:
                raise MessageNotFound(message_id)
            return message_from_row(row._mapping)

    def queued_for_node(
        self, node_id: int, limit: int = 100, *, now: float | None = None
    ) -> list[StoredMessage]:
        """Requests waiting for ``node_id``: queued, TTL not run out, run running.

        Does not change anything; hand each out with :meth:`mark_delivered`.

        Returns:
            Up to ``limit`` requests, oldest first.

        Raises:
            InvalidArgument: malformed ``node_id`` or ``limit`` not in 1..10000.
        """
        check_id(node_id, "node_id")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PULL:
            raise InvalidArgument(f"limit must be an int in 1..{MAX_PULL}, got {limit!r}")
        params = {"node": node_id, "at": self._now(now), "limit": limit}
        with self._read() as session:
            rows = session.connection().execute(_QUEUED_FOR_NODE, params)
            return [message_from_row(row._mapping) for row in rows]

    def mark_delivered(
        self, message_id: str, node_id: int, *, now: float | None = None
    ) -> StoredMessage:
        """Hand a queued request to its node: ``queued -> delivered``, exactly once.

        Raises:
            MessageNotFound: no such message.
            NotAddressedToNode: the message is for another node (or is a reply).
            AlreadyDelivered: it was delivered before.
            MessageExpired: its TTL ran out.
            RunNotRunning: its run is no longer running.
        """
        check_id(node_id, "node_id")
        at = self._now(now)
        with self._write() as session:
            conn = session.connection()
            row = lock_message(conn, message_id)
            if row.reply_to_message_id is not None or row.dst_node_id != node_id:
                raise NotAddressedToNode(f"message {message_id} is not addressed to node {node_id}")
            if row.status == EXPIRED or at > row.expires_at:
                raise MessageExpired(f"message {message_id} expired")
            if row.status != QUEUED:
                raise AlreadyDelivered(f"message {message_id} was already delivered")
            check_running(conn, row.run_id)
            conn.execute(_SET_DELIVERED, {"id": message_id, "at": at})
            return message_from_row({**row._mapping, "status": DELIVERED, "delivered_at": at})

    def expire_messages(self, now: float | None = None) -> list[StoredMessage]:
        """Expire queued or delivered requests whose TTL ran out (``-> expired``).

        Returns:
            The requests just expired (so the caller can answer them with
            :meth:`store_synthetic_error_reply`), oldest first.
        """
        at = self._now(now)
        with self._write() as session:
            rows = session.connection().execute(_EXPIRE, {"at": at})
            expired = [message_from_row(row._mapping) for row in rows]
        return sorted(expired, key=lambda m: (m.created_at, m.message_id))

    def requests_in_flight_for_node(self, node_id: int) -> list[StoredMessage]:
        """Requests delivered to ``node_id`` and not answered yet, oldest first."""
        check_id(node_id, "node_id")
        with self._read() as session:
            rows = session.connection().execute(_IN_FLIGHT_FOR_NODE, {"node": node_id})
            return [message_from_row(row._mapping) for row in rows]

    def referenced_blobs(self) -> set[str]:
        """SHA-256 of every blob a message or bundle still references."""
        with self._read() as session:
            contents = session.scalars(
                select(MessageRow.content_sha256)
                .where(MessageRow.content_sha256.is_not(None))
                .distinct()
            )
            keep = {sha for sha in contents if sha is not None}
            keep.update(session.scalars(select(BundleRow.sha256)))
        return keep | self.artifact_blobs()  # type: ignore[attr-defined]

    def release_run_bodies(self, run_id: int) -> list[str]:
        """Delete the message bodies of an ended run; keep the rows (routing, hashes, signatures).

        A body still referenced by a run in flight, a bundle or an artifact (bodies are
        content-addressed, so two runs may share one) is kept. Bodies of an ended run
        are never read again: its requests were answered or expired, its replies handed
        out. Keeping them would grow the data dir by (nodes + 1) x model every round.

        Returns:
            The SHA-256 of the bodies deleted.

        Raises:
            RunNotFound: no such run.
            Conflict: the run is still in flight.
        """
        check_id(run_id, "run_id")
        with self._read() as session:
            run = session.get(RunRow, run_id)
            if run is None:
                raise RunNotFound(run_id)
            if not RunStatus(run.status).is_terminal:
                raise Conflict(f"run {run_id} is {run.status}; release bodies of ended runs only")
            mine = set(
                session.scalars(
                    select(MessageRow.content_sha256)
                    .where(MessageRow.run_id == run_id, MessageRow.content_sha256.is_not(None))
                    .distinct()
                )
            )
            live = set(
                session.scalars(
                    select(MessageRow.content_sha256)
                    .join(RunRow, RunRow.run_id == MessageRow.run_id)
                    .where(
                        MessageRow.run_id != run_id,
                        MessageRow.content_sha256.in_(mine),
                        RunRow.status.not_in([s.value for s in RunStatus if s.is_terminal]),
                    )
                )
            )
            live.update(session.scalars(select(BundleRow.sha256).where(BundleRow.sha256.in_(mine))))
        live |= self.artifact_blobs() & mine  # type: ignore[attr-defined]
        released = sorted(sha for sha in mine - live if sha is not None)
        for sha in released:
            self._blobs.delete(sha)
        return released

    def purge_run_messages(self, run_id: int) -> int:
        """Delete every message of a finished, failed or stopped run.

        Returns:
            How many messages were deleted (their blobs go at the next gc).

        Raises:
            RunNotFound: no such run.
            Conflict: the run is still in flight.
        """
        check_id(run_id, "run_id")
        with self._write() as session:
            run = session.get(RunRow, run_id)
            if run is None:
                raise RunNotFound(run_id)
            if not RunStatus(run.status).is_terminal:
                raise Conflict(f"run {run_id} is {run.status}; purge only ended runs")
            ids = session.scalars(
                delete(MessageRow)
                .where(MessageRow.run_id == run_id)
                .returning(MessageRow.message_id)
                .execution_options(synchronize_session=False)
            ).all()
            return len(ids)

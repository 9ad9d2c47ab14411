"""Enrolled SuperNodes: enrolment, removal, lookup and presence.

Guarantees: node ids are random in ``1 .. 2**63 - 1``; names and certificate
fingerprints are unique. Deciding *whether* a certificate may enrol is the job of
``certs/`` and the SuperLink; this module only records the outcome.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.state._store import RetryTransaction, Store, check_id, check_text, new_id
from appliance.state.audit_sink import AuditActor
from appliance.state.errors import NodeAlreadyEnrolled, NodeNotFound
from appliance.state.models import NodeRow
from appliance.state.values import Enrolment, Node, check_sha256

_ENROL_ATTEMPTS = 5


def node_from_row(row: NodeRow) -> Node:
    """A frozen :class:`Node` from its row."""
    return Node(
        node_id=row.node_id,
        name=row.name,
        cert_fingerprint=row.cert_fingerprint,
        signing_key_fingerprint=row.signing_key_fingerprint,
        enrolled_at=row.enrolled_at,
        enrolled_by=row.enrolled_by,
        last_seen_at=row.last_seen_at,
        online=bool(row.online),
    )


class NodeStore(Store):
    """Node operations of :class:`~appliance.state.State`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Who is enrolled, by certificate fingerprint: asked on every Fleet call,
        # changed only by enrol_node and remove_node (which bump the generation).
        self._enrolments: dict[str, Enrolment] | None = None
        self._enrolments_generation = 0
        self._enrolments_lock = threading.Lock()

    def enrolment(self, cert_fingerprint: str) -> Enrolment | None:
        """Who is enrolled with this certificate fingerprint, if anyone.

        Served from memory: the enrolments are read once and read again after
        :meth:`enrol_node` or :meth:`remove_node`, so this process's changes are
        seen at once. The SuperLink owns its database; nothing else enrols nodes.
        """
        with self._enrolments_lock:
            known, generation = self._enrolments, self._enrolments_generation
        if known is None:
            with self._read() as session:
                known = {
                    row.cert_fingerprint: Enrolment(
                        node_id=row.node_id,
                        name=row.name,
                        cert_fingerprint=row.cert_fingerprint,
                        signing_key_fingerprint=row.signing_key_fingerprint,
                    )
                    for row in session.scalars(select(NodeRow))
                }
            with self._enrolments_lock:
                if generation == self._enrolments_generation:  # no change meanwhile
                    self._enrolments = known
        return known.get(cert_fingerprint)

    def _enrolments_changed(self) -> None:
        with self._enrolments_lock:
            self._enrolments = None
            self._enrolments_generation += 1

    def enrol_node(
        self,
        name: str,
        cert_fingerprint: str,
        signing_key_fingerprint: str,
        enrolled_by: str,
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> Node:
        """Enrol a node under a fresh random id (offline until it connects).

        MUST refuse a second node with the same name or certificate fingerprint.

        Args:
            name: unique site name (1..128 characters, no control characters).
            cert_fingerprint: SHA-256 (lowercase hex) of the node certificate's DER.
            signing_key_fingerprint: SHA-256 (lowercase hex) of its Ed25519 public key.
            enrolled_by: identity name of the enrolling admin.
            now: enrolment time (default: the state's clock).

        Returns:
            The new node.

        Raises:
            InvalidArgument: a malformed name or fingerprint.
            NodeAlreadyEnrolled: the name or certificate is already enrolled.
        """
        check_text(name, "node name", 128)
        check_sha256(cert_fingerprint, "cert_fingerprint")
        check_sha256(signing_key_fingerprint, "signing_key_fingerprint")
        check_text(enrolled_by, "enrolled_by", 256)
        at = self._now(now)
        try:
            for _ in range(_ENROL_ATTEMPTS):
                try:
                    with self._write() as session:
                        self._refuse_duplicate(session, name, cert_fingerprint)
                        row = NodeRow(
                            node_id=new_id(),
                            name=name,
                            cert_fingerprint=cert_fingerprint,
                            signing_key_fingerprint=signing_key_fingerprint,
                            enrolled_at=at,
                            enrolled_by=enrolled_by,
                            last_seen_at=None,
                            online=False,
                        )
                        session.add(row)
                        try:
                            session.flush()
                        except IntegrityError:
                            raise RetryTransaction from None
                        node = node_from_row(row)
                        self._audit(
                            session,
                            "node.enrolled",
                            actor=actor,
                            subjects={"node": str(node.node_id)},
                            details={
                                "name": name,
                                "cert_fingerprint": cert_fingerprint,
                                "signing_key_fingerprint": signing_key_fingerprint,
                            },
                        )
                        return node
                except RetryTransaction:
                    continue  # a concurrent enrolment or an id collision: re-check and retry
            raise NodeAlreadyEnrolled(f"node {name!r} could not be enrolled (conflicting writes)")
        finally:
            self._enrolments_changed()

    @staticmethod
    def _refuse_duplicate(session: Session, name: str, cert_fingerprint: str) -> None:
        clash = session.scalars(
            select(NodeRow).where(
                (NodeRow.name == name) | (NodeRow.cert_fingerprint == cert_fingerprint)
            )
        ).first()
        if clash is None:
            return
        if clash.name == name:
            raise NodeAlreadyEnrolled(f"a node named {name!r} is already enrolled")
        raise NodeAlreadyEnrolled(
            f"certificate {cert_fingerprint} is already enrolled as node {clash.name!r}"
        )

    def remove_node(self, name: str, *, actor: AuditActor | None = None) -> Node:
        """Remove a node by name; its messages stay for the record (audited).

        Returns:
            The node as it was.

        Raises:
            NodeNotFound: no node has this name.
        """
        try:
            with self._write() as session:
                row = session.scalars(select(NodeRow).where(NodeRow.name == name)).first()
                if row is None:
                    raise NodeNotFound(repr(name))
                node = node_from_row(row)
                session.delete(row)
                session.flush()
                self._audit(
                    session,
                    "node.removed",
                    actor=actor,
                    subjects={"node": str(node.node_id)},
                    details={"name": node.name, "cert_fingerprint": node.cert_fingerprint},
                )
                return node
        finally:
            self._enrolments_changed()

    def get_node(self, node_id: int) -> Node:
        """Return a node by id.

        Raises:
            InvalidArgument: ``node_id`` is not a valid id.
            NodeNotFound: no such node.
        """
        check_id(node_id, "node_id")
        with self._read() as session:
            row = session.get(NodeRow, node_id)
            if row is None:
                raise NodeNotFound(node_id)
            return node_from_row(row)

    def find_node_by_name(self, name: str) -> Node | None:
        """Return the node with this name, if any."""
        with self._read() as session:
            row = session.scalars(select(NodeRow).where(NodeRow.name == name)).first()
            return None if row is None else node_from_row(row)

    def list_nodes(self) -> list[Node]:
        """All enrolled nodes, sorted by name."""
        with self._read() as session:
            rows = session.scalars(select(NodeRow).order_by(NodeRow.name))
            return [node_from_row(row) for row in rows]

    def set_node_online(
        self,
        node_id: int,
        online: bool,
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> Node:
        """Mark a node online or offline and update its ``last_seen_at``.

        Going online is audited as ``node.connected`` by ``actor`` (the node).

        Raises:
            NodeNotFound: no such node.
        """
        return self._update_node(node_id, now, actor=actor, online=bool(online))

    def touch_node(self, node_id: int, *, now: float | None = None) -> Node:
        """Record that a node was just seen (``last_seen_at``).

        Raises:
            NodeNotFound: no such node.
        """
        return self._update_node(node_id, now)

    def _update_node(
        self,
        node_id: int,
        now: float | None,
        *,
        actor: AuditActor | None = None,
        online: bool | None = None,
    ) -> Node:
        check_id(node_id, "node_id")
        with self._write() as session:
            row = session.get(NodeRow, node_id)
            if row is None:
                raise NodeNotFound(node_id)
            row.last_seen_at = self._now(now)
            if online is not None:
                row.online = online
            session.flush()
            if online:
                self._audit(
                    session,
                    "node.connected",
                    actor=actor,
                    subjects={"node": str(node_id)},
                    details={"name": row.name},
                )
            return node_from_row(row)

    def online_node_ids(self) -> list[int]:
        """Ids of the nodes currently online, sorted."""
        with self._read() as session:
            ids = session.scalars(
                select(NodeRow.node_id).where(NodeRow.online.is_(True)).order_by(NodeRow.node_id)
            )
            return list(ids)

    def mark_all_nodes_offline(self) -> int:
        """Mark every node offline (a restarted SuperLink holds no sessions).

        Returns:
            How many nodes were online.
        """
        with self._write() as session:
            ids = session.scalars(
                update(NodeRow)
                .where(NodeRow.online.is_(True))
                .values(online=False)
                .returning(NodeRow.node_id)
                .execution_options(synchronize_session=False)
            ).all()
            return len(ids)

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
from appliance.state.models import NodeRenewalRow, NodeRow
from appliance.state.values import Enrolment, Node, check_sha256

_ENROL_ATTEMPTS = 5


def node_from_row(row: NodeRow, renewal: NodeRenewalRow | None = None) -> Node:
    """A frozen :class:`Node` from its row (and its staged renewal, if any)."""
    return Node(
        node_id=row.node_id,
        name=row.name,
        cert_fingerprint=row.cert_fingerprint,
        signing_key_fingerprint=row.signing_key_fingerprint,
        enrolled_at=row.enrolled_at,
        enrolled_by=row.enrolled_by,
        last_seen_at=row.last_seen_at,
        online=bool(row.online),
        renewal_cert_fingerprint=None if renewal is None else renewal.cert_fingerprint,
    )


def _node(session: Session, row: NodeRow) -> Node:
    return node_from_row(row, session.get(NodeRenewalRow, row.node_id))


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
                for renewal in session.scalars(select(NodeRenewalRow)):
                    enrolled = session.get(NodeRow, renewal.node_id)
                    if enrolled is not None:
                        known[renewal.cert_fingerprint] = Enrolment(
                            node_id=renewal.node_id,
                            name=enrolled.name,
                            cert_fingerprint=renewal.cert_fingerprint,
                            signing_key_fingerprint=renewal.signing_key_fingerprint,
                            renewal=True,
                        )
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
    def _refuse_duplicate(session: Session, name: str | None, cert_fingerprint: str) -> None:
        """Refuse a certificate enrolled or staged already, and (``name``) a taken name."""
        NodeStore._refuse_staged(session, cert_fingerprint)
        clashes = NodeRow.cert_fingerprint == cert_fingerprint
        if name is not None:
            clashes = clashes | (NodeRow.name == name)
        clash = session.scalars(select(NodeRow).where(clashes)).first()
        if clash is None:
            return
        if clash.name == name:
            raise NodeAlreadyEnrolled(f"a node named {name!r} is already enrolled")
        raise NodeAlreadyEnrolled(
            f"certificate {cert_fingerprint} is already enrolled as node {clash.name!r}"
        )

    @staticmethod
    def _refuse_staged(session: Session, cert_fingerprint: str) -> None:
        staged = session.scalars(
            select(NodeRenewalRow).where(NodeRenewalRow.cert_fingerprint == cert_fingerprint)
        ).first()
        if staged is not None:
            owner = session.get(NodeRow, staged.node_id)
            name = owner.name if owner is not None else staged.node_id
            raise NodeAlreadyEnrolled(
                f"certificate {cert_fingerprint} is already staged as the renewal of {name!r}"
            )

    def renew_node(
        self,
        name: str,
        cert_fingerprint: str,
        signing_key_fingerprint: str,
        renewed_by: str,
        *,
        actor: AuditActor | None = None,
        now: float | None = None,
    ) -> Node:
        """Stage a renewed certificate for an enrolled node, which keeps its id (audited).

        Until the node first says Hello with the new certificate both are accepted, so a
        site can switch (SIGHUP) whenever it is ready; then :meth:`complete_renewal`
        makes the new one the only one. A second renewal replaces a staged one.

        Raises:
            InvalidArgument: a malformed name or fingerprint.
            NodeNotFound: no node has this name.
            NodeAlreadyEnrolled: the certificate is enrolled or staged already.
        """
        check_text(name, "node name", 128)
        check_sha256(cert_fingerprint, "cert_fingerprint")
        check_sha256(signing_key_fingerprint, "signing_key_fingerprint")
        check_text(renewed_by, "renewed_by", 256)
        at = self._now(now)
        try:
            with self._write() as session:
                row = session.scalars(select(NodeRow).where(NodeRow.name == name)).first()
                if row is None:
                    raise NodeNotFound(repr(name))
                previous = session.get(NodeRenewalRow, row.node_id)
                if previous is not None:
                    session.delete(previous)
                    session.flush()
                self._refuse_duplicate(session, None, cert_fingerprint)
                renewal = NodeRenewalRow(
                    node_id=row.node_id,
                    cert_fingerprint=cert_fingerprint,
                    signing_key_fingerprint=signing_key_fingerprint,
                    renewed_at=at,
                    renewed_by=renewed_by,
                )
                session.add(renewal)
                try:
                    session.flush()
                except IntegrityError:  # a concurrent renewal staged the same certificate
                    raise NodeAlreadyEnrolled(
                        f"certificate {cert_fingerprint} is already staged"
                    ) from None
                self._audit(
                    session,
                    "node.renewed",
                    actor=actor,
                    subjects={"node": str(row.node_id)},
                    details={
                        "name": name,
                        "cert_fingerprint": cert_fingerprint,
                        "signing_key_fingerprint": signing_key_fingerprint,
                        "previous_cert_fingerprint": row.cert_fingerprint,
                    },
                )
                return node_from_row(row, renewal)
        finally:
            self._enrolments_changed()

    def complete_renewal(
        self, node_id: int, cert_fingerprint: str, *, actor: AuditActor | None = None
    ) -> Node:
        """Make the staged certificate the node's only one (it just said Hello with it).

        The previous certificate is refused from now on (audited as
        ``node.renewal_completed``). Completing a renewal twice is harmless.

        Raises:
            NodeNotFound: no such node.
        """
        check_id(node_id, "node_id")
        try:
            with self._write() as session:
                row = session.get(NodeRow, node_id)
                if row is None:
                    raise NodeNotFound(node_id)
                renewal = session.get(NodeRenewalRow, node_id)
                if renewal is None or renewal.cert_fingerprint != cert_fingerprint:
                    return _node(session, row)
                previous = row.cert_fingerprint
                session.delete(renewal)
                session.flush()
                row.cert_fingerprint = renewal.cert_fingerprint
                row.signing_key_fingerprint = renewal.signing_key_fingerprint
                session.flush()
                self._audit(
                    session,
                    "node.renewal_completed",
                    actor=actor,
                    subjects={"node": str(node_id)},
                    details={
                        "name": row.name,
                        "cert_fingerprint": row.cert_fingerprint,
                        "previous_cert_fingerprint": previous,
                    },
                )
                return node_from_row(row)
        finally:
            self._enrolments_changed()

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
                node = _node(session, row)
                renewal = session.get(NodeRenewalRow, row.node_id)
                if renewal is not None:
                    session.delete(renewal)
                    session.flush()
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
            return _node(session, row)

    def find_node_by_name(self, name: str) -> Node | None:
        """Return the node with this name, if any."""
        with self._read() as session:
            row = session.scalars(select(NodeRow).where(NodeRow.name == name)).first()
            return None if row is None else _node(session, row)

    def list_nodes(self) -> list[Node]:
        """All enrolled nodes, sorted by name."""
        with self._read() as session:
            renewals = {r.node_id: r for r in session.scalars(select(NodeRenewalRow))}
            rows = session.scalars(select(NodeRow).order_by(NodeRow.name))
            return [node_from_row(row, renewals.get(row.node_id)) for row in rows]

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
            return _node(session, row)

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

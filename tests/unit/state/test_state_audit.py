"""Contract: audited state changes write their audit entry in the change's transaction.

Run against every backend with a real :class:`audit.AuditLog` stored in the state's
own database (as the SuperLink attaches it): each audited mutator writes exactly
one entry with the right action, actor, subjects and details; a refused entry
fails the change closed (``AuditFailed``, nothing changed); the log stays
verifiable after failures and under concurrent writers; without a sink nothing
is written.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session
from state_threads import start_together

import audit
from appliance.message import ErrorCode
from appliance.state import (
    RESTART_REASON,
    AuditActor,
    AuditFailed,
    MessageStatus,
    RunNotFound,
    RunStatus,
    State,
)
from appliance.state.models import MessageRow
from appliance.superlink.audit_trail import sink_for
from audit.schema import metadata as audit_metadata
from audit.verify import ENTRIES_FILE

ADMIN = AuditActor("CN=admin,O=Greenhouse", "admin")
ALICE = AuditActor("CN=alice,O=Hospital A", "data-scientist")
S = RunStatus


def node_actor(name: str) -> AuditActor:
    return AuditActor(f"CN={name},O=Greenhouse Nodes", "node")


@pytest.fixture(autouse=True)
def no_audit_tables(backend, request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts without audit tables.

    The PostgreSQL schema is shared by the session and ``empty_tables`` only
    empties the state's tables; the audit tables refuse DELETE and TRUNCATE, so
    they are dropped (DDL is not guarded) before and after each test.
    """
    if backend.name != "postgresql":
        yield
        return
    pg = request.getfixturevalue("postgres")
    audit_metadata.drop_all(pg.engine)
    yield
    audit_metadata.drop_all(pg.engine)


@dataclass
class Audited:
    """A real audit log attached to a state, and how to read it back."""

    log: audit.AuditLog
    sink: Callable[..., None]

    @property
    def vkey(self) -> str:
        return self.log.verifier_key.encode()

    def entries(self) -> list[audit.Entry]:
        """The stored entries (committed only), in seq order."""
        source = audit.DatabaseSource(self.log.engine)
        return list(source.entries(audit.EntryQuery()))

    def export(self, out: Path) -> list[audit.Entry]:
        """Export, verify offline with the log's key, and parse ``entries.jsonl``."""
        audit.export(self.log, out)
        report = audit.verify_export(out, self.vkey)
        lines = (out / ENTRIES_FILE).read_bytes().splitlines()
        assert report.entries == len(lines)
        return [audit.parse_entry(line) for line in lines]


def who(actor: AuditActor) -> audit.Actor:
    """The entry's expected actor for a state-level actor."""
    return audit.Actor(identity=actor.identity, role=actor.role)


def attach_audit(state: State, *, checkpoint_every: int = 1000) -> Audited:
    """Attach a real audit log to ``state``, the way the SuperLink does."""
    log = audit.AuditLog(
        state.writer_engine,
        signer=audit.NoteSigner(name="test-link", private_key=Ed25519PrivateKey.generate()),
        clock=lambda: datetime.now(UTC),
        checkpoint_every=checkpoint_every,
    )

    sink = sink_for(log)
    state.attach_audit(sink)
    return Audited(log, sink)


def summary(entry: audit.Entry) -> tuple[str, audit.Actor, dict[str, str], dict[str, object]]:
    plain = entry.to_json()
    return plain["action"], entry.actor, plain["subjects"], plain["details"]


# -- the lifecycle, entry by entry ----------------------------------------------------------


def test_lifecycle_writes_one_entry_per_change(state, fp, request_meta, reply_meta, tmp_path):
    trail = attach_audit(state)
    hospital = node_actor("hospital-a")

    state.record_event("superlink.insecure", {"value": True}, audited=True)
    state.record_event("operator.note", {"text": "not audited"})
    node = state.enrol_node(
        "hospital-a", fp("cert:a"), fp("key:a"), "CN=admin,O=Greenhouse", actor=ADMIN
    )
    state.set_node_online(node.node_id, True, actor=hospital)
    state.touch_node(node.node_id)  # not audited
    bundle = state.put_bundle([b"bundle bytes"], max_bytes=1024)  # not audited
    run = state.create_run(
        "alice", bundle.sha256, {"num-rounds": 3, "lr": 0.1}, {"seed": 7}, actor=ALICE
    )
    state.transition_run(run.run_id, RunStatus.STARTING)  # not audited
    state.transition_run(run.run_id, RunStatus.RUNNING)
    request = request_meta(run.run_id, node.node_id)
    state.queue_message(request, state.blobs.put_bytes(b"global model"))  # not audited
    state.mark_delivered(request.message_id, node.node_id)  # not audited
    answer = state.blobs.put_bytes(b"updated weights")
    reply = reply_meta(request)
    state.store_reply(reply, answer, None, b"\x01" * 64, actor=hospital)
    assert state.record_round(run.run_id, request.group_id) == ([node.node_id], [])
    state.transition_run(run.run_id, RunStatus.FINISHED, actor=ALICE)
    state.set_node_online(node.node_id, False)  # offline is not audited
    state.remove_node("hospital-a", actor=ADMIN)

    entries = trail.export(tmp_path / "export")
    assert [e.seq for e in entries] == list(range(9))
    assert entries == trail.entries()
    run_id, node_id = str(run.run_id), str(node.node_id)
    assert [summary(e) for e in entries] == [
        ("superlink.insecure", audit.SYSTEM, {}, {"value": True}),
        (
            "node.enrolled",
            who(ADMIN),
            {"node": node_id},
            {
                "name": "hospital-a",
                "cert_fingerprint": fp("cert:a"),
                "signing_key_fingerprint": fp("key:a"),
            },
        ),
        ("node.connected", who(hospital), {"node": node_id}, {"name": "hospital-a"}),
        (
            "run.submitted",
            who(ALICE),
            {"run_id": run_id},
            {
                "owner": "alice",
                "bundle_sha256": bundle.sha256,
                "run_config": '{"lr":0.1,"num-rounds":3}',
                "options": '{"seed":7}',
            },
        ),
        ("run.started", audit.SYSTEM, {"run_id": run_id}, {}),
        (
            "reply.received",
            who(hospital),
            {
                "run_id": run_id,
                "message_id": reply.message_id,
                "request_id": request.message_id,
                "node": node_id,
            },
            {
                "sha256": hashlib.sha256(b"updated weights").hexdigest(),
                "bytes": len(b"updated weights"),
                "message_type": "train",
                "group_id": "round-1",
            },
        ),
        (
            "round.completed",
            audit.SYSTEM,
            {"run_id": run_id},
            {"group_id": "round-1", "replied": [node_id], "failed": []},
        ),
        ("run.finished", who(ALICE), {"run_id": run_id}, {}),
        (
            "node.removed",
            who(ADMIN),
            {"node": node_id},
            {"name": "hospital-a", "cert_fingerprint": fp("cert:a")},
        ),
    ]
    assert entries[5].details["sha256"] == answer.sha256
    assert entries[3].details["bundle_sha256"] == run.bundle_sha256
    assert entries[3].details["run_config"] == state.get_run(run.run_id).run_config_json


def test_stop_and_fail_reasons_are_audited(state, make_run):
    trail = attach_audit(state)
    stopped = state.transition_run(make_run(RunStatus.RUNNING).run_id, "stopped", "by alice")
    failed = state.transition_run(make_run(RunStatus.PENDING).run_id, "failed", "bad bundle")
    tail = [summary(e) for e in trail.entries() if e.action in {"run.stopped", "run.failed"}]
    assert tail == [
        ("run.stopped", audit.SYSTEM, {"run_id": str(stopped.run_id)}, {"reason": "by alice"}),
        ("run.failed", audit.SYSTEM, {"run_id": str(failed.run_id)}, {"reason": "bad bundle"}),
    ]


# -- fail closed: no change without its entry -----------------------------------------------


@dataclass
class World:
    run_id: int
    node_id: int
    bundle_sha256: str
    request_id: str


@pytest.fixture
def world(state, make_run, make_node, request_meta, body) -> World:
    """A running run and a node holding a delivered request, made before any sink."""
    run = make_run(RunStatus.RUNNING)
    node = make_node("hospital-a")
    meta = request_meta(run.run_id, node.node_id)
    state.queue_message(meta, body)
    state.mark_delivered(meta.message_id, node.node_id)
    return World(run.run_id, node.node_id, run.bundle_sha256, meta.message_id)


def _snapshot(state: State) -> tuple[object, ...]:
    return (
        state.list_runs(),
        state.list_nodes(),
        state.list_events(),
        [state.get_message(m) for m in _message_ids(state)],
    )


def _message_ids(state: State) -> list[str]:
    with Session(state.writer_engine) as session:
        return sorted(session.scalars(sa.select(MessageRow.message_id)))


FAILING_CALLS: dict[str, tuple[str, Callable[..., object]]] = {
    "create_run": (
        "run.submitted",
        lambda s, w, rm, fp: s.create_run("bob", w.bundle_sha256, {}, {}, actor=ALICE),
    ),
    "transition_run": (
        "run.finished",
        lambda s, w, rm, fp: s.transition_run(w.run_id, RunStatus.FINISHED, actor=ALICE),
    ),
    "store_reply": (
        "reply.received",
        lambda s, w, rm, fp: s.store_reply(
            rm(s.get_message(w.request_id).metadata()),
            s.blobs.put_bytes(b"reply"),
            None,
            None,
            actor=node_actor("hospital-a"),
        ),
    ),
    "enrol_node": (
        "node.enrolled",
        lambda s, w, rm, fp: s.enrol_node("bank-b", fp("c:b"), fp("k:b"), "admin", actor=ADMIN),
    ),
    "remove_node": ("node.removed", lambda s, w, rm, fp: s.remove_node("hospital-a")),
    "renew_node": (
        "node.renewed",
        lambda s, w, rm, fp: s.renew_node("hospital-a", fp("c:new"), fp("k:new"), "admin"),
    ),
    "set_node_online": (
        "node.connected",
        lambda s, w, rm, fp: s.set_node_online(w.node_id, True, actor=node_actor("a")),
    ),
    "record_event": (
        "superlink.insecure",
        lambda s, w, rm, fp: s.record_event("superlink.insecure", {"value": 1}, audited=True),
    ),
    "fail_in_flight_runs": ("run.failed", lambda s, w, rm, fp: s.fail_in_flight_runs()),
    "record_round": ("round.completed", lambda s, w, rm, fp: s.record_round(w.run_id, "round-1")),
    "record_audit": (
        "auth.refused",
        lambda s, w, rm, fp: s.record_audit("auth.refused", subjects={}, details={}),
    ),
}


@pytest.mark.parametrize("call", sorted(FAILING_CALLS))
def test_a_refusing_sink_fails_the_change_closed(state, world, reply_meta, fp, call):
    action, do = FAILING_CALLS[call]
    before = _snapshot(state)
    seen: list[str] = []

    def refuse(session, action, *, actor, subjects, details):
        seen.append(action)
        raise RuntimeError("sink down")

    state.attach_audit(refuse)
    message = re.escape(f"audit entry {action} was not written: sink down")
    with pytest.raises(AuditFailed, match=message) as e:
        do(state, world, reply_meta, fp)
    assert isinstance(e.value.__cause__, RuntimeError)
    assert seen == [action]
    assert _snapshot(state) == before
    assert state.get_message(world.request_id).status is MessageStatus.DELIVERED
    assert state.get_run(world.run_id).status is RunStatus.RUNNING


def test_unaudited_changes_pass_a_refusing_sink(state, world, make_run, request_meta, body):
    pending = make_run(RunStatus.PENDING)

    def refuse(session, action, *, actor, subjects, details):
        raise AssertionError(f"{action} must not be audited")

    state.attach_audit(refuse)
    state.transition_run(pending.run_id, RunStatus.STARTING, actor=ALICE)
    state.touch_node(world.node_id)
    state.set_node_online(world.node_id, False, actor=node_actor("hospital-a"))
    assert state.mark_all_nodes_offline() == 0
    state.put_bundle([b"another bundle"], max_bytes=1024)
    meta = request_meta(world.run_id, world.node_id)
    state.queue_message(meta, body)
    state.mark_delivered(meta.message_id, world.node_id)
    synthetic = state.store_synthetic_error_reply(meta.message_id, ErrorCode.NODE_UNAVAILABLE, "x")
    assert state.mark_replies_delivered([synthetic.message_id]) == 1
    state.append_log(world.run_id, "stdout", "round 1")
    state.record_event("operator.note", {"ratio": 0.5})


def test_an_entry_failing_in_the_log_rolls_back_and_the_log_continues(state, world, tmp_path):
    trail = attach_audit(state, checkpoint_every=2)
    state.record_audit("auth.refused", subjects={}, details={"peer": "ipv4:10.0.0.1:1"})

    # A float in details: the log refuses it (CanonicalJSONError) -> AuditFailed.
    with pytest.raises(AuditFailed, match=r"superlink\.insecure was not written") as e:
        state.record_event("superlink.insecure", {"ratio": 0.5}, audited=True)
    assert isinstance(e.value.__cause__, audit.CanonicalJSONError)
    with pytest.raises(AuditFailed) as e:
        state.record_audit("auth.refused", subjects={}, details={"ratio": 0.5})
    assert isinstance(e.value.__cause__, audit.CanonicalJSONError)
    # An action outside the vocabulary -> MalformedEntry -> AuditFailed.
    with pytest.raises(AuditFailed) as e:
        state.record_event("operator.custom", {}, audited=True)
    assert isinstance(e.value.__cause__, audit.MalformedEntry)
    assert state.list_events() == []

    # The entry (and at seq 1, a tree head of size 2) is written in the
    # transaction, then the transaction fails after it: both roll back.
    def write_then_fail(session, action, **kw):
        trail.sink(session, action, **kw)
        raise RuntimeError("later step failed")

    state.attach_audit(write_then_fail)
    with pytest.raises(AuditFailed, match="later step failed"):
        state.transition_run(world.run_id, RunStatus.FINISHED, actor=ALICE)
    assert state.get_run(world.run_id).status is RunStatus.RUNNING
    assert [e.seq for e in trail.entries()] == [0]

    state.attach_audit(trail.sink)
    state.transition_run(world.run_id, RunStatus.STOPPED, "enough", actor=ALICE)
    state.record_audit("auth.refused", subjects={}, details={"peer": "ipv4:10.0.0.2:1"})
    entries = trail.export(tmp_path / "export")
    assert [(e.seq, e.action) for e in entries] == [
        (0, "auth.refused"),
        (1, "run.stopped"),
        (2, "auth.refused"),
    ]
    assert entries[1].details == {"reason": "enough"}
    assert entries[1].prev == audit.entry_leaf_hash(entries[0])


# -- restart, rounds ------------------------------------------------------------------------


def test_recover_after_restart_audits_each_in_flight_run(backend, state, make_run, make_node):
    node = make_node()
    state.set_node_online(node.node_id, True)
    runs = {status: make_run(status) for status in RunStatus}
    state.close()

    reopened = backend.open()
    try:
        trail = attach_audit(reopened)
        recovery = reopened.recover_after_restart()
        in_flight = sorted(runs[s].run_id for s in (S.PENDING, S.STARTING, S.RUNNING))
        assert recovery.failed_run_ids == tuple(in_flight)
        assert [summary(e) for e in trail.entries()] == [
            ("run.failed", audit.SYSTEM, {"run_id": str(r)}, {"reason": RESTART_REASON})
            for r in in_flight
        ]
        assert reopened.recover_after_restart().failed_run_ids == ()
        assert len(trail.entries()) == len(in_flight)  # nothing more, and offline is silent
    finally:
        reopened.close()


def test_record_round_summarises_replied_and_failed_nodes(
    state, make_run, make_node, request_meta, reply_meta, body
):
    run = make_run(RunStatus.RUNNING)
    ok, crashed, gone, late = (make_node(n).node_id for n in ("a", "b", "c", "d"))
    requests = {n: request_meta(run.run_id, n) for n in (ok, crashed, gone, late)}
    other_round = request_meta(run.run_id, late, group_id="round-2")
    for meta in [*requests.values(), other_round]:
        state.queue_message(meta, body)
        state.mark_delivered(meta.message_id, meta.dst_node_id)
    trail = attach_audit(state)

    state.store_reply(reply_meta(requests[ok]), body, None, None, actor=node_actor("a"))
    failed_reply = reply_meta(requests[crashed])
    state.store_reply(failed_reply, None, (ErrorCode.CLIENT_APP_CRASHED, "boom"), None)
    state.store_synthetic_error_reply(
        requests[gone].message_id, ErrorCode.NODE_UNAVAILABLE, "node went away"
    )
    state.store_reply(reply_meta(other_round), body, None, None)  # another round
    # ``late`` has not answered round-1: neither replied nor failed.

    replied, failed = state.record_round(run.run_id, "round-1")
    assert (replied, failed) == ([ok], sorted([crashed, gone]))
    entries = trail.entries()
    assert [e.action for e in entries] == ["reply.received"] * 3 + ["round.completed"]
    assert entries[1].to_json()["details"] == {
        "sha256": hashlib.sha256(b"").hexdigest(),
        "bytes": 0,
        "message_type": "train",
        "group_id": "round-1",
        "error_code": int(ErrorCode.CLIENT_APP_CRASHED),
    }
    assert entries[1].actor == audit.SYSTEM
    assert summary(entries[3]) == (
        "round.completed",
        audit.SYSTEM,
        {"run_id": str(run.run_id)},
        {
            "group_id": "round-1",
            "replied": [str(ok)],
            "failed": [str(n) for n in sorted([crashed, gone])],
        },
    )
    assert state.record_round(run.run_id, "round-9") == ([], [])
    assert trail.entries()[-1].to_json()["details"] == {
        "group_id": "round-9",
        "replied": [],
        "failed": [],
    }
    with pytest.raises(RunNotFound):
        state.record_round(12345, "round-1")
    assert len(trail.entries()) == 5


# -- concurrency ----------------------------------------------------------------------------

THREADS = 4
PER_THREAD = 10


def test_concurrent_audited_writes_keep_one_contiguous_log(state, make_node, tmp_path):
    nodes = [make_node(f"site-{i}").node_id for i in range(THREADS)]
    trail = attach_audit(state, checkpoint_every=7)

    def writer(i: int) -> Callable[[], None]:
        actor = node_actor(f"site-{i}")

        def go() -> None:
            for j in range(PER_THREAD):
                if j % 2:
                    state.touch_node(nodes[i])
                    state.set_node_online(nodes[i], True, actor=actor)
                else:
                    state.record_audit(
                        "auth.refused", actor=actor, subjects={}, details={"i": i, "j": j}
                    )

        return go

    start_together([writer(i) for i in range(THREADS)])

    entries = trail.export(tmp_path / "export")
    assert [e.seq for e in entries] == list(range(THREADS * PER_THREAD))
    assert all(e.prev == audit.entry_leaf_hash(p) for p, e in itertools.pairwise(entries))
    assert Counter(e.action for e in entries) == {
        "auth.refused": THREADS * PER_THREAD // 2,
        "node.connected": THREADS * PER_THREAD // 2,
    }
    refused = {(e.details["i"], e.details["j"]) for e in entries if e.action == "auth.refused"}
    assert refused == {(i, j) for i in range(THREADS) for j in range(0, PER_THREAD, 2)}
    connected = Counter(e.subjects["node"] for e in entries if e.action == "node.connected")
    assert connected == {str(n): PER_THREAD // 2 for n in nodes}
    assert all(e.actor.role == "node" for e in entries)
    assert trail.log.size == THREADS * PER_THREAD


# -- without a sink -------------------------------------------------------------------------


def test_without_a_sink_nothing_is_audited(state, fp, make_run):
    node = state.enrol_node("hospital-a", fp("c"), fp("k"), "admin", actor=ADMIN)
    state.set_node_online(node.node_id, True, actor=node_actor("hospital-a"))
    run = make_run(RunStatus.RUNNING)
    state.transition_run(run.run_id, RunStatus.FINISHED, actor=ALICE)
    state.record_event("superlink.insecure", {"ratio": 0.5}, audited=True)  # no float check
    assert state.record_audit("auth.refused", subjects={}, details={"x": 0.5}) is None
    assert state.record_round(run.run_id, "round-1") == ([], [])
    state.remove_node("hospital-a", actor=ADMIN)
    inspector = sa.inspect(state.writer_engine)
    assert not any(inspector.has_table(t.name) for t in audit_metadata.sorted_tables)

"""Named attacks by a SuperLink operator, caught by reconciling a site's log (issue 7).

A site (SuperNode) and the SuperLink each keep an audit log with the entry
shapes of docs/audit.md: the site logs ``egress.reply`` before a reply leaves
and ``checkpoint.seen`` for every SuperLink tree head it pulls; the SuperLink
logs ``reply.received``. The operator controls the SuperLink, its database
and its audit key, but not the site's log.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit import (
    SYSTEM,
    Action,
    Actor,
    AuditLog,
    FindingKind,
    LogForked,
    NoteSigner,
    ReconcileReport,
    Witness,
    export,
    reconcile,
)
from audit.note import KeyType
from audit.schema import iter_lines

NODE = "hospital-a"
NODE_ACTOR = Actor(identity="CN=hospital-a,O=Hospital A", role="node")


def make_clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    start = datetime(2025, 7, 1, tzinfo=UTC)
    return lambda: start + timedelta(seconds=next(ticks))


def open_log(path: Path, signer: NoteSigner, clock: Callable[[], datetime]) -> AuditLog:
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    return AuditLog(engine, signer=signer, clock=clock, checkpoint_every=8)


class World:
    """One site, one SuperLink, a shared clock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = make_clock()
        self.link_signer = NoteSigner(
            name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate()
        )
        site_signer = NoteSigner(name="hospital-a/site", private_key=Ed25519PrivateKey.generate())
        self.site_signer = site_signer
        self.link = open_log(directory / "link.db", self.link_signer, self.clock)
        self.site = open_log(directory / "site.db", site_signer, self.clock)

    def reply(self, n: int, *, log: AuditLog | None = None, content: bytes | None = None) -> None:
        subjects = {"run_id": "run-1", "message_id": f"reply-{n}", "request_id": f"task-{n}"}
        subjects["node"] = NODE
        body = f"weights-{n}".encode()
        self.site.append(
            SYSTEM,
            Action.EGRESS_REPLY,
            subjects,
            {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "records": ["arrays"]},
        )
        received = body if content is None else content
        (log or self.link).append(
            NODE_ACTOR,
            Action.REPLY_RECEIVED,
            subjects,
            {"sha256": hashlib.sha256(received).hexdigest(), "bytes": len(received)},
        )

    def pull(self, log: AuditLog | None = None) -> str:
        note = (log or self.link).checkpoint()
        self.site.append(SYSTEM, Action.CHECKPOINT_SEEN, {"origin": "superlink"}, {"note": note})
        return note

    def reconcile(self, link: AuditLog | None = None) -> ReconcileReport:
        name = f"e{len(list(self.directory.glob('site-*')))}"
        export(self.site, self.directory / f"site-{name}")
        export(link or self.link, self.directory / f"link-{name}")
        return reconcile(
            self.directory / f"site-{name}",
            self.directory / f"link-{name}",
            site_key=self.site_signer.verifier_key(),
            link_key=self.link_signer.verifier_key(),
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    for n in range(3):
        w.reply(n)
        w.pull()
    return w


def kinds(report: ReconcileReport) -> list[FindingKind]:
    return [f.kind for f in report.findings]


def test_honest_federation_reconciles(world):
    report = world.reconcile()
    assert report.ok, report.findings
    assert report.replies_matched == 3 and report.tree_heads_consistent == 3


def test_superlink_drops_a_reply(world):
    subjects = {"run_id": "run-1", "message_id": "reply-9", "request_id": "t", "node": NODE}
    world.site.append(SYSTEM, Action.EGRESS_REPLY, subjects, {"sha256": "00" * 32, "bytes": 1})
    report = world.reconcile()  # the SuperLink never logged reply-9
    assert kinds(report) == [FindingKind.MISSING_ON_LINK]
    assert report.findings[0].message_id == "reply-9"
    assert report.findings[0].site_entry == 6


def test_superlink_invents_a_reply_from_the_site(world):
    subjects = {"run_id": "run-1", "message_id": "reply-x", "request_id": "t", "node": NODE}
    world.link.append(
        NODE_ACTOR, Action.REPLY_RECEIVED, subjects, {"sha256": "11" * 32, "bytes": 5}
    )
    report = world.reconcile()
    assert kinds(report) == [FindingKind.MISSING_ON_SITE]
    assert "never logged sending it" in report.findings[0].message
    assert report.findings[0].link_entry == 3


def test_superlink_substitutes_reply_content(world):
    world.reply(7, content=b"poisoned-weights")
    report = world.reconcile()
    assert kinds(report) == [FindingKind.HASH_MISMATCH]
    assert report.findings[0].message_id == "reply-7"


def test_superlink_logs_one_reply_twice_with_different_content(world):
    world.reply(5)
    subjects = {"run_id": "run-1", "message_id": "reply-5", "request_id": "task-5", "node": NODE}
    world.link.append(
        NODE_ACTOR, Action.REPLY_RECEIVED, subjects, {"sha256": "22" * 32, "bytes": 1}
    )
    report = world.reconcile()
    assert kinds(report) == [FindingKind.CONFLICTING_REPLY]
    assert "2 different hashes" in report.findings[0].message


def test_superlink_rewrites_history_after_the_site_saw_it(world, witness_key):
    """The operator rebuilds the log with the real key, the original times and one
    reply altered, re-signing every tree head: the forged export verifies on its
    own, but the tree heads the site stored expose the fork, and a witness that
    cosigned the original refuses the rewritten one."""
    witness = Witness(signer=witness_key, log_key=world.link.verifier_key, clock=world.clock)
    seen = witness.cosign(world.link.checkpoint()).witness
    with world.link.engine.connect() as conn:
        lines = [json.loads(line) for line in iter_lines(conn)]
    replay = iter([datetime.fromisoformat(x["time"]) for x in lines for _ in range(2)])
    forged = open_log(world.directory / "forged.db", world.link_signer, lambda: next(replay))
    for n, original in enumerate(lines):
        details = original["details"]
        if n == 1:
            details = {"sha256": hashlib.sha256(b"weights-altered").hexdigest(), "bytes": 15}
        forged.append(NODE_ACTOR, Action.REPLY_RECEIVED, original["subjects"], details)
        forged.checkpoint()
    report = world.reconcile(forged)
    assert kinds(report) == [FindingKind.HASH_MISMATCH, FindingKind.FORKED, FindingKind.FORKED]
    fork = report.findings[1]
    assert fork.tree_size == 2 and "forked or rewritten" in fork.message
    assert report.tree_heads_consistent == 1  # size 1 still matches: the edit is at entry 1
    with pytest.raises(LogForked, match="does not extend"):
        seen.cosign(forged.checkpoint(), forged.consistency_proof(3, 3).hashes)


def test_superlink_restored_from_an_old_backup(world):
    """The operator restores yesterday's database (a roll-back): the tree heads the
    site stored since are larger than the restored log."""
    world.link.close()
    shutil.copy(world.directory / "link.db", world.directory / "backup.db")
    world.link = open_log(world.directory / "link.db", world.link_signer, world.clock)
    world.reply(3)
    world.pull()
    restored = open_log(world.directory / "backup.db", world.link_signer, world.clock)
    report = world.reconcile(restored)
    assert kinds(report) == [FindingKind.MISSING_ON_LINK, FindingKind.ROLLED_BACK]
    assert report.findings[1].tree_size == 4
    assert "rolled back or truncated" in report.findings[1].message


def test_site_fed_a_tree_head_by_an_impostor(world):
    impostor = NoteSigner(name=world.link_signer.name, private_key=Ed25519PrivateKey.generate())
    fake = open_log(world.directory / "fake.db", impostor, world.clock)
    fake.append(SYSTEM, Action.SUPERLINK_STARTED)
    world.pull(fake)
    report = world.reconcile()
    assert kinds(report) == [FindingKind.BAD_TREE_HEAD]
    assert "carries no signature by the log key" in report.findings[0].message


@pytest.fixture
def witness_key() -> NoteSigner:
    return NoteSigner(
        name="witness.hospital-a.example",
        private_key=Ed25519PrivateKey.generate(),
        key_type=KeyType.COSIGNATURE_V1,
    )

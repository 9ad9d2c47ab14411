"""Fixtures for the audit library: a deterministic clock, keys, and database backends.

``engine`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and
``postgresql`` (a fresh schema in the database named by
``GREENHOUSE_TEST_POSTGRES_URL``, dropped afterwards). Without that variable the
PostgreSQL cases skip, unless ``GREENHOUSE_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

from audit import SYSTEM, Action, Actor, AuditLog, export
from audit.note import KeyType, NoteSigner

PG_URL_ENV = "GREENHOUSE_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "GREENHOUSE_REQUIRE_POSTGRES"
PG_SKIP_REASON = "PostgreSQL tests need GREENHOUSE_TEST_POSTGRES_URL (set by .ci/run)"


class Clock:
    """Deterministic: starts at 2025-01-01 UTC and moves one millisecond per call."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate())


@pytest.fixture
def witness() -> NoteSigner:
    return NoteSigner(
        name="witness.hospital-a.example/w1",
        private_key=Ed25519PrivateKey.generate(),
        key_type=KeyType.COSIGNATURE_V1,
    )


def _postgres_base_url() -> str:
    url = os.environ.get(PG_URL_ENV, "")
    if url:
        return url
    if os.environ.get(REQUIRE_PG_ENV) == "1":
        pytest.fail(f"{PG_SKIP_REASON}; {REQUIRE_PG_ENV}=1 makes this a failure")
    pytest.skip(PG_SKIP_REASON)


def sqlite_engine(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        eng = sqlite_engine(tmp_path / "audit.db")
        yield eng
        eng.dispose()
        return
    base = _postgres_base_url()
    schema = f"gh_audit_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    eng = sa.create_engine(url, poolclass=NullPool)
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


class Federation:
    """A SuperLink log and one site's log, written with the entry shapes the runtime
    must use (docs/audit.md "Entries the runtime writes"), both SQLite files."""

    NODE = "hospital-a"

    def __init__(self, directory: Path, clock: Clock) -> None:
        self.directory = directory
        self.link_signer = NoteSigner(
            name="audit.example.org/superlink", private_key=Ed25519PrivateKey.generate()
        )
        self.site_signer = NoteSigner(
            name="hospital-a.example/supernode", private_key=Ed25519PrivateKey.generate()
        )
        self.link = AuditLog(
            sqlite_engine(directory / "link.db"),
            signer=self.link_signer,
            clock=clock,
            checkpoint_every=4,
        )
        self.site = AuditLog(
            sqlite_engine(directory / "site.db"),
            signer=self.site_signer,
            clock=clock,
            checkpoint_every=4,
        )
        self.node_actor = Actor(identity="CN=hospital-a,O=Hospital A", role="node")

    def instruction(self, run_id: str, message_id: str, content: bytes = b"task") -> None:
        self.site.append(
            SYSTEM,
            Action.MESSAGE_RECEIVED,
            {"run_id": run_id, "message_id": message_id, "node": self.NODE},
            {
                "message_type": "train",
                "app_sha256": "ab" * 32,
                "bytes": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            },
        )

    def reply(
        self,
        run_id: str,
        message_id: str,
        request_id: str,
        content: bytes,
        *,
        on_site: bool = True,
        on_link: bool = True,
        link_content: bytes | None = None,
        node: str | None = None,
    ) -> None:
        subjects = {
            "run_id": run_id,
            "message_id": message_id,
            "request_id": request_id,
            "node": node or self.NODE,
        }
        if on_site:
            self.site.append(
                SYSTEM,
                Action.EGRESS_REPLY,
                subjects,
                {
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "bytes": len(content),
                    "records": ["arrays", "metrics"],
                    "metric_keys": ["loss", "num-examples"],
                },
            )
        if on_link:
            received = content if link_content is None else link_content
            self.link.append(
                self.node_actor,
                Action.REPLY_RECEIVED,
                subjects,
                {"sha256": hashlib.sha256(received).hexdigest(), "bytes": len(received)},
            )

    def pull(self) -> str:
        """The site fetches and stores the SuperLink's latest tree head."""
        note = self.link.checkpoint()
        self.seen(note)
        return note

    def seen(self, note: str) -> None:
        self.site.append(
            SYSTEM, Action.CHECKPOINT_SEEN, {"origin": self.link.origin}, {"note": note}
        )

    def export(self, name: str = "x") -> tuple[Path, Path]:
        site_dir = self.directory / f"site-{name}"
        link_dir = self.directory / f"link-{name}"
        export(self.site, site_dir)
        export(self.link, link_dir)
        return site_dir, link_dir

    def keys(self) -> dict[str, str]:
        return {
            "site_key": self.site_signer.verifier_key().encode(),
            "link_key": self.link_signer.verifier_key().encode(),
        }


@pytest.fixture
def federation(tmp_path: Path, clock: Clock) -> Federation:
    fed = Federation(tmp_path, clock)
    fed.instruction("run-1", "task-1")
    fed.reply("run-1", "reply-1", "task-1", b"weights-1")
    fed.pull()
    fed.instruction("run-1", "task-2")
    fed.reply("run-1", "reply-2", "task-2", b"weights-2")
    fed.link.append(
        fed.node_actor,
        "reply.received",
        {"run_id": "run-1", "message_id": "reply-b", "request_id": "t", "node": "hospital-b"},
        {"sha256": "cd" * 32, "bytes": 3},
    )  # another site's reply: not this site's business
    fed.pull()
    return fed

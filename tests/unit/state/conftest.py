"""Fixtures running the one state contract suite against every backend.

``backend`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and
``postgresql`` (a schema of its own in the database named by
``GREENHOUSE_TEST_POSTGRES_URL``, emptied before each test, dropped at the end).
Without that variable the PostgreSQL cases skip, unless
``GREENHOUSE_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from appliance.message import Metadata
from appliance.state import BlobRef, Node, Run, RunStatus, State
from appliance.state.models import Base

PG_URL_ENV = "GREENHOUSE_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "GREENHOUSE_REQUIRE_POSTGRES"
PG_SKIP_REASON = "PostgreSQL tests need GREENHOUSE_TEST_POSTGRES_URL (set by .ci/run)"
T0 = 1_700_000_000.0


class Clock:
    """A settable clock for ``State.open(clock=...)``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """Where a test's state lives; ``open()`` may be called again to simulate a restart."""

    name: str
    url: str
    data_dir: Path
    clock: Clock

    def open(self) -> State:
        return State.open(self.url, data_dir=self.data_dir, clock=self.clock)


def _postgres_base_url() -> str:
    url = os.environ.get(PG_URL_ENV, "")
    if url:
        return url
    if os.environ.get(REQUIRE_PG_ENV) == "1":
        pytest.fail(f"{PG_SKIP_REASON}; {REQUIRE_PG_ENV}=1 makes this a failure")
    pytest.skip(PG_SKIP_REASON)


@dataclass
class Postgres:
    """The session's PostgreSQL schema: its URL and an engine that empties it."""

    url: str
    engine: sa.Engine

    def empty_tables(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A schema of its own in the test database, with the tables created by ``State.open``.

    Created once per session (DDL is the slow part); each test starts from empty
    tables (see ``backend``) and the schema is dropped at the end.
    """
    base = _postgres_base_url()
    schema = f"gh_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    # synchronous_commit=off: test speed only (no fsync wait per commit); semantics unchanged.
    options = f"-csearch_path={schema} -csynchronous_commit=off"
    url = sa.make_url(base).update_query_dict({"options": options})
    rendered = url.render_as_string(hide_password=False)
    cleaner = sa.create_engine(rendered, pool_size=1)
    try:
        State.open(rendered, data_dir=tmp_path_factory.mktemp("pg-init")).close()
        yield Postgres(rendered, cleaner)
    finally:
        cleaner.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'state.db'}", data_dir, Clock())
        return
    pg = request.getfixturevalue("postgres")
    pg.empty_tables()
    yield Backend("postgresql", pg.url, data_dir, Clock())


@pytest.fixture
def state(backend: Backend) -> Iterator[State]:
    opened = backend.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock(backend: Backend) -> Clock:
    return backend.clock


def fingerprint(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


@pytest.fixture
def make_node(state: State) -> Callable[..., Node]:
    def make(name: str = "hospital-a") -> Node:
        return state.enrol_node(
            name, fingerprint(f"cert:{name}"), fingerprint(f"key:{name}"), "admin"
        )

    return make


@pytest.fixture
def make_run(state: State) -> Callable[..., Run]:
    def make(status: RunStatus = RunStatus.RUNNING, owner: str = "alice") -> Run:
        bundle = state.put_bundle([b"bundle bytes"], max_bytes=1024)
        run = state.create_run(owner, bundle.sha256, {"lr": 0.1}, {"num-rounds": 3})
        path = {
            RunStatus.PENDING: [],
            RunStatus.STARTING: [RunStatus.STARTING],
            RunStatus.RUNNING: [RunStatus.STARTING, RunStatus.RUNNING],
            RunStatus.FINISHED: [RunStatus.STARTING, RunStatus.RUNNING, RunStatus.FINISHED],
            RunStatus.FAILED: [RunStatus.FAILED],
            RunStatus.STOPPED: [RunStatus.STOPPED],
        }[status]
        for step in path:
            run = state.transition_run(run.run_id, step)
        return run

    return make


def _request_meta(
    run_id: int, dst_node_id: int, *, ttl: float = 60.0, created_at: float = T0, **extra: object
) -> Metadata:
    fields: dict[str, object] = {
        "run_id": run_id,
        "message_id": uuid.uuid4().hex,
        "src_node_id": 0,
        "dst_node_id": dst_node_id,
        "reply_to_message_id": "",
        "group_id": "round-1",
        "message_type": "train",
        "ttl": ttl,
        "created_at": created_at,
    }
    fields.update(extra)
    return Metadata(**fields)  # type: ignore[arg-type]


def _reply_meta(request: Metadata, src_node_id: int | None = None, **extra: object) -> Metadata:
    fields: dict[str, object] = {
        "run_id": request.run_id,
        "message_id": uuid.uuid4().hex,
        "src_node_id": request.dst_node_id if src_node_id is None else src_node_id,
        "dst_node_id": 0,
        "reply_to_message_id": request.message_id,
        "group_id": request.group_id,
        "message_type": request.message_type,
        "ttl": 30.0,
        "created_at": request.created_at + 1,
    }
    fields.update(extra)
    return Metadata(**fields)  # type: ignore[arg-type]


@pytest.fixture
def request_meta() -> Callable[..., Metadata]:
    """``request_meta(run_id, dst_node_id, ttl=60, created_at=T0, **overrides)``."""
    return _request_meta


@pytest.fixture
def reply_meta() -> Callable[..., Metadata]:
    """``reply_meta(request_metadata, src_node_id=None, **overrides)``."""
    return _reply_meta


@pytest.fixture
def fp() -> Callable[[str], str]:
    """A deterministic SHA-256 hex fingerprint for a label."""
    return fingerprint


@pytest.fixture
def body(state: State) -> BlobRef:
    return state.blobs.put_bytes(b"model weights " * 100)

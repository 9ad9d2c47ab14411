"""Fixtures for the audit library: a deterministic clock, keys, and database backends.

``engine`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and
``postgresql`` (a fresh schema in the database named by
``GREENHOUSE_TEST_POSTGRES_URL``, dropped afterwards). Without that variable the
PostgreSQL cases skip, unless ``GREENHOUSE_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.pool import NullPool

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

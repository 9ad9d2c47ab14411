"""Ledger database backends: a SQLite file, and PostgreSQL when the tests are given one.

``ledger_url`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and
``postgresql`` (a fresh schema in the database named by
``GREENHOUSE_TEST_POSTGRES_URL``, dropped afterwards). Without that variable the
PostgreSQL cases skip, unless ``GREENHOUSE_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

PG_URL_ENV = "GREENHOUSE_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "GREENHOUSE_REQUIRE_POSTGRES"
PG_SKIP_REASON = "PostgreSQL tests need GREENHOUSE_TEST_POSTGRES_URL (set by .ci/run)"


def _postgres_base_url() -> str:
    url = os.environ.get(PG_URL_ENV, "")
    if url:
        return url
    if os.environ.get(REQUIRE_PG_ENV) == "1":
        pytest.fail(f"{PG_SKIP_REASON}; {REQUIRE_PG_ENV}=1 makes this a failure")
    pytest.skip(PG_SKIP_REASON)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'budget.db'}"
        return
    base = _postgres_base_url()
    schema = f"gh_dp_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

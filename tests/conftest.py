"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """CLI runs bind structlog to the captured stdout/stderr; never let that outlive a test."""
    yield
    structlog.reset_defaults()

"""Fixtures shared by the SuperNode unit tests."""

from __future__ import annotations

import pytest
import structlog


@pytest.fixture(autouse=True)
def _isolated_logging():
    """CLI runs bind structlog to capsys' stderr; never let that outlive the test."""
    yield
    structlog.reset_defaults()

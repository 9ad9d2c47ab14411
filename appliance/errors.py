"""The root of Greenhouse's runtime exceptions.

Record validation raises the built-in ``TypeError`` / ``ValueError`` (what a data
scientist expects from a constructor); everything else the runtime raises derives
from :class:`ApplianceError`, so a caller (and the CLI) can catch one root.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Root of all errors raised by the ``appliance`` package."""


class AppConfigError(ApplianceError):
    """An app directory, its ``pyproject.toml`` or a run-config override is invalid."""


class GridError(ApplianceError):
    """A ServerApp used its ``Grid`` wrongly (unknown node, message not for this run...)."""


class StrategyError(ApplianceError):
    """A strategy cannot proceed (for example, too few nodes are available)."""

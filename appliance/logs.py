"""structlog configuration, done once per process.

Services (SuperLink, SuperNode, app subprocesses) log JSON lines for operators; the
CLI logs short human-readable lines. The audit log is separate and is the record of
truth; these logs are for operating the system.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging", "get_logger"]

LogFormat = Literal["console", "json"]
_configured: LogFormat | None = None


def configure_logging(fmt: LogFormat = "console", *, level: int = logging.INFO) -> None:
    """Configure structlog for this process (later calls replace the format).

    Args:
        fmt: ``"json"`` for services, ``"console"`` for the CLI.
        level: the lowest level that is written.
    """
    global _configured
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, pad_level=False)
        stamper = structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = fmt


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for ``name``; configures console logging if nothing was configured."""
    if _configured is None:
        configure_logging()
    return structlog.get_logger(name)  # type: ignore[no-any-return]

"""SIGHUP for the long-running commands: a logged answer, never a silent death.

Python's default action for SIGHUP ends the process, and systemd counts a death by
SIGHUP as a clean exit (``Restart=on-failure`` does not restart it), so
``systemctl reload`` (``ExecReload=kill -HUP``) would quietly stop the service.
Until a process reloads something on SIGHUP, it says in its log what it reloads
by itself and what needs a restart.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from appliance.logs import get_logger

__all__ = ["answer_sighup"]

_log = get_logger("appliance.reload")


def answer_sighup(note: str) -> None:
    """On SIGHUP, log ``note`` (what reloads without a restart) and keep running."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        # Logged from a thread: the main thread may hold the log's lock right now.
        threading.Thread(
            target=_log.warning, args=("SIGHUP: nothing reloaded",), kwargs={"detail": note}
        ).start()

    signal.signal(signal.SIGHUP, handler)

"""SIGHUP for the long-running commands: reload now, never a silent death.

Python's default action for SIGHUP ends the process, and systemd counts a death by
SIGHUP as a clean exit (``Restart=on-failure`` does not restart it), so
``systemctl reload`` (``ExecReload=kill -HUP``) would quietly stop the service.
Each long-running command therefore installs :func:`reload_on_sighup` with what it
re-reads: the SuperLink its TLS files and CRL, the SuperNode its site policy, CRL,
certificate and keys.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from appliance.logs import get_logger

__all__ = ["reload_on_sighup"]

_log = get_logger("appliance.reload")


def reload_on_sighup(reload: Callable[[], None]) -> None:
    """On SIGHUP, run ``reload`` in a thread of its own and keep running.

    The work is not done in the handler: a handler runs between two bytecodes of the
    main thread, which may hold the log's or a file's lock right then. An exception
    from ``reload`` is logged; the process goes on with what it had.
    """

    def run() -> None:
        try:
            reload()
        except Exception:
            _log.exception("SIGHUP: reload failed; the process keeps what it had")

    def handler(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=run, name="sighup", daemon=True).start()

    signal.signal(signal.SIGHUP, handler)

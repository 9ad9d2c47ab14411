"""Entry point of a run's ClientApp subprocess: confine the process first, then serve.

The SuperNode starts ``python -m appliance.supernode.clientapp_entry APP_DIR``. The
site's ``[execution]`` limits (JSON in ``GREENHOUSE_CLIENT_LIMITS``) are applied
before anything else is imported: numpy's thread pool would make the process
multi-threaded, and only a single-threaded process can enter a new user namespace.
No app code is imported before the limits hold; if they cannot be applied, the
process answers every message with an error instead of loading the app.
"""

from __future__ import annotations

import json
import os
import sys

from appliance.allocator import keep_freed_buffers
from appliance.supernode.limits import LimitError, ResourceLimits, apply_limits

__all__ = ["ENV_LIMITS", "main"]

ENV_LIMITS = "GREENHOUSE_CLIENT_LIMITS"


def confine() -> str:
    """Apply the limits named in the environment; the reason they could not be, or ``""``."""
    raw = os.environ.pop(ENV_LIMITS, "")
    if not raw:
        return ""
    try:
        apply_limits(ResourceLimits(**json.loads(raw)))
    except (LimitError, TypeError, ValueError) as exc:
        return f"the site's [execution] limits could not be applied: {exc}"
    return ""


def main(argv: list[str]) -> int:
    """Confine, then hand over to :mod:`appliance.supernode.clientapp_process`."""
    refused = confine()
    keep_freed_buffers()
    from appliance.supernode import clientapp_process

    return clientapp_process.main(argv, refused=refused)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

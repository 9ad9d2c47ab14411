"""The environment the runtime gives the app processes it starts (ServerApp, ClientApp).

Scrubbed: only the variables an interpreter needs are inherited, so no operator
secret, proxy setting or credential in the service's environment reaches app code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["INHERITED_ENV", "scrubbed_env"]

#: Variables an app process inherits; everything else is dropped.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS")


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The inherited variables of this process, plus ``extra``."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(extra or {})
    return env

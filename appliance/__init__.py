"""Greenhouse's federation runtime and the data scientist's Message API.

Example:
    >>> from appliance import ClientApp, Message, RecordDict
    >>> app = ClientApp()
    >>> @app.evaluate()
    ... def evaluate(msg, ctx):
    ...     return Message(RecordDict(), reply_to=msg)

The leaf layer (records, message, context, apps, grid) is what ``secagg``, ``dp``,
``audit`` and ``certs`` may import; the SuperLink, SuperNode and CLI compose it all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.clientapp import CallNext, ClientApp, Mod
    from appliance.context import Context
    from appliance.errors import ApplianceError
    from appliance.grid import Grid
    from appliance.message import Error, ErrorCode, Message, MessageType, Metadata
    from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from appliance.serverapp import ServerApp

# The public names are imported on first use (PEP 562), so that importing a light
# submodule (``appliance.errors``, ``appliance.supernode.limits``) does not load numpy:
# its thread pool would make the ClientApp process multi-threaded before it confines
# itself, and a multi-threaded process cannot enter a new user namespace.
_HOMES = {
    "ApplianceError": "appliance.errors",
    "ArrayRecord": "appliance.records",
    "CallNext": "appliance.clientapp",
    "ClientApp": "appliance.clientapp",
    "ConfigRecord": "appliance.records",
    "Context": "appliance.context",
    "Error": "appliance.message",
    "ErrorCode": "appliance.message",
    "Grid": "appliance.grid",
    "Message": "appliance.message",
    "MessageType": "appliance.message",
    "Metadata": "appliance.message",
    "MetricRecord": "appliance.records",
    "Mod": "appliance.clientapp",
    "RecordDict": "appliance.records",
    "ServerApp": "appliance.serverapp",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'appliance' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "ApplianceError",
    "ArrayRecord",
    "CallNext",
    "ClientApp",
    "ConfigRecord",
    "Context",
    "Error",
    "ErrorCode",
    "Grid",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "Mod",
    "RecordDict",
    "ServerApp",
]

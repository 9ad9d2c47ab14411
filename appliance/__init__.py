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

from appliance.clientapp import CallNext, ClientApp, Mod
from appliance.context import Context
from appliance.errors import ApplianceError
from appliance.grid import Grid
from appliance.message import Error, ErrorCode, Message, MessageType, Metadata
from appliance.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from appliance.serverapp import ServerApp

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

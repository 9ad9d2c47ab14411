"""The context a ServerApp or ClientApp runs in."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.records import RecordDict

__all__ = ["Context", "UserConfig", "UserConfigValue"]

UserConfigValue = bool | int | float | str
UserConfig = dict[str, UserConfigValue]


@dataclass
class Context:
    """Where an app runs: its run, its node, its configuration and its state.

    Attributes:
        run_id: the run this app belongs to.
        node_id: the node it runs on (``0`` for the ServerApp).
        node_config: the site's own settings (e.g. a data path or partition id).
        run_config: the run's configuration (app defaults plus overrides).
        state: records that persist across the messages of one run on one node.
    """

    run_id: int
    node_id: int
    node_config: UserConfig = field(default_factory=dict)
    run_config: UserConfig = field(default_factory=dict)
    state: RecordDict = field(default_factory=RecordDict)

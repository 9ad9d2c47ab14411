"""The local runner: a ServerApp and a ClientApp in one process with N logical nodes.

This is the data scientist's inner loop and the fast test path. Each logical node
has its own ``node_config`` (by default ``partition-id`` and ``num-partitions``)
and its own per-run ``state``. Every message and every reply goes through the real
wire encoding (:mod:`appliance.wire`), so what fails to encode or decode here fails
the same way in a deployment.

Nodes run one at a time, when the ServerApp waits for their replies, so at most one
message body is in flight: memory stays O(model). A handler cannot be interrupted,
so a step's timeout is checked between nodes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.appconfig import load_app_spec, load_component, merge_run_config
from appliance.clientapp import CallNext, ClientApp, ErrorDetail, Mod
from appliance.context import Context, UserConfig
from appliance.errors import ApplianceError, GridError
from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import SERVER_NODE_ID, Error, ErrorCode, Message
from appliance.records import RecordDict
from appliance.serverapp import ServerApp
from appliance.wire import decode_message, encode_message

__all__ = [
    "LocalGrid",
    "LocalNode",
    "LocalRun",
    "RunFailed",
    "make_nodes",
    "run_local",
    "run_local_app",
]

_log = get_logger("appliance.local")


class RunFailed(ApplianceError):
    """The ServerApp of a run raised; the message names the exception."""


class _LocalSecAgg:
    """The SecAgg+ host mod a SuperNode would run, for logical nodes in one process.

    Built on the first SecAgg+ message, with an in-process keyring standing in for
    the federation CA (it warns that it is unsafe outside local runs). It adds the
    nodes' noise shares when the run's plan is distributed DP.
    """

    def __init__(self) -> None:
        self._mod: Mod | None = None

    def __call__(self, message: Message, context: Context, call_next: CallNext) -> Message:
        from secagg import MESSAGE_TYPES, UnsafeLocalKeyring, make_secagg_mod

        if message.metadata.message_type not in set(MESSAGE_TYPES.values()):
            return call_next(message, context)
        if self._mod is None:
            from appliance.distributed_dp import SkellamEncoder

            self._mod = make_secagg_mod(
                UnsafeLocalKeyring().source(), integer_encoder=SkellamEncoder()
            )
        return self._mod(message, context, call_next)


@dataclass
class LocalNode:
    """One logical node: its id, its site config and its per-run state."""

    node_id: int
    node_config: UserConfig
    state: RecordDict = field(default_factory=RecordDict)


class LocalGrid(Grid):
    """A :class:`Grid` whose nodes are :class:`LocalNode` objects in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        nodes: Sequence[LocalNode],
        *,
        run_id: int = 1,
        run_config: UserConfig | None = None,
        error_detail: ErrorDetail = ErrorDetail.TRACEBACK,
    ) -> None:
        self._client_app = client_app
        self._nodes = {node.node_id: node for node in nodes}
        self._run_id = run_id
        self._run_config = dict(run_config or {})
        self._error_detail = error_detail
        # Like a SuperNode, answer SecAgg+ rounds unless the app brings its own SecAgg+ mod.
        from secagg import is_secagg_mod

        own = any(is_secagg_mod(mod) for mod in client_app.mods)
        self._host_mods: list[Mod] = [] if own else [_LocalSecAgg()]
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._seen_ids: set[str] = set()
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def run_id(self) -> int:
        return self._run_id

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        batch = [self._admit(message) for message in messages]
        ids = [m.metadata.message_id for m in batch]
        for message in batch:
            self._pending[message.metadata.message_id] = message
            self._seen_ids.add(message.metadata.message_id)
        return ids

    def _admit(self, message: Message) -> Message:
        meta = message.metadata
        if meta.reply_to_message_id or message.has_error():
            raise GridError("a ServerApp can only push new messages, not replies")
        if meta.run_id not in (0, self._run_id):
            raise GridError(
                f"message is for run {meta.run_id}, this grid serves run {self._run_id}"
            )
        if meta.dst_node_id not in self._nodes:
            raise GridError(f"node {meta.dst_node_id} is not part of run {self._run_id}")
        if meta.message_id in self._seen_ids:
            raise GridError(f"message id {meta.message_id} was already pushed")
        return message.with_metadata(run_id=self._run_id, src_node_id=SERVER_NODE_ID)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return list(self.receive(message_ids, timeout=None))

    def receive(
        self, message_ids: Iterable[str], *, timeout: float | None = None
    ) -> Iterator[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        for message_id in list(message_ids):
            if deadline is not None and time.monotonic() > deadline:
                return
            if message_id in self._pending:
                self._replies[message_id] = self._deliver(self._pending.pop(message_id))
            reply = self._replies.pop(message_id, None)
            if reply is not None:
                yield reply

    def _deliver(self, message: Message) -> Message:
        """Encode the message, run the node's ClientApp on the decoded copy, decode the reply."""
        encoded = encode_message(message)
        self.bytes_sent += len(encoded)
        received = decode_message(encoded)
        del encoded
        node = self._nodes[received.metadata.dst_node_id]
        if received.is_expired():
            reply = Message(
                Error(ErrorCode.MESSAGE_EXPIRED, "message expired before delivery"),
                reply_to=received,
            )
        else:
            context = Context(
                run_id=self._run_id,
                node_id=node.node_id,
                node_config=node.node_config,
                run_config=dict(self._run_config),
                state=node.state,
            )
            reply = self._client_app(
                received, context, mods=self._host_mods, error_detail=self._error_detail
            )
        encoded_reply = encode_message(reply)
        self.bytes_received += len(encoded_reply)
        return decode_message(encoded_reply)


@dataclass(frozen=True)
class LocalRun:
    """A finished local run: the grid (with byte counts) and the ServerApp's context."""

    grid: LocalGrid
    server_context: Context


def make_nodes(
    num_nodes: int, node_configs: Sequence[UserConfig] | None = None, *, seed: int = 0
) -> list[LocalNode]:
    """``num_nodes`` nodes with distinct seeded ids and default partition configs."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if node_configs is not None and len(node_configs) != num_nodes:
        raise ValueError(f"got {len(node_configs)} node configs for {num_nodes} nodes")
    rng = random.Random(seed)  # noqa: S311 -- reproducible test ids, not a secret
    ids: list[int] = []
    while len(ids) < num_nodes:
        candidate = rng.getrandbits(63) + 1
        if candidate not in ids:
            ids.append(candidate)
    return [
        LocalNode(
            node_id=node_id,
            node_config=dict(node_configs[i])
            if node_configs is not None
            else {"partition-id": i, "num-partitions": num_nodes},
        )
        for i, node_id in enumerate(ids)
    ]


def run_local(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_nodes: int,
    node_configs: Sequence[UserConfig] | None = None,
    run_config: Mapping[str, bool | int | float | str] | None = None,
    seed: int = 0,
    run_id: int = 1,
) -> LocalRun:
    """Run ``server_app`` against ``num_nodes`` logical nodes.

    Raises:
        RunFailed: the ServerApp raised (the original exception is chained).
    """
    nodes = make_nodes(num_nodes, node_configs, seed=seed)
    config = dict(run_config or {})
    grid = LocalGrid(client_app, nodes, run_id=run_id, run_config=config)
    context = Context(run_id=run_id, node_id=SERVER_NODE_ID, run_config=config)
    _log.info("local run started", run_id=run_id, nodes=num_nodes)
    started = time.monotonic()
    try:
        server_app(grid, context)
    except ApplianceError as exc:
        raise RunFailed(f"run {run_id} failed: {exc}") from exc
    except Exception as exc:
        raise RunFailed(
            f"run {run_id} failed: ServerApp raised {type(exc).__name__}: {exc}"
        ) from exc
    _log.info(
        "local run finished",
        run_id=run_id,
        seconds=round(time.monotonic() - started, 2),
        mb_sent=round(grid.bytes_sent / 1e6, 2),
        mb_received=round(grid.bytes_received / 1e6, 2),
    )
    return LocalRun(grid=grid, server_context=context)


def run_local_app(
    app_dir: str | Path,
    *,
    num_nodes: int,
    run_config_overrides: UserConfig | None = None,
    seed: int = 0,
) -> LocalRun:
    """Load the app in ``app_dir`` and run it locally (what ``greenhouse run --local`` does).

    Raises:
        AppConfigError: the app directory or an override is invalid.
        RunFailed: the ServerApp raised.
    """
    spec = load_app_spec(app_dir)
    run_config = merge_run_config(spec.config, run_config_overrides or {})
    server_app = load_component(spec, spec.serverapp, ServerApp)
    client_app = load_component(spec, spec.clientapp, ClientApp)
    return run_local(server_app, client_app, num_nodes=num_nodes, run_config=run_config, seed=seed)

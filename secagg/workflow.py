"""The ServerApp side of SecAgg+: drives :class:`~secagg.ServerRound` over a Grid.

:class:`SecAggPlus` implements :class:`appliance.secure_aggregation.SecureAggregation`,
so a data scientist adds one argument::

    FedAvg(...).start(grid=grid, initial_arrays=arrays, num_rounds=5,
                      secure_aggregation=SecAggPlus(clip_range=0.5))

Each training round then runs the five SecAgg+ stages through ``Grid.push_messages``
and ``Grid.receive`` (replies are handled as they arrive; masked inputs are summed
on arrival, so memory stays O(model)). Every node that errs, times out or breaks a
rule is recorded as a failure and treated as dropped; a round that loses more
than it tolerates fails as a whole (``SecureRoundResult.error``), never with a
wrong mean. This shell does the transport, timeouts and logging; the protocol
logic is in the pure state machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.grid import Grid
from appliance.logs import get_logger
from appliance.message import Message
from appliance.records import ArrayRecord, MetricRecord, RecordDict
from appliance.secure_aggregation import SecureRoundResult
from secagg.codec import MESSAGE_TYPES, TrainSpec, decode_reply, encode_request, encode_setup
from secagg.crypto import Rng
from secagg.errors import ParameterError, ProtocolViolation, SecAggError
from secagg.identity import KeyDirectory
from secagg.messages import ServerMessage, Stage
from secagg.params import ROUND_ID_BYTES, RoundConfig, derive_round_params
from secagg.quantize import SecureMean, decode_sum
from secagg.server import ServerRound

__all__ = ["SecAggPlus"]

_log = get_logger("secagg.workflow")


class SecAggPlus:
    """SecAgg+ for a linear strategy's training rounds (Bell et al. 2020).

    Args:
        dropout_fraction: fraction of participants that may drop after advertising
            keys (sets k and t; see :func:`secagg.choose_parameters`).
        corrupted_fraction: fraction of participants assumed to collude with the server.
        neighbours: explicit k (default: the formula; ``k = n - 1`` is original SecAgg).
        threshold: explicit Shamir threshold t (default: the formula).
        clip_range: each update element (``reply - model``) is clipped to ``[-c, c]``.
        quantization_bits: levels per element are ``2**bits``; the mean is within
            ``2 * clip_range / (2**bits - 1)`` of the exact weighted mean.
        max_weight: largest integer weight (e.g. ``num-examples``) a node may report.
        integer_scale: if set, the round takes *integer inputs*: each node encodes its
            update itself as centred integers in units of ``1 / integer_scale`` (for
            example with its distributed-DP noise share; the node's SecAgg+ mod needs
            an ``integer_encoder``), every node counts once, no metrics travel, and
            the mean is the lifted sum over ``integer_scale`` times the contributors.
            ``clip_range``, ``quantization_bits`` and ``max_weight`` are then unused.
        integer_modulus_bits: the modulus for integer inputs, 32 or 64 bits: it must
            hold the centred sum of every contributor's integers.
        metric_keys: train metrics to average securely (others never leave the sites).
        metric_range: those metrics are clipped to ``[-metric_range, metric_range]``.
        min_participants: fewest nodes that must advertise keys (>= 3).
        stage_timeout_s: seconds per stage after SETUP (default: the strategy's timeout).
        key_directory: optional; lets the server drop nodes with bad signatures early.
        rng: cryptographically secure random bytes (the round id).
        clock: monotonic seconds, for stage timings in the log.
        on_stage_closed: called with a stage's name and how many replies it got, when
            the stage closes (progress display; it runs on the ServerApp's thread).

    Raises:
        ParameterError: the settings are out of range.
    """

    def __init__(
        self,
        *,
        dropout_fraction: float = 0.2,
        corrupted_fraction: float = 0.1,
        neighbours: int | None = None,
        threshold: int | None = None,
        clip_range: float = 1.0,
        quantization_bits: int = 16,
        max_weight: int = 4096,
        integer_scale: float | None = None,
        integer_modulus_bits: int = 64,
        metric_keys: Sequence[str] = (),
        metric_range: float = 100.0,
        min_participants: int = 3,
        stage_timeout_s: float | None = None,
        key_directory: KeyDirectory | None = None,
        rng: Rng = os.urandom,
        clock: Callable[[], float] = time.monotonic,
        on_stage_closed: Callable[[str, int], None] | None = None,
    ) -> None:
        self._settings: dict[str, Any] = {
            "dropout_fraction": dropout_fraction,
            "corrupted_fraction": corrupted_fraction,
            "neighbours": neighbours or 0,
            "threshold": threshold or 0,
            "clip_range": clip_range,
            "quantization_bits": quantization_bits,
            "max_weight": max_weight,
            "metric_range": metric_range,
            "min_participants": min_participants,
        }
        if integer_scale is not None:
            self._settings.update(
                integer_scale=integer_scale,
                integer_modulus_bits=integer_modulus_bits,
                max_weight=1,
            )
        self.metric_keys = tuple(metric_keys)
        if len(set(self.metric_keys)) != len(self.metric_keys):
            raise ParameterError("metric_keys repeats a key")
        # Validate now, for the smallest cohort the round accepts.
        smallest = self._config(b"\x00" * ROUND_ID_BYTES, max(min_participants, 3), 1)
        derive_round_params(smallest, smallest.invited)
        self.stage_timeout_s = stage_timeout_s
        self._directory = key_directory
        self._rng = rng
        self._clock = clock
        self._on_stage_closed = on_stage_closed

    def __repr__(self) -> str:
        """The settings (no secrets here)."""
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"SecAggPlus({settings}, metric_keys={self.metric_keys!r})"

    def _config(self, round_id: bytes, invited: int, num_values: int) -> RoundConfig:
        return RoundConfig(
            round_id=round_id,
            invited=invited,
            num_values=num_values,
            num_metrics=len(self.metric_keys),
            **self._settings,
        )

    def aggregate_round(
        self,
        grid: Grid,
        messages: Sequence[Message],
        *,
        reference: ArrayRecord,
        arrays_key: str,
        weighted_by_key: str,
        timeout: float,
    ) -> SecureRoundResult:
        """Run one SecAgg+ round with the nodes ``messages`` are addressed to.

        Returns:
            The weighted mean of the survivors' arrays and the aggregated metrics, or
            a result with ``error`` set if the round could not complete safely.
        """
        by_node = {m.metadata.dst_node_id: m for m in messages}
        if len(by_node) != len(messages):
            return SecureRoundResult(None, None, 0, error="two train messages for one node")
        for message in messages:
            sent = message.content.get(arrays_key)
            if sent is not reference and sent != reference:
                return SecureRoundResult(
                    None, None, 0, error="train messages must all carry the reference model"
                )
        num_values = sum(a.size for a in reference.values())
        try:
            config = self._config(self._rng(ROUND_ID_BYTES), len(by_node), num_values)
        except ParameterError as exc:
            return SecureRoundResult(None, None, 0, error=f"ParameterError: {exc}")
        spec = TrainSpec(
            arrays_key=arrays_key, weighted_by_key=weighted_by_key, metric_keys=self.metric_keys
        )
        server = ServerRound(config, by_node, key_directory=self._directory)
        failures: dict[int, str] = {}
        try:
            total = self._run(grid, server, by_node, spec, timeout, failures)
            mean = decode_sum(total, config)
        except SecAggError as exc:
            _log.warning("secagg round failed", stage=server.stage.value, error=str(exc))
            return SecureRoundResult(
                None, None, 0, tuple(sorted(failures.items())), f"{type(exc).__name__}: {exc}"
            )
        arrays = _rebuild(reference, mean.values)
        return SecureRoundResult(
            arrays,
            self._metrics(mean, weighted_by_key),
            len(server.survivors),
            tuple(sorted(failures.items())),
        )

    def _metrics(self, mean: SecureMean, weighted_by_key: str) -> MetricRecord:
        metrics = MetricRecord({weighted_by_key: mean.total_weight})
        for key, value in zip(self.metric_keys, mean.metrics.tolist(), strict=True):
            metrics[key] = value
        return metrics

    def _run(
        self,
        grid: Grid,
        server: ServerRound,
        by_node: dict[int, Message],
        spec: TrainSpec,
        timeout: float,
        failures: dict[int, str],
    ) -> npt.NDArray[Any]:
        # One SETUP content for every node sent the same train content: the grid then
        # uploads the model once, not once per node.
        setups: dict[tuple[int, RoundConfig], RecordDict] = {}
        outgoing = []
        for request in server.start():
            train = by_node[request.receiver]
            key = (id(train.content), request.config)
            if key not in setups:
                setups[key] = encode_setup(request, spec, train.content)
            outgoing.append(
                grid.create_message(
                    setups[key],
                    MESSAGE_TYPES[Stage.SETUP],
                    request.receiver,
                    group_id=train.metadata.group_id,
                )
            )
        group = {node: m.metadata.group_id for node, m in by_node.items()}
        stage_timeout = timeout if self.stage_timeout_s is None else self.stage_timeout_s
        self._exchange(grid, server, outgoing, timeout, failures)
        while True:
            requests: tuple[ServerMessage, ...] = server.advance()
            if server.stage is Stage.DONE:
                return server.result()
            outgoing = [
                grid.create_message(
                    encode_request(request),
                    MESSAGE_TYPES[server.stage],
                    request.receiver,
                    group_id=group[request.receiver],
                )
                for request in requests
            ]
            self._exchange(grid, server, outgoing, stage_timeout, failures)

    def _exchange(
        self,
        grid: Grid,
        server: ServerRound,
        outgoing: list[Message],
        timeout: float,
        failures: dict[int, str],
    ) -> None:
        stage = server.stage
        started = self._clock()
        for reply in grid.receive(grid.push_messages(outgoing), timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                error = reply.error
                failures.setdefault(
                    node, f"{stage.value}: error reply {error.code}: {error.reason}"
                )
                continue
            try:
                server.receive(decode_reply(stage, reply))
            except ProtocolViolation as exc:
                failures.setdefault(node, f"{stage.value}: {exc}")
        for node in sorted(server.missing()):
            failures.setdefault(node, f"{stage.value}: no reply before the timeout")
        replies = len(server.expected) - len(server.missing())
        _log.info(
            "secagg stage closed",
            stage=stage.value,
            replies=replies,
            expected=len(server.expected),
            seconds=round(self._clock() - started, 3),
        )
        if self._on_stage_closed is not None:
            self._on_stage_closed(stage.value, replies)


def _rebuild(reference: ArrayRecord, deltas: npt.NDArray[np.float64]) -> ArrayRecord:
    """``reference + mean delta``, each array cast back to its reference dtype."""
    out: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for name, expected in reference.items():
        size = expected.size
        mean = expected.astype(np.float64).reshape(-1) + deltas[offset : offset + size]
        offset += size
        if expected.dtype.kind in "iub":
            mean = np.rint(mean)
        out[name] = mean.reshape(expected.shape).astype(expected.dtype)
    return ArrayRecord(out)

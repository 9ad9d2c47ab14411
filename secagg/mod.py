"""The ClientApp side of SecAgg+: a mod that runs the client state machine over messages.

``make_secagg_mod(credentials)`` returns a :data:`~appliance.clientapp.Mod`. For the
SETUP message (``train.secagg-setup``) it calls the app's ordinary ``train``
handler with the strategy's records, turns the reply (the ArrayRecord under the
spec's ``arrays_key`` and the ``weighted_by_key`` metric) into the SecAgg+ input,
and answers with signed public keys only. The later stages never reach the app.
The plaintext update never leaves this process: it is quantized, held in the
mod's memory (never in ``Context.state`` or any record) and masked.

Inputs are *updates relative to the model the server sent* (``reply - sent``), so
the clipping range bounds a round's change, not the weights themselves; the server
adds the reference back. The weight must be an integer (e.g. ``num-examples``).

Site policy (``min_cohort > 0``) makes the mod refuse, with a ``POLICY_REFUSED``
error reply, any ``train`` message that is not part of a SecAgg+ round and any
round with fewer than ``min_cohort`` invited nodes, participants or survivors.

Integer rounds (``RoundConfig.integer_inputs``): the node encodes its update itself
through the mod's :class:`IntegerEncoder` (say, clip, scale, round and add its
distributed-DP noise share); a node without one refuses such rounds. The encoder
also sees every round's config before the app trains, and may refuse it.

Round state is kept per ``(run_id, node_id)`` in the mod object, so one mod can
serve many logical nodes (the local runner). In a deployment the ClientApp process
lives for the whole run, so the state survives between stages; if it does not,
the node simply drops out of the round.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from appliance.clientapp import CallNext, Mod
from appliance.context import Context
from appliance.logs import get_logger
from appliance.message import Error, ErrorCode, Message
from appliance.records import ArrayRecord, RecordDict
from secagg.client import ClientRound, check_setup_policy
from secagg.codec import (
    STAGE_OF_TYPE,
    TrainSpec,
    decode_request,
    decode_setup,
    encode_reply,
)
from secagg.crypto import Rng
from secagg.errors import (
    MalformedMessage,
    ParameterError,
    PolicyRefused,
    RoundStateError,
    SecAggError,
)
from secagg.identity import CredentialsSource
from secagg.messages import Stage
from secagg.params import RoundConfig
from secagg.quantize import Quantizer

__all__ = ["IntegerEncoder", "is_secagg_mod", "make_secagg_mod"]


class IntegerEncoder(Protocol):
    """How a node encodes its own input for integer rounds, and which rounds it takes."""

    def check(self, config: RoundConfig, context: Context) -> None:
        """Called for every round before the app trains.

        Raises:
            PolicyRefused: the node does not take part in rounds like this one.
        """
        ...

    def encode(
        self, update: npt.NDArray[np.float64], config: RoundConfig, context: Context
    ) -> npt.NDArray[np.int64]:
        """The centred integers an integer round gets for ``update`` (``reply - model``).

        Raises:
            ParameterError: the update cannot be encoded.
        """
        ...


_log = get_logger("secagg.mod")


def _is_train(message_type: str) -> bool:
    return message_type == "train" or message_type.startswith("train.")


def _weight(content: RecordDict, key: str) -> int:
    found = [m[key] for m in content.metric_records.values() if key in m]
    if len(found) != 1 or isinstance(found[0], list):
        raise ParameterError(f"the train reply must report one numeric {key!r} metric")
    value = found[0]
    if isinstance(value, float):
        if not value.is_integer():
            raise ParameterError(f"the SecAgg+ weight {key!r} must be an integer, got {value}")
        value = int(value)
    return int(value)


def _metric(content: RecordDict, key: str) -> float:
    found = [m[key] for m in content.metric_records.values() if key in m]
    if len(found) != 1 or isinstance(found[0], list):
        raise ParameterError(f"the train reply must report one numeric {key!r} metric")
    return float(found[0])


def _flatten_update(
    content: RecordDict, reference: ArrayRecord, spec: TrainSpec, *, weighted: bool = True
) -> tuple[npt.NDArray[np.float64], int]:
    """The SecAgg+ input of a train reply: ``reply - reference`` flattened, metrics, weight.

    Raises:
        ParameterError: the reply's arrays do not match the reference, or its weight
            or a metric is missing or not usable.
    """
    arrays = content.get(spec.arrays_key)
    if not isinstance(arrays, ArrayRecord) or list(arrays) != list(reference):
        raise ParameterError(
            f"the train reply must hold ArrayRecord {spec.arrays_key!r} with the model's arrays"
        )
    parts: list[npt.NDArray[Any]] = []
    for name, expected in reference.items():
        found = arrays[name]
        if found.shape != expected.shape or found.dtype != expected.dtype:
            raise ParameterError(
                f"array {name!r} is {found.dtype.name}{list(found.shape)}, expected "
                f"{expected.dtype.name}{list(expected.shape)}"
            )
        delta = np.subtract(found, expected, dtype=np.float64).reshape(-1)
        parts.append(delta)
    parts.append(np.array([_metric(content, key) for key in spec.metric_keys], dtype=np.float64))
    return np.concatenate(parts), _weight(content, spec.weighted_by_key) if weighted else 1


class _SecAggMod:
    def __init__(
        self,
        credentials: CredentialsSource,
        *,
        min_cohort: int,
        min_corrupted_fraction: float,
        rng: Rng,
        integer_encoder: IntegerEncoder | None,
    ) -> None:
        self._credentials = credentials
        self._encoder = integer_encoder
        self._min_cohort = min_cohort
        self._min_corrupted_fraction = min_corrupted_fraction
        self._rng = rng
        self._rounds: dict[tuple[int, int], ClientRound] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"secagg_mod(min_cohort={self._min_cohort}, rounds={len(self._rounds)})"

    def __call__(self, message: Message, context: Context, call_next: CallNext) -> Message:
        message_type = message.metadata.message_type
        stage = STAGE_OF_TYPE.get(message_type)
        if stage is None:
            if self._min_cohort and _is_train(message_type):
                return _refuse(
                    message,
                    f"site policy requires SecAgg+ with at least {self._min_cohort} "
                    f"participants for training; refused a plain {message_type!r} message",
                )
            return call_next(message, context)
        key = (context.run_id, context.node_id)
        try:
            if stage is Stage.SETUP:
                return self._setup(message, context, call_next, key)
            return self._step(message, key)
        except PolicyRefused as exc:
            self._drop(key)
            _log.warning("secagg round refused", node=context.node_id, stage=stage.value)
            return _refuse(message, f"SecAgg+ {stage.value}: {exc}")
        except SecAggError as exc:
            self._drop(key)
            _log.warning(
                "secagg round abandoned",
                node=context.node_id,
                stage=stage.value,
                error=type(exc).__name__,
            )
            return Message(
                Error(
                    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    f"SecAgg+ {stage.value}: {type(exc).__name__}: {exc}",
                ),
                reply_to=message,
            )

    def _drop(self, key: tuple[int, int]) -> None:
        with self._lock:
            stale = self._rounds.pop(key, None)
        if stale is not None:
            stale.abort()

    def _setup(
        self, message: Message, context: Context, call_next: CallNext, key: tuple[int, int]
    ) -> Message:
        self._drop(key)  # a new round replaces any abandoned one
        request, spec, train_content = decode_setup(message)
        if request.receiver != context.node_id:
            raise MalformedMessage("setup is addressed to another node", stage=Stage.SETUP)
        check_setup_policy(
            request.config,
            min_cohort=self._min_cohort,
            min_corrupted_fraction=self._min_corrupted_fraction,
        )
        reference = train_content.get(spec.arrays_key)
        if not isinstance(reference, ArrayRecord):
            raise MalformedMessage(
                f"setup carries no ArrayRecord {spec.arrays_key!r}", stage=Stage.SETUP
            )
        if sum(a.size for a in reference.values()) != request.config.num_values:
            raise MalformedMessage(
                "setup's model size differs from its num-values", stage=Stage.SETUP
            )
        config = request.config
        if self._encoder is not None:
            self._encoder.check(config, context)
        elif config.integer_inputs:
            raise ParameterError("the round takes integer inputs; this node has no encoder")
        train = Message.from_parts(replace(message.metadata, message_type="train"), train_content)
        reply = call_next(train, context)
        if reply.has_error():
            return Message(reply.error, reply_to=message)
        update, weight = _flatten_update(
            reply.content, reference, spec, weighted=not config.integer_inputs
        )
        del reply
        values: npt.NDArray[Any] = update
        if config.integer_inputs:
            assert self._encoder is not None
            values = self._encoder.encode(update, config, context)
            del update
        else:
            clipped = Quantizer.for_config(config).count_clipped(values)
            if clipped:
                _log.warning("secagg input clipped", node=context.node_id, values=clipped)
        client = ClientRound(
            node_id=context.node_id,
            credentials=self._credentials(context),
            rng=self._rng,
            min_cohort=self._min_cohort,
            min_corrupted_fraction=self._min_corrupted_fraction,
        )
        advertised = client.advertise(request, values, weight)
        with self._lock:
            self._rounds[key] = client
        return Message(encode_reply(advertised), reply_to=message)

    def _step(self, message: Message, key: tuple[int, int]) -> Message:
        with self._lock:
            client = self._rounds.get(key)
        if client is None:
            raise RoundStateError("no SecAgg+ round in progress on this node for this run")
        reply = client.handle(decode_request(message))
        if client.stage is Stage.DONE:
            with self._lock:
                self._rounds.pop(key, None)
        return Message(encode_reply(reply), reply_to=message)


def _refuse(message: Message, reason: str) -> Message:
    return Message(Error(ErrorCode.POLICY_REFUSED, reason), reply_to=message)


def make_secagg_mod(
    credentials: CredentialsSource,
    *,
    min_cohort: int = 0,
    min_corrupted_fraction: float = 0.0,
    rng: Rng = os.urandom,
    integer_encoder: IntegerEncoder | None = None,
) -> Mod:
    """A ClientApp mod that answers SecAgg+ rounds for the node in each message's context.

    Args:
        credentials: gives the node's signer, credential and CA-bound key directory
            for a context (in a deployment the SuperNode supplies it from its signing
            key, certificate and federation CA; see ``docs/secagg.md``).
        min_cohort: site policy; if > 0, plain ``train`` messages are refused and so is
            any round with fewer than this many invited nodes, participants or survivors.
        min_corrupted_fraction: site policy; refuse rounds assuming fewer colluders.
        rng: cryptographically secure random bytes.
        integer_encoder: how this node encodes its update in integer rounds (e.g. with
            its distributed-DP noise share), and which rounds it takes part in.

    Returns:
        The mod; put it in ``ClientApp(mods=[...])`` or pass it as a host mod.

    Raises:
        ValueError: ``min_cohort`` is negative or ``min_corrupted_fraction`` not in [0, 0.5).
    """
    if min_cohort < 0:
        raise ValueError(f"min_cohort must be >= 0, got {min_cohort}")
    if not 0.0 <= min_corrupted_fraction < 0.5:
        raise ValueError(
            f"min_corrupted_fraction must be in [0, 0.5), got {min_corrupted_fraction}"
        )
    return _SecAggMod(
        credentials,
        min_cohort=min_cohort,
        min_corrupted_fraction=min_corrupted_fraction,
        rng=rng,
        integer_encoder=integer_encoder,
    )


def is_secagg_mod(mod: object) -> bool:
    """Whether ``mod`` was made by :func:`make_secagg_mod` (hosts avoid installing two)."""
    return isinstance(mod, _SecAggMod)

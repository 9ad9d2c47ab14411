"""Integer rounds: clients contribute their own centred integers; the server gets the mean."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_harness import SeededRng, drive_round, make_config, node_ids

from appliance import ArrayRecord, Context, Message, MetricRecord, RecordDict
from appliance.message import ErrorCode, Metadata
from secagg import (
    MESSAGE_TYPES,
    ParameterError,
    PolicyRefused,
    ProtocolViolation,
    SetupRequest,
    Stage,
    TrainSpec,
    UnsafeLocalKeyring,
    make_secagg_mod,
)
from secagg.codec import decode_setup, encode_setup
from secagg.quantize import decode_sum

SCALE = 1000.0


def _integer_config(n: int, d: int, *, bits: int = 64, **overrides):
    settings = {"integer_scale": SCALE, "integer_modulus_bits": bits, "max_weight": 1}
    return make_config(n, d, **(settings | overrides))


@pytest.mark.parametrize("bits", [32, 64])
def test_the_mean_of_centred_integers_is_exact_also_negative(bits: int) -> None:
    ids = node_ids(5)
    config = _integer_config(5, 40, bits=bits)
    data = np.random.default_rng(3)
    values = {i: data.integers(-50_000, 50_000, size=40, dtype=np.int64) for i in ids}
    values[ids[0]][:] = -(2**20)  # drags some sums below zero
    outcome = drive_round(config, ids, values=values)
    mean = decode_sum(outcome.total, config)
    expected = np.sum(np.stack(list(values.values())), axis=0) / (SCALE * 5)
    np.testing.assert_array_equal(mean.values, expected)
    assert mean.total_weight == 5 and mean.metrics.size == 0


def test_a_dropout_after_advertising_leaves_only_the_survivors_in_the_sum() -> None:
    ids = node_ids(6, seed=1)
    config = _integer_config(6, 8)
    data = np.random.default_rng(4)
    values = {i: data.integers(-1000, 1000, size=8, dtype=np.int64) for i in ids}
    gone = ids[2]
    outcome = drive_round(config, ids, values=values, drops={Stage.MASKED_INPUT: {gone}})
    mean = decode_sum(outcome.total, config)
    survivors = [v for i, v in values.items() if i != gone]
    np.testing.assert_array_equal(mean.values, np.sum(survivors, axis=0) / (SCALE * 5))
    assert mean.total_weight == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"integer_modulus_bits": 48}, "integer_modulus_bits 32 or 64"),
        ({"num_metrics": 1}, "carry no metrics"),
        ({"max_weight": 7}, "counts once"),
        ({"integer_scale": float("nan")}, "integer_scale must be finite"),
        ({"integer_scale": -2.0}, "integer_scale must be finite"),
    ],
)
def test_integer_configs_are_checked(overrides: dict, message: str) -> None:
    settings = {"integer_scale": SCALE, "integer_modulus_bits": 64, "max_weight": 1}
    settings.update(overrides)
    with pytest.raises(ParameterError, match=message):
        make_config(4, 3, **settings)


def test_a_modulus_without_integer_inputs_is_refused() -> None:
    with pytest.raises(ParameterError, match="only used with integer_scale"):
        make_config(4, 3, integer_modulus_bits=64)


def test_clients_sign_over_the_integer_settings() -> None:
    base = _integer_config(4, 3)
    other_scale = _integer_config(4, 3, integer_scale=SCALE * 2)
    narrower = _integer_config(4, 3, bits=32)
    fixed = make_config(4, 3, max_weight=1)
    digests = {c.digest() for c in (base, other_scale, narrower, fixed)}
    assert len(digests) == 4


def test_the_setup_message_carries_the_integer_settings_only_when_used() -> None:
    spec = TrainSpec()
    for config in (_integer_config(4, 3, bits=32), make_config(4, 3)):
        request = SetupRequest(receiver=5, config=config)
        content = encode_setup(request, spec, RecordDict({"arrays": ArrayRecord([np.zeros(3)])}))
        assert ("integer-scale" in content["secagg"]) is config.integer_inputs
        message = Message.from_parts(
            Metadata(
                run_id=1, message_id="m", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                group_id="1", created_at=0.0, ttl=60.0, message_type=MESSAGE_TYPES[Stage.SETUP],
            ),
            content,
        )  # fmt: skip
        decoded, _, _ = decode_setup(message)
        assert decoded.config == config


def test_clients_refuse_float_inputs_and_weights_in_integer_rounds() -> None:
    ids = node_ids(4)
    config = _integer_config(4, 3)
    with pytest.raises(ParameterError, match="must be 3 integers"):
        drive_round(config, ids, values={i: np.zeros(3) for i in ids})
    from secagg import ClientRound

    keyring = UnsafeLocalKeyring(SeededRng(1))
    client = ClientRound(node_id=ids[0], credentials=keyring.credentials(ids[0]), rng=SeededRng(2))
    with pytest.raises(ParameterError, match=r"weight 2 is outside 1\.\.1"):
        client.advertise(SetupRequest(receiver=ids[0], config=config), np.zeros(3, np.int64), 2)


def test_an_impossible_contributor_count_is_a_protocol_violation() -> None:
    config = _integer_config(4, 2)
    with pytest.raises(ProtocolViolation, match="contributor count 9"):
        decode_sum(np.array([1, 2, 9], dtype=np.uint64), config)
    with pytest.raises(ProtocolViolation, match="contributor count 0"):
        decode_sum(np.array([1, 2, 0], dtype=np.uint64), config)


class _Recorder:
    """An IntegerEncoder that refuses or encodes by rule, and records what it saw."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.checked: list[bool] = []

    def check(self, config, context) -> None:
        self.checked.append(config.integer_inputs)
        if self.refuse:
            raise PolicyRefused("not this round")

    def encode(self, update, config, context):
        return np.rint(update * config.integer_scale).astype(np.int64)


def _setup_message(config, node: int) -> Message:
    content = encode_setup(
        SetupRequest(receiver=node, config=config),
        TrainSpec(),
        RecordDict({"arrays": ArrayRecord([np.zeros(config.num_values)])}),
    )
    return Message.from_parts(
        Metadata(
            run_id=1, message_id="m", src_node_id=0, dst_node_id=node, reply_to_message_id="",
            group_id="1", created_at=0.0, ttl=60.0, message_type=MESSAGE_TYPES[Stage.SETUP],
        ),
        content,
    )  # fmt: skip


def _context(node: int) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def _trained(message: Message, context: Context) -> Message:
    arrays = ArrayRecord([np.full(3, 0.25)])
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 4})})
    return Message(content, reply_to=message)


def test_a_node_without_an_encoder_does_not_join_integer_rounds() -> None:
    keyring = UnsafeLocalKeyring(SeededRng(3))
    mod = make_secagg_mod(keyring.source())
    node = node_ids(1)[0]
    reply = mod(_setup_message(_integer_config(4, 3), node), _context(node), _trained)
    assert reply.has_error()
    assert "no encoder" in reply.error.reason


def test_the_encoder_sees_every_round_first_and_its_refusal_is_a_policy_refusal() -> None:
    keyring = UnsafeLocalKeyring(SeededRng(3))
    node = node_ids(1)[0]
    trained: list[int] = []

    def train(message: Message, context: Context) -> Message:
        trained.append(1)
        return _trained(message, context)

    refusing = _Recorder(refuse=True)
    mod = make_secagg_mod(keyring.source(), integer_encoder=refusing)
    reply = mod(_setup_message(make_config(4, 3), node), _context(node), train)
    assert reply.error.code == ErrorCode.POLICY_REFUSED and "not this round" in reply.error.reason
    assert refusing.checked == [False] and trained == []  # refused before any training
    accepting = _Recorder()
    mod = make_secagg_mod(keyring.source(), integer_encoder=accepting)
    reply = mod(_setup_message(_integer_config(4, 3), node), _context(node), train)
    assert not reply.has_error()
    assert accepting.checked == [True] and trained == [1]

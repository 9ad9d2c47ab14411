"""DP mods through ClientApp(mods=[...]): client-side clipping and local DP."""

import numpy as np
import pytest
from dp_accounting import get_epsilon_gaussian

from appliance import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from dp import (
    ClientSideClippingMod,
    InvalidPrivacyParameter,
    LocalDPMod,
    PrivacySpend,
    PrivacyUnit,
    l2_norm,
)
from dp.clipping import model_delta

GLOBAL = ArrayRecord({"w": np.ones(1_000, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)})


def _app(mod, step=1.0, calls=None):
    app = ClientApp(mods=[mod])

    @app.train()
    def train(msg, ctx):
        if calls is not None:
            calls.append(msg.metadata.message_id)
        arrays = msg.content["arrays"]
        arrays["w"] += np.float32(step)  # edits the received arrays in place, on purpose
        new = ArrayRecord({"w": arrays["w"].copy(), "b": arrays["b"] + np.float32(step)})
        return Message(
            RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg, ctx):
        return Message(RecordDict({"metrics": MetricRecord({"accuracy": 1.0})}), reply_to=msg)

    return app


def _train_message(config=None, message_type="train"):
    arrays = ArrayRecord({k: v.copy() for k, v in GLOBAL.items()})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config or {})})
    return Message(content, dst_node_id=1, message_type=message_type)


def _ctx():
    return Context(run_id=1, node_id=1)


def test_clipping_mod_clips_with_the_servers_norm_when_within_the_site_maximum():
    mod = ClientSideClippingMod(max_clipping_norm=5.0)
    reply = _app(mod)(
        _train_message({"dp-clipping-norm": 2.0, "dp-report-within-clip": True}), _ctx()
    )
    assert not reply.has_error(), reply
    norm = l2_norm(model_delta(reply.content["arrays"], GLOBAL))
    assert norm <= 2.0 and norm == pytest.approx(2.0, rel=1e-5)
    metrics = reply.content["metrics"]
    assert metrics["dp-within-clip"] == 0.0 and metrics["dp-clipping-norm"] == 2.0
    assert metrics["num-examples"] == 10


def test_clipping_mod_refuses_a_larger_server_norm_before_training():
    calls = []
    mod = ClientSideClippingMod(max_clipping_norm=1.0)
    reply = _app(mod, calls=calls)(_train_message({"dp-clipping-norm": 50.0}), _ctx())
    assert reply.has_error()
    assert "ClippingNormRefused" in reply.error.reason
    assert "clipping norm 50, above this site's maximum 1" in reply.error.reason
    assert calls == []


def test_clipping_mod_uses_its_own_norm_when_the_server_sends_none():
    mod = ClientSideClippingMod(max_clipping_norm=5.0, clipping_norm=0.5)
    reply = _app(mod)(_train_message(), _ctx())
    assert l2_norm(model_delta(reply.content["arrays"], GLOBAL)) <= 0.5
    assert "dp-within-clip" not in reply.content["metrics"]


def test_clipping_mod_leaves_small_updates_and_evaluation_alone():
    mod = ClientSideClippingMod(max_clipping_norm=100.0)
    reply = _app(mod, step=0.01)(_train_message({"dp-report-within-clip": True}), _ctx())
    np.testing.assert_allclose(reply.content["arrays"]["w"], 1.01, rtol=1e-6)
    assert reply.content["metrics"]["dp-within-clip"] == 1.0
    evaluation = _app(mod)(_train_message(message_type="evaluate"), _ctx())
    assert evaluation.content["metrics"]["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_clipping_norm": 0.0}, "max_clipping_norm"),
        ({"max_clipping_norm": 1.0, "clipping_norm": 2.0}, "exceeds max_clipping_norm"),
    ],
)
def test_clipping_mod_refuses_nonsense(kwargs, match):
    with pytest.raises(InvalidPrivacyParameter, match=match):
        ClientSideClippingMod(**kwargs)


def test_clipping_mod_rejects_a_nonsense_server_norm():
    reply = _app(ClientSideClippingMod(max_clipping_norm=1.0))(
        _train_message({"dp-clipping-norm": -1.0}), _ctx()
    )
    assert reply.has_error() and "server clipping norm must be finite and > 0" in reply.error.reason


def test_local_dp_mod_noises_the_clipped_update_and_reports_the_cumulative_spend():
    mod = LocalDPMod(
        clipping_norm=0.5, epsilon=4.0, delta=1e-5, unsafe_rng=np.random.default_rng(1)
    )
    app, ctx = _app(mod, step=0.0), _ctx()
    spends = []
    for _ in range(3):
        reply = app(_train_message(), ctx)
        assert not reply.has_error(), reply
        delta = np.concatenate(
            [d.reshape(-1) for d in model_delta(reply.content["arrays"], GLOBAL)]
        )
        assert np.std(delta) == pytest.approx(mod.noise_std, rel=0.08)
        spend = PrivacySpend.from_metrics(reply.content["metrics"], PrivacyUnit.SITE)
        spends.append(spend.epsilon)
    assert spends[0] == pytest.approx(4.0, rel=1e-4)
    assert spends[0] < spends[1] < spends[2] < 3 * 4.0  # tighter than basic composition
    unit_sigma = mod.noise_std / (2 * 0.5)
    assert spends[2] == pytest.approx(get_epsilon_gaussian(unit_sigma / np.sqrt(3), 1e-5))
    assert reply.content["metrics"]["dp-local-releases"] == 3


def test_local_dp_mod_clips_before_noising():
    mod = LocalDPMod(
        clipping_norm=0.1, epsilon=50.0, delta=1e-5, unsafe_rng=np.random.default_rng(2)
    )
    reply = _app(mod, step=10.0)(_train_message(), _ctx())
    delta = model_delta(reply.content["arrays"], GLOBAL)
    noise_norm = mod.noise_std * np.sqrt(1_001)
    assert l2_norm(delta) < 0.1 + 3 * noise_norm

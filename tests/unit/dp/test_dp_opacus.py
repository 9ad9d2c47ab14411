"""DP-SGD through Opacus on a tiny torch model; record-level spend in the reply's metrics."""

import sys

import numpy as np
import pytest

from appliance import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from dp import DPError, InvalidPrivacyParameter, PrivacySpend, PrivacyUnit, epsilon, make_private

torch = pytest.importorskip("torch", reason="DP-SGD tests need the torch extra (torch, opacus)")
pytest.importorskip("opacus", reason="DP-SGD tests need the torch extra (torch, opacus)")

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
RECORDS, BATCH = 96, 16


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(RECORDS, 4, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def _train(private, epochs=1):
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in private.data_loader:
            if len(y) == 0:
                continue
            private.optimizer.zero_grad()
            loss_fn(private.module(x), y).backward()
            private.optimizer.step()


def _model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


def test_noise_multiplier_mode_reports_the_accounted_record_level_spend():
    model, optimizer = _model()
    private = make_private(
        model,
        optimizer,
        _data(),
        max_grad_norm=1.0,
        delta=1e-5,
        noise_multiplier=1.0,
        unsafe_seed=1,
    )
    _train(private)
    steps = RECORDS // BATCH
    metrics = private.report(MetricRecord({"num-examples": RECORDS}))
    spend = PrivacySpend.from_metrics(metrics, PrivacyUnit.RECORD)
    expected = epsilon(
        noise_multiplier=1.0,
        sampling_rate=BATCH / RECORDS,
        rounds=steps,
        delta=1e-5,
        accountant="rdp",
    )
    assert spend.epsilon == pytest.approx(expected)
    assert metrics["num-examples"] == RECORDS
    opacus_value = private.privacy_engine.get_epsilon(1e-5)
    assert spend.epsilon == pytest.approx(opacus_value, rel=0.01)


def test_target_epsilon_is_met_over_the_planned_rounds_through_a_client_app():
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        model, optimizer = _model()
        private = make_private(
            model,
            optimizer,
            _data(int(msg.content["config"]["server-round"])),
            max_grad_norm=1.0,
            delta=1e-5,
            target_epsilon=3.0,
            epochs=1,
            rounds=3,
            context=ctx,
            unsafe_seed=2,
        )
        _train(private)
        weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        metrics = private.report(MetricRecord({"num-examples": RECORDS}))
        return Message(
            RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics}), reply_to=msg
        )

    ctx = Context(run_id=1, node_id=1)
    spends = []
    for server_round in (1, 2, 3):
        content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
        reply = app(Message(content, dst_node_id=1, message_type="train"), ctx)
        assert not reply.has_error(), reply.error
        spends.append(
            PrivacySpend.from_metrics(reply.content["metrics"], PrivacyUnit.RECORD).epsilon
        )
        assert np.isfinite(reply.content["arrays"]["weight"]).all()
    assert spends[0] < spends[1] < spends[2] <= 3.0
    assert spends[2] == pytest.approx(3.0, rel=0.05)


def test_exactly_one_of_noise_and_target():
    model, optimizer = _model()
    with pytest.raises(InvalidPrivacyParameter, match="exactly one"):
        make_private(model, optimizer, _data(), max_grad_norm=1.0, delta=1e-5)


def test_missing_opacus_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)
    model, optimizer = _model()
    with pytest.raises(DPError, match=r"install greenhouse-fl\[torch\]"):
        make_private(model, optimizer, _data(), max_grad_norm=1.0, delta=1e-5, noise_multiplier=1.0)

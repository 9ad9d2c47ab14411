import pytest

from appliance import ClientApp, Context, Error, ErrorCode, Message, MetricRecord, RecordDict
from appliance.clientapp import ErrorDetail


def _request(message_type: str = "train") -> Message:
    return Message(RecordDict(), dst_node_id=3, message_type=message_type)


def _ctx() -> Context:
    return Context(run_id=1, node_id=3)


def test_handlers_are_routed_by_message_type():
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        return Message(RecordDict({"m": MetricRecord({"which": 1})}), reply_to=msg)

    @app.train("secagg")
    def train_secagg(msg, ctx):
        return Message(RecordDict({"m": MetricRecord({"which": 2})}), reply_to=msg)

    assert app(_request("train"), _ctx()).content["m"]["which"] == 1
    assert app(_request("train.secagg"), _ctx()).content["m"]["which"] == 2
    assert app.message_types == {"train", "train.secagg"}


def test_unknown_message_type_is_an_error_reply():
    app = ClientApp()
    reply = app(_request("query"), _ctx())
    assert reply.error.code == ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert "no handler for 'query'" in reply.error.reason


def test_duplicate_handler_is_refused():
    app = ClientApp()
    app.train()(lambda m, c: m)
    with pytest.raises(ValueError, match="already has a handler"):
        app.train()(lambda m, c: m)


def _raising_app() -> ClientApp:
    app = ClientApp()

    @app.evaluate()
    def evaluate(msg, ctx):
        raise KeyError("patient-42")

    return app


def test_handler_exception_becomes_error_reply_without_traceback():
    reply = _raising_app()(_request("evaluate"), _ctx())
    assert reply.has_error()
    assert reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "KeyError: 'patient-42'"
    assert "Traceback" not in reply.error.reason
    assert reply.metadata.reply_to_message_id


@pytest.mark.parametrize(
    ("detail", "expected"),
    [(ErrorDetail.TYPE, "KeyError"), (ErrorDetail.TRACEBACK, "Traceback (most recent call last)")],
)
def test_error_detail_levels(detail, expected):
    reply = _raising_app()(_request("evaluate"), _ctx(), error_detail=detail)
    assert expected in reply.error.reason
    if detail is ErrorDetail.TYPE:
        assert "patient" not in reply.error.reason


def test_handler_returning_wrong_thing_is_invalid_reply():
    app = ClientApp()
    other = _request()

    @app.train()
    def train(msg, ctx):
        return Message(RecordDict(), reply_to=other)

    @app.evaluate()
    def evaluate(msg, ctx):
        return {"not": "a message"}

    assert app(_request("train"), _ctx()).error.code == ErrorCode.INVALID_REPLY
    reply = app(_request("evaluate"), _ctx())
    assert reply.error.code == ErrorCode.INVALID_REPLY
    assert "returned dict" in reply.error.reason


def test_mods_wrap_in_order_with_host_mods_outermost():
    calls: list[str] = []

    def make_mod(name):
        def mod(msg, ctx, call_next):
            calls.append(f"{name}>")
            reply = call_next(msg, ctx)
            calls.append(f"<{name}")
            return reply

        return mod

    app = ClientApp(mods=[make_mod("a"), make_mod("b")])

    @app.train()
    def train(msg, ctx):
        calls.append("handler")
        return Message(RecordDict(), reply_to=msg)

    app(_request(), _ctx(), mods=[make_mod("site")])
    assert calls == ["site>", "a>", "b>", "handler", "<b", "<a", "<site"]


def test_mod_can_short_circuit_and_its_exceptions_are_contained():
    def refuse(msg, ctx, call_next):
        return Message(Error(ErrorCode.POLICY_REFUSED, "not allowed here"), reply_to=msg)

    def explode(msg, ctx, call_next):
        raise RuntimeError("mod failed")

    handled = []
    app = ClientApp(mods=[refuse])
    app.train()(lambda m, c: handled.append(1) or Message(RecordDict(), reply_to=m))
    assert app(_request(), _ctx()).error.code == ErrorCode.POLICY_REFUSED
    assert handled == []
    app.mods = [explode]
    assert app(_request(), _ctx()).error.reason == "RuntimeError: mod failed"


def test_state_persists_in_context():
    app = ClientApp()

    @app.train()
    def train(msg, ctx):
        count = ctx.state.get("count", MetricRecord({"n": 0}))
        count["n"] += 1
        ctx.state["count"] = count
        return Message(RecordDict({"count": count}), reply_to=msg)

    ctx = _ctx()
    app(_request(), ctx)
    assert app(_request(), ctx).content["count"]["n"] == 2

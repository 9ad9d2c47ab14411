import numpy as np
import pytest

from appliance import ArrayRecord, ClientApp, ConfigRecord, Message, RecordDict, ServerApp
from appliance.errors import GridError
from appliance.local import LocalGrid, RunFailed, make_nodes, run_local
from appliance.message import ErrorCode


def _echo_app() -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg, ctx):
        content = RecordDict(
            {
                "arrays": msg.content["arrays"],
                "who": ConfigRecord(
                    {"partition": ctx.node_config["partition-id"], "run": ctx.run_id}
                ),
            }
        )
        return Message(content, reply_to=msg)

    return app


def test_messages_travel_through_the_wire_and_reach_each_node():
    grid = LocalGrid(_echo_app(), make_nodes(3, seed=1), run_id=9)
    payload = ArrayRecord({"x": np.arange(5, dtype=np.int32)})
    messages = [
        grid.create_message(RecordDict({"arrays": payload}), "query", n)
        for n in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages)
    assert sorted(r.content["who"]["partition"] for r in replies) == [0, 1, 2]
    for reply in replies:
        assert reply.metadata.run_id == 9
        assert reply.content["arrays"] == payload
        # A decoded copy, not the object the server sent.
        assert reply.content["arrays"]["x"] is not payload["x"]
    assert grid.bytes_sent > 0 and grid.bytes_received > 0


def test_grid_refuses_foreign_nodes_runs_and_duplicate_ids():
    grid = LocalGrid(_echo_app(), make_nodes(2), run_id=1)
    with pytest.raises(GridError, match="node 12345 is not part of run 1"):
        grid.push_messages([Message(RecordDict(), dst_node_id=12345, message_type="query")])
    node = grid.get_node_ids()[0]
    msg = grid.create_message(RecordDict(), "query", node)
    with pytest.raises(GridError, match="is for run 2"):
        grid.push_messages([msg.with_metadata(run_id=2)])
    grid.push_messages([msg])
    with pytest.raises(GridError, match="already pushed"):
        grid.push_messages([msg])
    reply = Message(RecordDict(), reply_to=msg)
    with pytest.raises(GridError, match="not replies"):
        grid.push_messages([reply])


def test_expired_message_gets_an_error_reply():
    grid = LocalGrid(_echo_app(), make_nodes(1))
    msg = grid.create_message(RecordDict(), "query", grid.get_node_ids()[0], ttl=0.0)
    (reply,) = grid.send_and_receive([msg])
    assert reply.error.code == ErrorCode.MESSAGE_EXPIRED


def test_unknown_message_type_reaches_server_as_error():
    grid = LocalGrid(_echo_app(), make_nodes(1))
    msg = grid.create_message(RecordDict(), "train", grid.get_node_ids()[0])
    (reply,) = grid.send_and_receive([msg])
    assert reply.error.code == ErrorCode.UNKNOWN_MESSAGE_TYPE


def test_node_configs_and_ids_are_seeded():
    assert [n.node_id for n in make_nodes(4, seed=3)] == [n.node_id for n in make_nodes(4, seed=3)]
    assert [n.node_id for n in make_nodes(4, seed=3)] != [n.node_id for n in make_nodes(4, seed=4)]
    nodes = make_nodes(2, [{"data": "a"}, {"data": "b"}])
    assert [n.node_config["data"] for n in nodes] == ["a", "b"]
    with pytest.raises(ValueError, match="2 node configs for 3 nodes"):
        make_nodes(3, [{}, {}])


def test_server_app_exception_becomes_run_failed():
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        raise ZeroDivisionError("bad math")

    with pytest.raises(RunFailed, match="ServerApp raised ZeroDivisionError: bad math"):
        run_local(server, _echo_app(), num_nodes=1)


def test_server_app_gets_run_config():
    seen = {}
    server = ServerApp()

    @server.main()
    def main(grid, ctx):
        seen.update(ctx.run_config)
        seen["nodes"] = len(grid.get_node_ids())

    run_local(server, _echo_app(), num_nodes=4, run_config={"lr": 0.1})
    assert seen == {"lr": 0.1, "nodes": 4}

"""A real ClientApp subprocess behind ClientAppProcess: large frames both ways, and an
app that tries to slip the SuperNode a reply it could still change."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from appliance.message import ErrorCode, Message
from appliance.records import ArrayRecord, ConfigRecord, RecordDict
from appliance.supernode.clientapp_runner import ClientAppProcess

APP = """
    import fcntl
    import os
    import socket
    import stat
    import struct

    from appliance import ArrayRecord, ClientApp, Message, RecordDict

    app = ClientApp()


    def _channel() -> socket.socket:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    return socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
        raise RuntimeError("no socket")


    def _forge(kind: str, size: int) -> None:
        # Answer on the SuperNode's socket before the real reply goes out.
        if kind == "unsealed":
            fd = os.memfd_create("forged", os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
        else:
            fd, _ = os.pipe()
        word = struct.pack(">Q", size | 1 << 63)
        socket.send_fds(_channel(), [word], [fd])


    @app.train()
    def train(msg: Message, ctx) -> Message:
        forge = msg.content["config"]["forge"] if "config" in msg.content else ""
        weights = msg.content["model"]["w"]
        if forge:
            _forge(forge, weights.nbytes)
        return Message(RecordDict({"model": ArrayRecord({"w": weights * 2})}), reply_to=msg)
"""


@pytest.fixture
def process(tmp_path: Path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [project]
            name = "doubler"
            version = "1.0.0"
            [tool.greenhouse.app]
            serverapp = "doubler:app"
            clientapp = "doubler:app"
            """
        )
    )
    (app_dir / "doubler.py").write_text(textwrap.dedent(APP))
    runner = ClientAppProcess(
        app_dir,
        run_id=1,
        node_id=2,
        node_config={},
        run_config={},
        work_dir=tmp_path / "work",
        max_message_bytes=64 * 2**20,
    )
    yield runner
    runner.stop()


def _train(weights: np.ndarray, forge: str = "") -> Message:
    records = {"model": ArrayRecord({"w": weights})}
    if forge:
        records["config"] = ConfigRecord({"forge": forge})
    return Message(RecordDict(records), dst_node_id=2, message_type="train").with_metadata(run_id=1)


def test_a_large_model_crosses_both_ways(process):
    weights = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)
    for _ in range(2):  # the same process answers the run's next message too
        reply = process.handle(_train(weights), timeout_s=60)
        assert not reply.has_error(), reply.error
        np.testing.assert_array_equal(reply.content["model"]["w"], weights * 2)
    assert process.restarts == 0


@pytest.mark.parametrize(("forge", "reason"), [("unsealed", "not sealed"), ("pipe", "memfd")])
def test_a_reply_the_app_could_still_change_is_refused(process, forge, reason):
    weights = np.ones(1_000_000, dtype=np.float32)
    reply = process.handle(_train(weights, forge), timeout_s=60)
    assert reply.has_error()
    assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED
    assert "the ClientApp process failed" in reply.error.reason
    assert reason in reply.error.reason
    # The SuperNode starts a fresh process for the next message.
    good = process.handle(_train(weights), timeout_s=60)
    assert not good.has_error(), good.error
    assert process.restarts == 1
